"""The Triton kernels as ``torch.ops.dropclass_fast_triton.*``: custom ops with fake (meta) implementations and
autograd formulas, so that ``torch.compile(fullgraph=True)`` treats each as one opaque node.

The loss ops return ``(loss, unscaled grad, scale)``: the kernels write the gradient of the *sum* over valid
pixels in the forward pass, and backward multiplies it by ``grad_loss * scale`` (``scale = 1 / count``) in the one
pass that casts it to the logits' dtype, so no kernel waits for the count. Value errors (labels outside
``[0, K)`` that are not ignored, keep masks that are not 0/1 or drop every class) are flagged on the device and
read with one host sync per call, then raised as ValueError with the messages of :mod:`dropclass_fast.functional`.
"""

from __future__ import annotations

import torch

from .. import _ops, functional
from . import channel_mask as channel_mask_kernels
from ._common import dense, on_tensor_device, scaled_sum
from .dropped_class_prob import dropped_prob_sum
from .seg_cross_entropy import NO_BAD_LABEL, cross_entropy_pass, supports_fused_sup

_LIB = "dropclass_fast_triton"
_F32 = torch.float32


def _keep_status(keep: torch.Tensor) -> torch.Tensor:
    """int64 0-dim on keep's device: 0 if ``keep`` (``[R, K]``) is valid, else nonzero."""
    not_binary = ((keep != 0) & (keep != 1)).any()
    empty_row = ((keep != 0).sum(-1) == 0).any()
    return (not_binary | empty_row).to(torch.int64)


def _raise_on_bad_values(
    keep: torch.Tensor | None,
    bad_index: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    num_classes: int = 0,
    ignore_index: int = 0,
) -> None:
    """One host sync; on an error, the checks of :mod:`dropclass_fast.functional` build the message."""
    flags = []
    if keep is not None:
        flags.append(_keep_status(keep))
    if bad_index is not None:
        flags.append((bad_index.reshape(()) != NO_BAD_LABEL.value).to(torch.int64))
    values = torch.stack(flags).tolist()
    if keep is not None and values[0]:
        functional.check_keep_values(keep)
    if bad_index is not None and values[-1]:
        functional.check_label_values(target, num_classes, ignore_index)


# --- channel_mask ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::channel_mask", mutates_args=())
@on_tensor_device
def _channel_mask(
    features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, deterministic: bool
) -> torch.Tensor:
    _raise_on_bad_values(keep)
    return channel_mask_kernels.forward(features, weight, keep, deterministic)


@_channel_mask.register_fake
def _(features, weight, keep, deterministic):
    return torch.empty_like(features)


@torch.library.custom_op(f"{_LIB}::channel_mask_backward", mutates_args=())
@on_tensor_device
def _channel_mask_backward(
    grad_out: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return channel_mask_kernels.backward(grad_out, features, weight, keep)


@_channel_mask_backward.register_fake
def _(grad_out, features, weight, keep):
    return torch.empty_like(features), torch.empty_like(weight)


def _channel_mask_grad(ctx, grad_out):
    return *_ops.channel_mask_grads(ctx, grad_out, _channel_mask_backward), None, None


_channel_mask.register_autograd(_channel_mask_grad, setup_context=_ops.save_channel_mask_inputs)


# --- gradient scaling (backward) ------------------------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::scaled_sum", mutates_args=())
@on_tensor_device
def _scaled_sum(
    x: torch.Tensor, a: torch.Tensor, y: torch.Tensor | None, b: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    return scaled_sum(dtype, x, a, y, b)


@_scaled_sum.register_fake
def _(x, a, y, b, dtype):
    return torch.empty_like(x, dtype=dtype)


def _scale(ctx, grad_loss: torch.Tensor | None, index: int) -> torch.Tensor:
    """``grad_loss * scales[index]`` (0 when the output got no gradient)."""
    (scales,) = ctx.saved_tensors[-1:]
    if grad_loss is None:
        return torch.zeros_like(scales[index])
    return grad_loss.to(_F32) * scales[index]


def _saved_grad(ctx, position: int, op: str) -> torch.Tensor:
    _ops.refuse_double_backward(op)
    grad = ctx.saved_tensors[position]
    if grad.numel() == 0 and ctx.numel != 0:
        raise RuntimeError(f"dropclass_fast.{op} was called with compute_grad=False; no gradient was kept")
    return grad


# --- seg_cross_entropy ----------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::seg_cross_entropy", mutates_args=())
@on_tensor_device
def _seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None,
    ignore_index: int,
    align_corners: bool,
    compute_grad: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    result = cross_entropy_pass(logits, target, keep, ignore_index, align_corners, compute_grad, False, deterministic)
    _raise_on_bad_values(keep, result.bad_index, target, logits.shape[1], ignore_index)
    count = result.count.clamp(min=1).to(_F32)
    grad = result.grad if compute_grad else logits.new_empty((0,), dtype=_F32)
    return result.loss_sum / count, grad, (1.0 / count).reshape(1)


def _fake_grad(x: torch.Tensor, compute_grad: bool) -> torch.Tensor:
    """The gradient output's fake: float32 in ``x``'s layout, or empty without ``compute_grad``."""
    return torch.empty_like(x, dtype=_F32) if compute_grad else x.new_empty((0,), dtype=_F32)


def _fake_loss(logits: torch.Tensor, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fake outputs of a loss op: the loss, its gradient and its one scale."""
    return logits.new_empty((), dtype=_F32), _fake_grad(logits, compute_grad), logits.new_empty((1,), dtype=_F32)


@_seg_cross_entropy.register_fake
def _(logits, target, keep, ignore_index, align_corners, compute_grad, deterministic):
    return _fake_loss(logits, compute_grad)


def _save_loss_grads(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[1:])
    ctx.dtype = inputs[0].dtype
    ctx.numel = inputs[0].numel()
    # The gradients of the gradient and scale outputs are never used: no tensors of zeros for them.
    ctx.set_materialize_grads(False)


def _seg_cross_entropy_grad(ctx, grad_loss, _grad, _scales):
    grad = _saved_grad(ctx, 0, "seg_cross_entropy")
    return _scaled_sum(grad, _scale(ctx, grad_loss, 0), None, None, ctx.dtype), None, None, None, None, None, None


_seg_cross_entropy.register_autograd(_seg_cross_entropy_grad, setup_context=_save_loss_grads)


# --- dropped_class_prob ---------------------------------------------------------------------------------------


def _sup_scale(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``1 / (h * w * max(N, 1))``, ``N`` the number of dropped (sample, class) pairs (float32 0-dim)."""
    batch, num_classes, h, w = logits.shape
    dropped = (1.0 - keep).expand(batch, num_classes).sum()
    return 1.0 / (dropped.clamp(min=1) * max(h * w, 1))


@torch.library.custom_op(f"{_LIB}::dropped_class_prob", mutates_args=())
@on_tensor_device
def _dropped_class_prob(
    logits: torch.Tensor, keep: torch.Tensor, compute_grad: bool, deterministic: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _raise_on_bad_values(keep)
    total, grad = dropped_prob_sum(logits, keep, compute_grad, deterministic)
    scale = _sup_scale(logits, keep)
    grad = grad if compute_grad else logits.new_empty((0,), dtype=_F32)
    return total * scale, grad, scale.reshape(1)


@_dropped_class_prob.register_fake
def _(logits, keep, compute_grad, deterministic):
    return _fake_loss(logits, compute_grad)


def _dropped_class_prob_grad(ctx, grad_loss, _grad, _scales):
    grad = _saved_grad(ctx, 0, "dropped_class_prob")
    return _scaled_sum(grad, _scale(ctx, grad_loss, 0), None, None, ctx.dtype), None, None, None


_dropped_class_prob.register_autograd(_dropped_class_prob_grad, setup_context=_save_loss_grads)


# --- dropclass_loss: both cross-entropies and L_sup ------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::dropclass_loss", mutates_args=())
@on_tensor_device
def _dropclass_loss(
    logits: torch.Tensor,
    drop_logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    ignore_index: int,
    align_corners: bool,
    compute_grad: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    plain = cross_entropy_pass(logits, target, None, ignore_index, align_corners, compute_grad, False, deterministic)
    fused = supports_fused_sup(drop_logits, target, align_corners)
    dropped = cross_entropy_pass(
        drop_logits, target, keep, ignore_index, align_corners, compute_grad, fused, deterministic
    )
    _raise_on_bad_values(keep, plain.bad_index, target, logits.shape[1], ignore_index)
    if fused:
        sup_total, sup_grad = dropped.sup_sum, dropped.sup_grad
    else:
        sup_total, sup_grad = dropped_prob_sum(drop_logits, keep, compute_grad, deterministic)
    counts = torch.stack([plain.count, dropped.count]).clamp(min=1).to(_F32)
    scales = torch.cat([1.0 / counts, _sup_scale(drop_logits, keep).reshape(1)])
    grads = (plain.grad, dropped.grad, sup_grad)
    if not compute_grad:
        grads = tuple(logits.new_empty((0,), dtype=_F32) for _ in range(3))
    return plain.loss_sum * scales[0], dropped.loss_sum * scales[1], sup_total * scales[2], *grads, scales


@_dropclass_loss.register_fake
def _(logits, drop_logits, target, keep, ignore_index, align_corners, compute_grad, deterministic):
    scalar = logits.new_empty((), dtype=_F32)
    grads = [_fake_grad(x, compute_grad) for x in (logits, drop_logits, drop_logits)]  # CE, CE_drop, L_sup
    return scalar, scalar.clone(), scalar.clone(), *grads, logits.new_empty((3,), dtype=_F32)


def _dropclass_loss_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[3:])
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)
    ctx.numel = inputs[0].numel()
    ctx.set_materialize_grads(False)


def _dropclass_loss_grad(ctx, grad_ce, grad_ce_drop, grad_sup, *_unused):
    grad = _saved_grad(ctx, 0, "dropclass_loss")
    grad_drop, grad_sup_term = ctx.saved_tensors[1:3]
    grad_logits = _scaled_sum(grad, _scale(ctx, grad_ce, 0), None, None, ctx.dtypes[0])
    grad_drop_logits = _scaled_sum(
        grad_drop, _scale(ctx, grad_ce_drop, 1), grad_sup_term, _scale(ctx, grad_sup, 2), ctx.dtypes[1]
    )
    return grad_logits, grad_drop_logits, None, None, None, None, None, None


_dropclass_loss.register_autograd(_dropclass_loss_grad, setup_context=_dropclass_loss_setup)


# --- entry points used by dropclass_fast.functional ------------------------------------------------------------


def channel_mask(features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """``features * s`` in the features' dtype; features ``[B, C, h, w]``, weight taps ``[K, C, T]`` (any float
    dtype; ``s`` is computed in float32), keep float32 ``[R, K]``."""
    return _channel_mask(dense(features), weight.to(_F32).contiguous(), keep, deterministic)


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None,
    ignore_index: int,
    align_corners: bool,
    deterministic: bool,
) -> torch.Tensor:
    """The fused cross-entropy (0-dim float32) of logits ``[B, K, h, w]`` (float32, float16 or bfloat16)
    bilinearly upsampled to target ``[B, H, W]`` (integer); keep float32 ``[R, K]`` or None."""
    loss, _, _ = _seg_cross_entropy(
        dense(logits), target, keep, ignore_index, align_corners, _ops.wants_grad(logits), deterministic
    )
    return loss


def dropped_class_prob(logits: torch.Tensor, keep: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """``L_sup`` (0-dim float32) of logits ``[B, K, h, w]`` (float32, float16 or bfloat16); keep float32
    ``[R, K]``."""
    loss, _, _ = _dropped_class_prob(dense(logits), keep, _ops.wants_grad(logits), deterministic)
    return loss


def dropclass_loss_terms(
    logits: torch.Tensor,
    drop_logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    ignore_index: int,
    align_corners: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted ``(CE(logits, y), CE(drop_logits, y_drop), L_sup)``, each 0-dim float32; one pass per logits."""
    ce, ce_drop, sup, *_ = _dropclass_loss(
        dense(logits), dense(drop_logits), target, keep, ignore_index, align_corners,
        _ops.wants_grad(logits, drop_logits), deterministic,
    )  # fmt: skip
    return ce, ce_drop, sup
