"""An op run on a backend or on the eager reference, with its gradients, and the gradient comparison the op tests
share (CPU and Triton alike)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import dropclass_fast
from dropclass_fast import functional as dcf
from dropclass_fast import reference

OPS = dropclass_fast._backend.OPS


def tiny_op_calls(
    requires_grad: bool = False,
) -> dict[str, Callable[[], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]]:
    """A call of each of :data:`OPS` on tiny CPU inputs (K=4, per-batch keep), by op name: for the tests of what
    reaches each op (its backend, its flags, its autograd), not of values. Each returns a scalar of the op's output
    and the inputs it is differentiable in (with ``requires_grad`` set when asked)."""
    logits = torch.randn(2, 4, 3, 3, requires_grad=requires_grad)
    features = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    weight = torch.randn(4, 3, requires_grad=requires_grad)
    target, keep = torch.randint(0, 4, (2, 6, 6)), torch.tensor([1.0, 0.0, 1.0, 1.0])
    return {
        "channel_mask": lambda: (dcf.channel_mask(features, weight, keep).square().sum(), (features, weight)),
        "seg_cross_entropy": lambda: (dcf.seg_cross_entropy(logits, target, keep), (logits,)),
        "dropped_class_prob": lambda: (dcf.dropped_class_prob(logits, keep), (logits,)),
        "dropclass_loss": lambda: (dcf.dropclass_loss(logits, logits * 2, target, keep, 0.5)[0], (logits,)),
    }


def run_op(fn_name: str, backend: str, *tensors: object, **kwargs: object) -> tuple[object, list[torch.Tensor]]:
    """``(output, grads)`` of ``dropclass_fast.functional.<fn_name>`` under ``backend``, or of
    ``dropclass_fast.reference.<fn_name>`` for ``backend="reference"``, which sees half-precision inputs as float32
    (as the kernels accumulate them). The gradients are those of the 4-D inputs (logits, features), in order, from
    a backward of the output (of its total where the op returns ``(total, parts)``)."""
    leaves = [t.detach().clone().requires_grad_() if _is_tensor(t) and t.dim() == 4 else t for t in tensors]
    if backend == "reference":
        upcast = [x.float() if _is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16) else x for x in leaves]
        out = getattr(reference, fn_name)(*upcast, **kwargs)
    else:
        with dropclass_fast.set_backend(backend):
            out = getattr(dcf, fn_name)(*leaves, **kwargs)
    total = out[0] if isinstance(out, tuple) else out
    total.backward()
    return out, [x.grad for x in leaves if _is_tensor(x) and x.requires_grad]


def _is_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor)


def assert_grad_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """Same dtype and shape, and close within ``rtol``, absolutely within ``rtol`` times ``want``'s largest entry (a
    gradient's small entries carry the rounding of its large ones)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=rtol * max(scale, 1e-12))
