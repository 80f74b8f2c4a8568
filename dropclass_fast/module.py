"""``DropClass``: the drop path around a segmentation model's final classifier."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as dcf
from . import reference
from ._checks import check_bool, check_fraction, check_int, is_int, require_floating

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit generator seed from integers (for example ``(seed, step)`` or ``(seed, step, index)``)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (v & _MASK64))
    return h >> 1


def _check_sample_index(sample_index: object, batch_size: int) -> None:
    """Refuses global sample indices that are not an integer tensor ``[batch_size]``."""
    if not isinstance(sample_index, torch.Tensor) or sample_index.dtype not in dcf.LABEL_DTYPES:
        raise TypeError(f"sample_index must be an integer tensor, got {sample_index!r}")
    if sample_index.shape != (batch_size,):
        raise ValueError(f"sample_index must have shape [B]=[{batch_size}], got {tuple(sample_index.shape)}")


class DropClassOutput(NamedTuple):
    """What :class:`DropClass` returns in training mode.

    ``logits`` = ``h(A)`` and ``drop_logits`` = ``h(A_drop)``, both
    ``[B, K, h, w]``; ``keep`` the mask used, ``[K]`` or ``[B, K]`` (float32
    when drawn; a mask passed to ``forward`` is returned as given).
    """

    logits: torch.Tensor
    drop_logits: torch.Tensor
    keep: torch.Tensor


class DropClass(nn.Module):
    """Wraps a model's final classifier ``h`` with the DropClass drop path.

    Training (``module.train()``): ``forward(A, progress=t)`` draws a keep mask
    (with probability ``t`` one class, uniform over ``K``, is dropped), computes
    ``s = class_importance(h.weight, keep)`` (the gradient is not detached),
    ``A_drop = select(A * s)`` and returns ``DropClassOutput(h(A), h(A_drop), keep)``.
    Evaluation: ``forward(A)`` returns ``h(A_drop)`` with every class kept.

    Args:
        classifier: the final classifier, an ``nn.Conv2d(C, K, k)`` with K >= 2 (1x1 in
            the paper; a ``k x k`` kernel uses the sum of its taps).
        per_sample: draw one mask per sample (``[B, K]``) instead of one per
            step (``[K]``, the paper).
        seed: seeds the masks: step ``n`` uses a generator seeded by
            ``(seed, n)``, so every DDP rank draws the same mask in paper mode;
            per-sample mode also mixes in the sample's global index.
        bn_momentum: momentum of the ``select`` BatchNorm (official: 0.01), in ``[0, 1]``; ``None`` for a
            cumulative average, as in ``nn.BatchNorm2d``.

    ``select`` is ``nn.Sequential(Conv2d(C, C, 1), BatchNorm2d(C), ReLU)``.
    ``step`` counts training forwards; ``state_dict`` saves it with ``seed``,
    and ``load_state_dict`` restores both.
    """

    def __init__(
        self, classifier: nn.Conv2d, per_sample: bool = False, seed: int = 0, bn_momentum: float | None = 0.01
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Conv2d):
            raise TypeError(f"classifier must be an nn.Conv2d, got {type(classifier).__name__}")
        if classifier.groups != 1:
            raise ValueError(f"classifier must have groups=1, got groups={classifier.groups}")
        if classifier.out_channels < 2:
            raise ValueError(
                f"classifier must have at least 2 output classes (dropping the only class leaves none), "
                f"got out_channels={classifier.out_channels}"
            )
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {seed!r}")
        per_sample = check_bool("per_sample", per_sample)
        if bn_momentum is not None:
            requirement = "a number in [0, 1] or None (a cumulative average)"
            bn_momentum = check_fraction("bn_momentum", bn_momentum, requirement)
        channels = classifier.in_channels
        self.classifier = classifier
        self.select = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.BatchNorm2d(channels, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )
        self.per_sample = bool(per_sample)
        self.seed = int(seed)
        self.step = 0

    @property
    def num_classes(self) -> int:
        """``K``, the classifier's output channels."""
        return self.classifier.out_channels

    def get_extra_state(self) -> dict[str, Any]:
        """``step`` and ``seed`` in the state dict, so that a resumed run draws the masks it would have drawn."""
        return {"step": self.step, "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_extra_state` saved."""
        self.step = int(state["step"])
        self.seed = int(state["seed"])

    def sample_keep(
        self,
        progress: float,
        batch_size: int,
        device: torch.device | str = "cpu",
        step: int | None = None,
        sample_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The keep mask of training step ``step`` (default: the current one).

        Paper mode returns ``[K]``; per-sample mode ``[B, K]``, where sample
        ``i`` uses global index ``sample_index[i]`` (default: ``rank * B + i``;
        paper mode checks ``sample_index`` but does not use it).
        Float32 on ``device``.
        """
        progress = check_fraction("progress", progress)
        batch_size = check_int("batch_size", batch_size, minimum=0)
        step = self.step if step is None else check_int("step", step, minimum=0)
        if sample_index is not None:  # unused in paper mode, but a bad value is still an error
            _check_sample_index(sample_index, batch_size)
        if not self.per_sample:
            return self._draw(progress, (self.seed, step)).to(device)
        if sample_index is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            indices = range(rank * batch_size, (rank + 1) * batch_size)
        else:
            indices = sample_index.tolist()
        rows = [self._draw(progress, (self.seed, step, int(i))) for i in indices]
        return (torch.stack(rows) if rows else torch.ones(0, self.num_classes)).to(device)

    @torch.compiler.disable
    def _step_keep(
        self,
        features: torch.Tensor,
        progress: float | None,
        keep: torch.Tensor | None,
        sample_index: torch.Tensor | None,
    ) -> torch.Tensor:
        """The keep mask of this training step (``keep``, checked, or one drawn for ``progress``).

        Run eagerly under ``torch.compile``: traced, every value of ``step`` would be a new graph.
        """
        if keep is None:
            if progress is None:
                raise ValueError("progress is required in training mode when keep is not given")
            return self.sample_keep(progress, features.shape[0], features.device, sample_index=sample_index)
        if progress is not None:  # unused with a given mask, but a bad value is still an error
            check_fraction("progress", progress)
        if sample_index is not None:
            raise ValueError("sample_index selects drawn per-sample masks; it cannot be given with keep")
        return self._checked_keep(features, keep)

    @torch.compiler.disable
    def _count_step(self) -> None:
        """Counts a training forward that finished: one that raised (a refused mask, features the classifier
        cannot take) leaves ``step``, and so the masks of later steps, as they were. Eager under
        ``torch.compile``, as :meth:`_step_keep`."""
        self.step += 1

    def _draw(self, progress: float, key: tuple[int, ...]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(mix_seed(*key))
        keep = torch.ones(self.num_classes)
        if torch.rand((), generator=generator).item() < progress:
            keep[torch.randint(self.num_classes, (), generator=generator)] = 0.0
        return keep

    def drop_path(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``A_drop = select(A * s)`` with ``s = class_importance(h.weight, keep)``, ``[B, C, h, w]``, for features
        ``A`` ``[B, C, h, w]`` and a ``[K]`` or ``[B, K]`` mask ``keep`` (checked first).

        For a per-batch mask the channel scale is folded into the 1x1 conv of
        ``select`` (``conv(A * s) = (W_sel diag(s)) A``), so ``A`` is not
        rewritten; a per-sample mask uses the fused :func:`functional.channel_mask`.
        """
        return self._drop_path(features, self._checked_keep(features, keep))

    @torch.compiler.disable
    def _checked_keep(self, features: torch.Tensor, keep: object) -> torch.Tensor:
        """A mask given by the caller, on the features' device, checked eagerly (under ``torch.compile`` too, where
        the ops skip value checks: an all-zero mask would give NaN logits)."""
        if isinstance(keep, torch.Tensor):
            keep = keep.to(features.device)
        keep = dcf.check_keep(keep, features.shape[0], self.num_classes, features, "features")
        dcf.check_keep_values(keep)
        return keep

    def _drop_path(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """:meth:`drop_path` of a mask already checked (or drawn here): its values are not checked again (one
        device-to-host copy less per step)."""
        weight = self.classifier.weight
        conv, norm, relu = self.select
        if keep.dim() == 1:
            s = reference.class_importance(weight, keep)
            scaled = conv.weight * s.to(conv.weight.dtype).view(1, -1, 1, 1)
            return relu(norm(F.conv2d(features, scaled, conv.bias)))
        return relu(norm(conv(dcf.channel_mask(features, weight, keep))))

    def forward(
        self,
        features: torch.Tensor,
        progress: float | None = None,
        keep: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
    ) -> DropClassOutput | torch.Tensor:
        """Training: ``DropClassOutput``; evaluation: the drop-path logits ``[B, K, h, w]``.

        Args:
            features: ``A``, ``[B, C, h, w]``.
            progress: training progress ``t`` in ``[0, 1]``; needed in training
                unless ``keep`` is given.
            keep: an explicit ``[K]`` or ``[B, K]`` mask instead of a drawn one
                (in evaluation too: predict with those classes dropped).
            sample_index: global sample indices ``[B]`` (an integer tensor) for per-sample masks;
                checked but unused in paper mode and in evaluation.
        """
        require_floating("features", features, (4,), "[B, C, h, w]")
        if features.shape[1] != self.classifier.in_channels:
            raise ValueError(
                f"features have C={features.shape[1]} channels but the classifier expects {self.classifier.in_channels}"
            )
        if not self.training:
            if progress is not None:  # unused in evaluation, but a bad value is still an error
                check_fraction("progress", progress)
            if sample_index is not None:  # unused in evaluation, as progress
                _check_sample_index(sample_index, features.shape[0])
            if keep is None:
                keep = torch.ones(self.num_classes, device=features.device)
            else:
                keep = self._checked_keep(features, keep)
            return self.classifier(self._drop_path(features, keep))
        keep = self._step_keep(features, progress, keep, sample_index)
        logits = self.classifier(features)
        drop_logits = self.classifier(self._drop_path(features, keep))
        self._count_step()
        return DropClassOutput(logits, drop_logits, keep)
