"""``torch.library`` glue for the compiled ops ``torch.ops.dropclass_fast.*``.

The schemas and the CPU kernels are registered in C++ (``csrc/ops.cpp``); this
module adds, once the library is loaded, the fake (meta) implementations that
``torch.compile`` traces with and the autograd formulas. The fused loss ops
return ``(loss, grad)``: the gradient with respect to the logits is produced in
the forward pass and only scaled by the incoming gradient in backward.
``dropclass_loss`` returns the three loss terms and their three gradients.
"""

from __future__ import annotations

import torch

from .reference import accumulation_dtype

_registered = False


def _fake_loss_and_grad(logits: torch.Tensor, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    acc = accumulation_dtype(logits.dtype)
    grad_shape = logits.shape if compute_grad else (0,)
    return logits.new_empty((), dtype=acc), logits.new_empty(grad_shape, dtype=acc)


def refuse_double_backward(op: str) -> None:
    """RuntimeError when a backward of ``op`` is itself being recorded (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"dropclass_fast.{op} does not support double backward (create_graph=True)")


def _save_grad(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.compute_grad = inputs[-1]
    ctx.logits_dtype = inputs[0].dtype
    # The gradients of the gradient outputs are never used: no tensors of zeros for them.
    ctx.set_materialize_grads(False)


def _saved_grads(ctx, op: str) -> tuple[torch.Tensor, ...]:
    refuse_double_backward(op)
    grads = ctx.saved_tensors
    if not ctx.compute_grad:
        raise RuntimeError(f"dropclass_fast.{op} was called with compute_grad=False; no gradient was kept")
    return grads


def _scaled(grad: torch.Tensor, grad_loss: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``grad * grad_loss`` rounded once to ``dtype``; None when the loss got no gradient. Written straight into the
    ``dtype`` result: half-precision logits get no float32 temporary the size of their gradient."""
    if grad_loss is None:
        return None
    return torch.mul(grad, grad_loss, out=torch.empty_like(grad, dtype=dtype))


def _seg_cross_entropy_backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = _saved_grads(ctx, "seg_cross_entropy")
    return _scaled(grad, grad_loss, ctx.logits_dtype), None, None, None, None, None


def _dropped_class_prob_backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = _saved_grads(ctx, "dropped_class_prob")
    return _scaled(grad, grad_loss, ctx.logits_dtype), None, None


def _dropclass_loss_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[3:])
    ctx.compute_grad = inputs[-1]
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)
    ctx.set_materialize_grads(False)


def _dropclass_loss_backward(ctx, grad_ce, grad_ce_drop, grad_sup, *_grads_of_grads):
    grad, grad_drop, grad_sup_term = _saved_grads(ctx, "dropclass_loss")
    grad_drop_logits = _scaled(grad_drop, grad_ce_drop, ctx.dtypes[1])
    if grad_sup is not None:
        grad_drop_logits = (
            _scaled(grad_sup_term, grad_sup, ctx.dtypes[1])
            if grad_ce_drop is None
            else (grad_drop * grad_ce_drop).addcmul_(grad_sup_term, grad_sup).to(ctx.dtypes[1])
        )
    return _scaled(grad, grad_ce, ctx.dtypes[0]), grad_drop_logits, None, None, None, None, None


def save_channel_mask_inputs(ctx, inputs, output) -> None:
    """``setup_context`` of channel_mask on every backend: its first three inputs, features, weight and keep."""
    ctx.save_for_backward(*inputs[:3])


def channel_mask_grads(ctx, grad_out: torch.Tensor, backward) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of features and weight from :func:`save_channel_mask_inputs`' tensors through ``backward``, a
    backend's ``channel_mask_backward`` op, which takes ``grad_out`` in the features' memory format."""
    refuse_double_backward("channel_mask")
    features, weight, keep = ctx.saved_tensors
    return backward(grad_out.contiguous(memory_format=_memory_format(features)), features, weight, keep)


def _channel_mask_backward(ctx, grad_out):
    return *channel_mask_grads(ctx, grad_out, torch.ops.dropclass_fast.channel_mask_backward), None


def _memory_format(features: torch.Tensor) -> torch.memory_format:
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def register() -> None:
    """Add fake implementations and autograd formulas to the loaded C++ ops (idempotent)."""
    global _registered
    if _registered:
        return

    @torch.library.register_fake("dropclass_fast::seg_cross_entropy")
    def _(logits, target, keep, ignore_index, align_corners, compute_grad):
        return _fake_loss_and_grad(logits, compute_grad)

    @torch.library.register_fake("dropclass_fast::dropped_class_prob")
    def _(logits, keep, compute_grad):
        return _fake_loss_and_grad(logits, compute_grad)

    @torch.library.register_fake("dropclass_fast::dropclass_loss")
    def _(logits, drop_logits, target, keep, ignore_index, align_corners, compute_grad):
        loss, grad = _fake_loss_and_grad(logits, compute_grad)
        loss_drop, grad_drop = _fake_loss_and_grad(drop_logits, compute_grad)
        return loss, loss_drop, loss_drop.clone(), grad, grad_drop, torch.empty_like(grad_drop)

    @torch.library.register_fake("dropclass_fast::channel_mask")
    def _(features, weight, keep):
        return torch.empty_like(features, memory_format=_memory_format(features))

    @torch.library.register_fake("dropclass_fast::channel_mask_backward")
    def _(grad_out, features, weight, keep):
        return torch.empty_like(features, memory_format=_memory_format(features)), torch.empty_like(weight)

    torch.library.register_autograd(
        "dropclass_fast::seg_cross_entropy", _seg_cross_entropy_backward, setup_context=_save_grad
    )
    torch.library.register_autograd(
        "dropclass_fast::dropped_class_prob", _dropped_class_prob_backward, setup_context=_save_grad
    )
    torch.library.register_autograd(
        "dropclass_fast::dropclass_loss", _dropclass_loss_backward, setup_context=_dropclass_loss_setup
    )
    torch.library.register_autograd(
        "dropclass_fast::channel_mask", _channel_mask_backward, setup_context=save_channel_mask_inputs
    )
    _registered = True


def wants_grad(*tensors: torch.Tensor) -> bool:
    """Whether a fused loss op must write its gradient in the forward pass: grad mode is on and some input of
    ``tensors`` requires grad (shared by the C++/CUDA and the Triton entry points)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def seg_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None,
    ignore_index: int,
    align_corners: bool,
) -> torch.Tensor:
    loss, _ = torch.ops.dropclass_fast.seg_cross_entropy(
        logits, target, keep, ignore_index, align_corners, wants_grad(logits)
    )
    return loss


def dropped_class_prob(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    loss, _ = torch.ops.dropclass_fast.dropped_class_prob(logits, keep, wants_grad(logits))
    return loss


def dropclass_loss_terms(
    logits: torch.Tensor,
    drop_logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    ignore_index: int,
    align_corners: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ce, ce_drop, sup, *_ = torch.ops.dropclass_fast.dropclass_loss(
        logits, drop_logits, target, keep, ignore_index, align_corners, wants_grad(logits, drop_logits)
    )
    return ce, ce_drop, sup


def channel_mask(features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.ops.dropclass_fast.channel_mask(features, weight, keep)
