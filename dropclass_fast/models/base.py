"""What every reference model shares: ``features`` -> ``A``, a final classifier or ``DropClass``, ``predict``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, require_floating
from ..module import DropClass, DropClassOutput


def check_images(images: object, channels: int | None = 3) -> torch.Tensor:
    """``images`` must be a floating ``[B, channels, H, W]`` tensor (any channel count for ``None``); returns it."""
    layout = "[B, C, H, W]" if channels is None else f"[B, {channels}, H, W]"
    images = require_floating("images", images, (4,), layout)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"images must be {layout}, got shape {tuple(images.shape)}")
    return images


def check_model_options(num_classes: object, dropclass: bool, dropclass_kwargs: dict[str, object]) -> int:
    """``num_classes`` as an int; ValueError unless it is at least 2, or when DropClass options come without
    ``dropclass=True``."""
    if dropclass_kwargs and not dropclass:
        raise ValueError(f"DropClass options {sorted(dropclass_kwargs)} need dropclass=True")
    return check_int("num_classes", num_classes, minimum=2)


def check_dropclass_call(module: nn.Module, progress: float | None, keep: torch.Tensor | None) -> None:
    """A training forward through DropClass needs ``progress`` (or an explicit ``keep``)."""
    if module.training and progress is None and keep is None:
        raise ValueError(
            "progress is required when a DropClass model is in training mode: call model(images, progress=t) "
            "with t = iteration / total iterations, or pass keep=mask"
        )


class SegmentationModel(nn.Module):
    """Base of the reference models: a network that ends in ``head[-1]``, a 1x1 classifier.

    Subclasses implement :meth:`encode` (images -> the input of ``head``) and
    :meth:`head` (an ``nn.Sequential`` whose last module is the classifier
    ``nn.Conv2d(C, K, 1)``, or a :class:`DropClass` around it, and whose other
    modules turn the encoding into ``A``). Keeping the classifier inside the
    original ``nn.Sequential`` keeps the parameter names of the original model.

    ``forward(images, progress=None, keep=None, sample_index=None)``:

    * with DropClass in training mode, ``DropClassOutput(logits, drop_logits,
      keep)`` at the model's output resolution (``progress`` or ``keep`` required;
      ``sample_index`` as in :meth:`DropClass.forward`);
    * otherwise the logits ``[B, K, h, w]`` (DropClass in eval mode: the drop
      path ``h(select(A))`` with every class kept, unless ``keep`` is given).
      A baseline ignores ``progress``, ``keep`` and ``sample_index``.
    """

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images float ``[B, 3, H, W]`` -> the input of :meth:`head`, ``[B, C', h, w]``."""
        raise NotImplementedError

    def head(self) -> nn.Sequential:
        """The layers from the encoding to the logits; the last is the classifier (or its :class:`DropClass`)."""
        raise NotImplementedError

    @property
    def dropclass(self) -> DropClass | None:
        """The :class:`DropClass` around the classifier (built in, or put there by ``attach_dropclass``), or
        ``None`` for a baseline."""
        final = self.head()[-1]
        if isinstance(final, DropClass):
            return final
        attached = getattr(final, "dropclass", None)  # an AttachedClassifier (attach.py builds on this module)
        return attached if isinstance(attached, DropClass) else None

    @property
    def num_classes(self) -> int:
        dropclass = self.dropclass
        return dropclass.num_classes if dropclass is not None else self.head()[-1].out_channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``A``, the input of the final classifier, ``[B, C, h, w]`` in the images' dtype."""
        x = self.encode(check_images(images))
        for layer in list(self.head())[:-1]:
            x = layer(x)
        return x

    def forward(
        self,
        images: torch.Tensor,
        progress: float | None = None,
        keep: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
    ) -> DropClassOutput | torch.Tensor:
        """``images``: ``[B, 3, H, W]`` float; see the class docstring for what comes back."""
        features = self.features(images)
        final = self.head()[-1]
        if not isinstance(final, DropClass):
            return final(features)
        check_dropclass_call(final, progress, keep)
        return final(features, progress=progress, keep=keep, sample_index=sample_index)


def predict(model: nn.Module, images: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Eval-mode logits bilinearly upsampled to the input size, ``[B, K, H, W]``.

    ``model`` must already be in eval mode (``model.eval()``): ``predict``
    does not switch it and raises ``ValueError`` on a model in training mode,
    whose BatchNorm would use batch statistics. Runs under the caller's grad
    mode (wrap it in ``torch.no_grad()`` for inference). ``images``:
    ``[B, C, H, W]`` float (``C = 3`` for the reference models); the result
    has the dtype of the model's logits.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("predict needs a model in eval mode: call model.eval() first (it is in training mode)")
    images = check_images(images, channels=None)
    logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return [B, K, h, w] logits in eval mode, got {found}")
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=align_corners)
