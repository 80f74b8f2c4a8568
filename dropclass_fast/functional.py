"""The DropClass ops: input checks, then the backend chosen by :func:`dropclass_fast.set_backend`.

Every function is differentiable in its floating inputs (logits, features,
weight) and accepts float32, float16 and bfloat16 (accumulating in float32) as
well as float64. The kernel backends (``cpp``, ``cuda``, ``triton``) compute the
gradient in the forward pass and do not support double backward
(``create_graph=True`` through them raises); the ``eager`` backend does.
``keep`` is ``[K]`` (one mask for the batch) or ``[B, K]`` (one per sample),
bool or numeric, with values 0 (class dropped) and 1.

Shape, dtype and device errors are raised here. Value errors (labels outside
``[0, K)`` that are not the ignore index, keep masks that are not 0/1 or that
drop every class) are raised by the C++ kernels during their pass, by the
Triton ops from flags their kernels set (one host sync per call), and by a
check before the eager reference (skipped while ``torch.compile`` traces).
The Triton backend runs float64 inputs on the eager reference.
"""

from __future__ import annotations

import torch

from . import _backend, _ops, reference
from ._checks import (
    check_bool,
    check_finite,
    check_fraction,
    check_ignore_index,
    require_floating,
    require_tensor,
)

__all__ = [
    "class_importance",
    "channel_mask",
    "seg_cross_entropy",
    "dropped_class_prob",
    "dropclass_loss",
]


#: The integer dtypes the kernels read as labels (and indices).
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_logits(name: str, value: object) -> torch.Tensor:
    """``value`` as ``[B, K, h, w]`` floating logits with ``K >= 1`` (no softmax over no classes) and ``h, w >= 1``
    (there is nothing to upsample or average over an empty plane)."""
    logits = require_floating(name, value, (4,), "[B, K, h, w]")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class, got shape {tuple(logits.shape)}")
    if 0 in logits.shape[2:]:
        raise ValueError(f"{name} must have h, w >= 1, got shape {tuple(logits.shape)}")
    return logits


def _require_same_device(name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if tensor.device != other.device:
        raise ValueError(f"{name} is on {tensor.device} but {other_name} is on {other.device}")


def _check_target(target: object, logits: torch.Tensor) -> torch.Tensor:
    target = require_tensor("target", target)
    if target.dtype not in LABEL_DTYPES:
        raise TypeError(
            f"target must be an integer tensor (uint8, int8, int16, int32 or int64), got dtype {target.dtype}"
        )
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or 0 in target.shape[1:]:
        raise ValueError(
            f"target must be [B, H, W] with B={logits.shape[0]} as in logits and H, W >= 1, "
            f"got shape {tuple(target.shape)}"
        )
    _require_same_device("target", target, "logits", logits)
    return target


def check_keep(
    keep: object, batch: int | None, num_classes: int, like: torch.Tensor, like_name: str
) -> torch.Tensor:
    """``keep`` itself: a bool or real tensor ``[K]`` or ``[B, K]`` (any ``B`` where ``batch`` is None) on the
    device of ``like`` (named ``like_name`` in the error); its values are :func:`check_keep_values`'s."""
    keep = require_tensor("keep", keep)
    if keep.is_complex():
        raise TypeError(f"keep must be a bool or real tensor, got dtype {keep.dtype}")
    shape = tuple(keep.shape)
    if shape != (num_classes,) and not (len(shape) == 2 and shape[1] == num_classes and batch in (None, shape[0])):
        wanted = f"[B, K] with K={num_classes}" if batch is None else f"[B, K]=[{batch}, {num_classes}]"
        raise ValueError(f"keep must have shape [K]=[{num_classes}] or {wanted}, got {shape}")
    _require_same_device("keep", keep, like_name, like)
    return keep


def _keep_as_rows(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``keep`` as a contiguous ``[1, K]`` or ``[B, K]`` tensor of the kernels' accumulate dtype.

    A float64 ``keep`` going to float32 has its values checked first (outside ``torch.compile``, like the eager
    path's checks): rounding would turn a value such as ``1 + 1e-12`` into 1, which the kernels' checks would
    then accept.
    """
    accumulate = reference.accumulation_dtype(dtype)
    if keep.dtype == torch.float64 and accumulate == torch.float32 and _checking_values():
        check_keep_values(keep)
    rows = keep.unsqueeze(0) if keep.dim() == 1 else keep
    return rows.to(accumulate).contiguous()


def check_keep_values(keep: torch.Tensor) -> None:
    """ValueError unless ``keep`` (``[K]`` or ``[B, K]``) holds only 0 and 1 and keeps a class in every row (one
    device-to-host copy)."""
    rows = keep.unsqueeze(0) if keep.dim() == 1 else keep
    binary = (rows == 0) | (rows == 1)
    empty = (rows != 0).sum(-1) == 0
    all_binary, any_empty = torch.stack((binary.all(), empty.any())).tolist()  # one device-to-host copy
    if not all_binary:
        bad = rows[~binary][0].item()
        raise ValueError(f"keep must contain only 0 and 1 values, got {bad}")
    if any_empty:
        row = int(torch.nonzero(empty)[0, 0])
        raise ValueError(f"keep drops every class in row {row}; at least one class must be kept")


def check_label_values(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """ValueError naming the first label of ``target`` outside ``[0, num_classes)`` that is not ``ignore_index``."""
    target = target.long()  # an ignore_index outside the label dtype's range must not wrap around
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = target[bad][0].item()
        raise ValueError(
            f"target contains label {value} outside [0, {num_classes}) that is not ignore_index={ignore_index}"
        )


def check_align_corners(align_corners: object) -> bool:
    """``align_corners`` itself; TypeError unless it is a bool."""
    return check_bool("align_corners", align_corners)


def _implementation(op: str, tensor: torch.Tensor) -> str:
    """``"eager"`` (the caller checks values first), ``"triton"`` or ``"compiled"`` (the ``_ops`` kernels: C++ on
    CPU, CUDA on GPU) for ``op`` on ``tensor``'s device and dtype; the GPU kernels take no float64."""
    name = _backend.resolve(tensor.device.type, op)
    if name == "eager" or (name in ("triton", "cuda") and tensor.dtype == torch.float64):
        return "eager"
    return "triton" if name == "triton" else "compiled"


def _triton():
    """The Triton ops (:mod:`dropclass_fast.triton.ops`), imported on first use."""
    from .triton import ops

    return ops


def _cross_entropy_implementation(op: str, target: torch.Tensor, align_corners: bool, *logits: torch.Tensor) -> str:
    """:func:`_implementation` of an op that upsamples each of ``logits`` to ``target``'s size, where the Triton
    kernels' windows cannot hold the upsampling (about 100x and more): the CUDA kernels or eager under ``auto``, an
    error under ``"triton"`` (:func:`_backend.without_triton`). Not checked while tracing (shapes may be symbolic):
    a compiled call the Triton kernels cannot take raises that ValueError when it runs."""
    implementation = _implementation(op, logits[0])
    if implementation != "triton" or torch.compiler.is_compiling():
        return implementation
    from .triton.seg_cross_entropy import unsupported_upsampling

    for each in logits:
        reason = unsupported_upsampling(each.shape, target.shape, align_corners)
        if reason is not None:
            return "compiled" if _backend.without_triton(each.device.type, reason) == "cuda" else "eager"
    return "triton"


def _checking_values() -> bool:
    return not torch.compiler.is_compiling()


def _check_weight(weight: object, num_channels: int | None = None) -> torch.Tensor:
    weight = require_floating("weight", weight, (2, 4), "[K, C] or a conv weight [K, C, kh, kw]")
    if num_channels is not None and weight.shape[1] != num_channels:
        raise ValueError(
            f"weight has C={weight.shape[1]} input channels but features have C={num_channels} "
            f"(weight shape {tuple(weight.shape)})"
        )
    return weight


def class_importance(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Channel weights ``s = sum_c keep_c * ReLU(W_c) / sum_c keep_c``.

    Args:
        weight: classifier weight ``[K, C]`` or ``[K, C, kh, kw]`` (taps summed).
        keep: ``[K]`` or ``[B, K]`` mask, 1 = class kept.

    Returns:
        ``[C]`` (or ``[B, C]`` for a per-sample mask) in the weight's dtype,
        differentiable in ``weight``.
    """
    weight = _check_weight(weight)
    keep = check_keep(keep, None, weight.shape[0], weight, "weight")
    if _checking_values():
        check_keep_values(keep)
    return reference.class_importance(weight, keep)


def channel_mask(features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``features * class_importance(weight, keep)``, broadcast over space, in one fused pass.

    Args:
        features: ``A``, ``[B, C, h, w]`` (contiguous or channels_last).
        weight: classifier weight ``[K, C]`` or ``[K, C, kh, kw]``.
        keep: ``[K]`` or ``[B, K]``.

    Returns:
        ``[B, C, h, w]`` in the features' dtype and memory format.
    """
    features = require_floating("features", features, (4,), "[B, C, h, w]")
    weight = _check_weight(weight, features.shape[1])
    _require_same_device("weight", weight, "features", features)
    keep = check_keep(keep, features.shape[0], weight.shape[0], features, "features")
    implementation = _implementation("channel_mask", features)
    if implementation == "eager":
        if _checking_values():
            check_keep_values(keep)
        return reference.channel_mask(features, weight, keep)
    taps = weight.unsqueeze(2) if weight.dim() == 2 else weight.flatten(2)
    rows = _keep_as_rows(keep, features.dtype)
    if implementation == "triton":
        return _triton().channel_mask(features, taps, rows, _backend.deterministic())
    return _ops.channel_mask(features, taps, rows)


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None = None,
    ignore_index: int = 255,
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinear upsampling + softmax cross-entropy + dropped-class remap + mean, fused.

    Args:
        logits: ``[B, K, h, w]`` floating logits at any resolution.
        target: integer labels ``[B, H, W]``; ``h, w == H, W`` means no upsampling.
        keep: optional ``[K]`` or ``[B, K]`` mask; pixels of dropped classes are ignored.
        ignore_index: label value that contributes nothing.
        align_corners: as in ``F.interpolate(mode="bilinear")``.

    Returns:
        0-dim float32 (float64 for float64 logits): the mean over valid pixels,
        0 when no pixel is valid.
    """
    logits = _check_logits("logits", logits)
    target = _check_target(target, logits)
    ignore_index = check_ignore_index(ignore_index)
    align_corners = check_align_corners(align_corners)
    num_classes = logits.shape[1]
    if keep is not None:
        keep = check_keep(keep, logits.shape[0], num_classes, logits, "logits")
    implementation = _cross_entropy_implementation("seg_cross_entropy", target, align_corners, logits)
    if implementation == "eager":
        if _checking_values():
            check_label_values(target, num_classes, ignore_index)
            if keep is not None:
                check_keep_values(keep)
        return reference.seg_cross_entropy(logits, target, keep, ignore_index, align_corners)
    rows = None if keep is None else _keep_as_rows(keep, logits.dtype)
    if implementation == "triton":
        return _triton().seg_cross_entropy(
            logits, target, rows, ignore_index, align_corners, _backend.deterministic()
        )
    return _ops.seg_cross_entropy(logits, target, rows, ignore_index, align_corners)


def dropped_class_prob(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``L_sup``: mean over dropped (sample, class) pairs of the mean softmax probability of that class.

    Args:
        logits: ``[B, K, h, w]`` (the drop-path logits, at their own resolution).
        keep: ``[K]`` or ``[B, K]``.

    Returns:
        0-dim float32 (float64 for float64 logits); 0 when nothing is dropped.
    """
    logits = _check_logits("logits", logits)
    keep = check_keep(keep, logits.shape[0], logits.shape[1], logits, "logits")
    implementation = _implementation("dropped_class_prob", logits)
    if implementation == "eager":
        if _checking_values():
            check_keep_values(keep)
        return reference.dropped_class_prob(logits, keep)
    rows = _keep_as_rows(keep, logits.dtype)
    if implementation == "triton":
        return _triton().dropped_class_prob(logits, rows, _backend.deterministic())
    return _ops.dropped_class_prob(logits, rows)


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
    """The DropClass loss ``lambda*CE(logits, y) + (1-lambda)*CE(drop_logits, y_drop) + alpha*L_sup``.

    Args:
        logits: ``h(A)``, ``[B, K, h, w]``.
        drop_logits: ``h(A_drop)``, same shape.
        target: integer labels ``[B, H, W]``.
        keep: the mask used for ``drop_logits``, ``[K]`` or ``[B, K]``.
        progress: training progress ``t`` in ``[0, 1]``; ``lambda = 1 - t``.
        alpha: weight of ``L_sup`` (paper: 10).

    Returns:
        ``(total, parts)`` with ``parts = {"ce", "ce_drop", "sup"}`` the weighted
        terms, which add up to ``total``: 0-dim float32 tensors (a term of float64
        logits is float64, and so is ``total`` then).

    With the Triton and CUDA backends the three terms come from one fused op:
    one pass over ``logits`` and one over ``drop_logits`` that yields both its
    cross-entropy and ``L_sup``. On the CPU the same op runs the
    ``seg_cross_entropy`` and ``dropped_class_prob`` kernels.
    """
    check_fraction("progress", progress)
    check_finite("alpha", alpha)
    ignore_index = check_ignore_index(ignore_index)
    align_corners = check_align_corners(align_corners)
    logits = _check_logits("logits", logits)
    drop_logits = _check_logits("drop_logits", drop_logits)
    if drop_logits.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"drop_logits must have the batch and class sizes of logits {tuple(logits.shape)}, "
            f"got {tuple(drop_logits.shape)}"
        )
    target = _check_target(target, logits)
    _require_same_device("drop_logits", drop_logits, "logits", logits)
    implementation = _cross_entropy_implementation("dropclass_loss", target, align_corners, logits, drop_logits)
    if logits.dtype == drop_logits.dtype and implementation != "eager":
        keep = check_keep(keep, logits.shape[0], logits.shape[1], logits, "logits")
        rows = _keep_as_rows(keep, logits.dtype)
        if implementation == "triton":
            terms = _triton().dropclass_loss_terms(
                logits, drop_logits, target, rows, ignore_index, align_corners, _backend.deterministic()
            )
        else:
            terms = _ops.dropclass_loss_terms(logits, drop_logits, target, rows, ignore_index, align_corners)
        return reference.combine_loss_terms(*terms, progress, alpha)
    return reference.combine_loss_terms(
        seg_cross_entropy(logits, target, None, ignore_index, align_corners),
        seg_cross_entropy(drop_logits, target, keep, ignore_index, align_corners),
        dropped_class_prob(drop_logits, keep),
        progress,
        alpha,
    )
