"""What the Triton kernels share: int64 addressing, interpreter mode, dot precision, the gradient-scaling kernel."""

# ruff: noqa: N803, N806 - Triton convention: constexpr and size arguments in capitals (BLOCK_K, K, H, W)

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl

# ``triton.jit`` reads TRITON_INTERPRET when a kernel is defined: kernels defined in interpreter mode run on
# CPU tensors (slowly, through numpy) and are what CI tests; otherwise they are compiled for the GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SCALE_BLOCK = 1024


@triton.jit
def offset64(index, stride):
    """``index * stride`` in int64: sizes multiply past 2**31 elements, program ids and strides are int32."""
    return index.to(tl.int64) * stride


def dot_precision(device: torch.device) -> str:
    """``tl.dot`` input precision for float32 operands with float32 accuracy.

    ``tf32x3`` (three tensor-core passes, ~fp32 accuracy) on GPUs with tf32 (compute capability 8.0+),
    plain FMA (``ieee``) before that and under the interpreter.
    """
    if INTERPRET or device.type != "cuda":
        return "ieee"
    return "tf32x3" if torch.cuda.get_device_capability(device)[0] >= 8 else "ieee"


Result = TypeVar("Result")


def on_tensor_device(op: Callable[..., Result]) -> Callable[..., Result]:
    """``op`` run with the CUDA device of its first argument (a tensor) made current: Triton launches kernels
    on, and times them on, the current device, which need not be the tensors' (``cuda:1`` tensors while
    ``cuda:0`` is current)."""

    @functools.wraps(op)
    def on_device(tensor: torch.Tensor, *args, **kwargs) -> Result:
        if not tensor.is_cuda:
            return op(tensor, *args, **kwargs)
        with torch.cuda.device(tensor.device):
            return op(tensor, *args, **kwargs)

    return on_device


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if it is contiguous or channels_last-contiguous (4-D), else a contiguous copy."""
    if tensor.is_contiguous() or (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)):
        return tensor
    return tensor.contiguous()


@triton.jit
def _scale_kernel(out_ptr, x_ptr, a_ptr, y_ptr, b_ptr, n, HAS_Y: tl.constexpr, BLOCK: tl.constexpr):
    offs = offset64(tl.program_id(0), BLOCK) + tl.arange(0, BLOCK)
    mask = offs < n
    value = tl.load(a_ptr) * tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_Y:
        value += tl.load(b_ptr) * tl.load(y_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


def scaled_sum(
    dtype: torch.dtype,
    x: torch.Tensor,
    a: torch.Tensor,
    y: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a * x (+ b * y)`` cast to ``dtype``, in ``x``'s strides, one pass.

    ``x`` and ``y`` are dense float32 buffers with the same strides (contiguous or channels_last); ``a`` and
    ``b`` are float32 tensors of one element on the same device (read by the kernel: no host sync).
    """
    out = torch.empty_like(x, dtype=dtype)
    n = out.numel()
    if n == 0:
        return out
    a = a.reshape(1).to(torch.float32)
    b = a if b is None else b.reshape(1).to(torch.float32)
    _scale_kernel[(triton.cdiv(n, SCALE_BLOCK),)](
        out, x, a, x if y is None else y, b, n, HAS_Y=y is not None, BLOCK=SCALE_BLOCK
    )
    return out
