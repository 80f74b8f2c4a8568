"""Eager PyTorch reference implementations of the DropClass ops.

These functions are the ground truth every backend is tested against. They are
written for clarity, not speed: ``seg_cross_entropy`` materialises the
full-resolution logits (``B*K*H*W``) exactly as the official DropClass code
does. They perform no input validation; :mod:`dropclass_fast.functional` does
that before dispatching here.

Shapes: ``weight`` is ``[K, C]`` or a conv weight ``[K, C, kh, kw]``;
``keep`` is ``[K]`` or ``[B, K]`` (bool or floating, values 0/1); ``features``
``[B, C, h, w]``; ``logits`` ``[B, K, h, w]``; ``target`` integer ``[B, H, W]``.
Half-precision inputs are computed in float32: the loss ops then return float32, ``class_importance`` and
``channel_mask`` the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "class_importance",
    "channel_mask",
    "seg_cross_entropy",
    "dropped_class_prob",
    "dropclass_loss",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What every backend computes ``dtype`` inputs in: float64 for float64, float32 for the other float dtypes."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _importance(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``s`` in the accumulate dtype (float32; float64 for float64 weights)."""
    w = weight.to(accumulation_dtype(weight.dtype))
    w = w.flatten(2).sum(2) if w.dim() > 2 else w
    importance = torch.relu(w)
    k = keep.to(importance.dtype)
    return (k @ importance) / k.sum(-1, keepdim=True)


def class_importance(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Channel weights ``s = sum_c keep_c * ReLU(W_c) / sum_c keep_c``.

    ``weight`` ``[K, C]`` or ``[K, C, kh, kw]`` (taps are summed first: the
    gradient of the class score at an interior pixel); ``keep`` ``[K]`` or
    ``[B, K]``. Returns ``s`` of shape ``[C]`` or ``[B, C]`` in the weight's
    dtype (accumulated in float32, rounded once); differentiable in ``weight``.
    """
    return _importance(weight, keep).to(weight.dtype)


def channel_mask(features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``features * s`` with ``s = class_importance(weight, keep)`` broadcast over space.

    ``features`` ``[B, C, h, w]``; returns the same shape and dtype (the product taken in float32 and rounded
    once, as the kernels do).
    """
    s = _importance(weight, keep)
    s = s.view(1, -1, 1, 1) if s.dim() == 1 else s[:, :, None, None]
    return (features * s).to(features.dtype)


def _upsample(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _drop_targets(target: torch.Tensor, keep: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``target`` with every pixel of a dropped class set to ``ignore_index``."""
    k = keep.to(torch.bool)
    y = target.long()  # compared as int64: an ignore_index outside the label dtype's range must not wrap around
    valid = y != ignore_index
    safe = torch.where(valid, y, torch.zeros_like(y))
    if k.dim() == 1:
        kept = k[safe]
    else:
        kept = torch.gather(k, 1, safe.flatten(1)).view_as(y)
    return torch.where(valid & kept, y, torch.full_like(y, ignore_index))


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None = None,
    ignore_index: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinear upsampling of ``logits`` to the label size, then softmax cross-entropy.

    The mean runs over pixels whose (remapped) label is not ``ignore_index``;
    pixels of classes dropped by ``keep`` are ignored. With no valid pixel the
    loss is 0. Returns a 0-dim float32 tensor (float64 for float64 logits).
    """
    z = _upsample(logits.to(accumulation_dtype(logits.dtype)), tuple(target.shape[-2:]), align_corners)
    y = target.long() if keep is None else _drop_targets(target, keep, ignore_index)
    count = (y != ignore_index).sum()
    return F.cross_entropy(z, y, ignore_index=ignore_index, reduction="sum") / count.clamp(min=1)


def dropped_class_prob(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``L_sup``: mean over dropped ``(sample, class)`` pairs of the mean softmax probability.

    Computed at the logits' own resolution. Per-batch ``keep`` ``[K]`` gives the
    mean over dropped classes of the mean over batch and pixels; per-sample
    ``keep`` ``[B, K]`` averages each term over that sample's pixels. Returns
    0 when nothing is dropped; 0-dim float32 (float64 for float64 logits).
    """
    prob = torch.softmax(logits.to(accumulation_dtype(logits.dtype)), dim=1)
    per_sample_class = prob.mean(dim=(2, 3))  # [B, K]
    dropped = 1.0 - keep.to(prob.dtype).expand_as(per_sample_class)
    n = dropped.sum()
    return (per_sample_class * dropped).sum() / n.clamp(min=1)


def dropclass_loss(
    logits: torch.Tensor,
    drop_logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    progress: float,
    alpha: float = 10.0,
    ignore_index: int = 255,
    align_corners: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = lambda*CE(logits, y) + (1-lambda)*CE(drop_logits, y_drop) + alpha*L_sup``, ``lambda = 1 - progress``.

    ``logits`` and ``drop_logits`` ``[B, K, h, w]``, ``target`` integer ``[B, H, W]``, ``keep`` ``[K]`` or
    ``[B, K]``. Returns ``(total, {"ce", "ce_drop", "sup"})`` where the parts are the weighted terms (they add
    up to ``total``), 0-dim float32 (float64 for float64 logits).
    """
    return combine_loss_terms(
        seg_cross_entropy(logits, target, None, ignore_index, align_corners),
        seg_cross_entropy(drop_logits, target, keep, ignore_index, align_corners),
        dropped_class_prob(drop_logits, keep),
        progress,
        alpha,
    )


def combine_loss_terms(
    ce: torch.Tensor, ce_drop: torch.Tensor, sup: torch.Tensor, progress: float, alpha: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weight the three DropClass terms (0-dim tensors) and add them up; returns ``(total, parts)``.

    ``lambda = 1 - progress`` weighs ``ce``, ``1 - lambda`` weighs ``ce_drop`` and ``alpha`` weighs ``sup``.
    """
    lam = 1.0 - float(progress)
    parts = {"ce": lam * ce, "ce_drop": (1.0 - lam) * ce_drop, "sup": alpha * sup}
    return parts["ce"] + parts["ce_drop"] + parts["sup"], parts
