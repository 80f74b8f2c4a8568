"""Class-importance channel masking ``A * s`` and its backward, ``s = sum_k keep_k ReLU(W_k) / sum_k keep_k``.

Forward: ``s`` (``[R, C]``, R = 1 or B keep rows) from the weight taps, then one pass over ``A``. Backward: one
pass writes ``dA = dOut * s`` and per-(sample, pixel block) partials of ``r[b, c] = sum_p dOut * A``; a second,
small kernel sums the partials in a fixed order and forms
``dW[k, c, t] = [W_eff[k, c] > 0] * sum_b keep[b, k] / sum_j keep[b, j] * r[b, c]``. No atomics: the results are
bit-identical run to run for a given block size. Features may be contiguous or channels_last: a pixel ``p`` of the
flattened ``h*w`` is at ``p * stride_p`` (1 or C).
"""

# ruff: noqa: N803, N806 - Triton convention: constexpr and size arguments in capitals (BLOCK_K, K, H, W)

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._common import offset64

IMPORTANCE_BLOCK_C = 32


@triton.jit
def _effective_weight(weight_ptr, k, c, mask, C, T):
    """``sum_t W[k, c, t]`` of a ``[BLOCK_K, BLOCK_C]`` tile (weight float32 ``[K, C, T]`` contiguous)."""
    base = weight_ptr + offset64(k[:, None] * C + c[None, :], T)
    total = tl.zeros(mask.shape, tl.float32)
    t = 0
    while t < T:
        total += tl.load(base + t, mask=mask, other=0.0)
        t += 1
    return total


@triton.jit
def _importance_kernel(weight_ptr, keep_ptr, s_ptr, K, C, T, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    row = tl.program_id(1)
    k = tl.arange(0, BLOCK_K)
    kmask = k < K
    mask = kmask[:, None] & (c < C)[None, :]
    importance = tl.maximum(_effective_weight(weight_ptr, k, c, mask, C, T), 0.0)
    keep = tl.load(keep_ptr + row * K + k, mask=kmask, other=0.0)
    s = tl.sum(importance * keep[:, None], axis=0) / tl.sum(keep, axis=0)
    tl.store(s_ptr + row * C + c, s, mask=c < C)


@triton.jit
def _scale_kernel(
    in_ptr, out_ptr, s_ptr, s_stride, stride_b, stride_c, stride_p, C, P,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2)
    cmask = c < C
    mask = cmask[:, None] & (p < P)[None, :]
    offs = offset64(b, stride_b) + offset64(c, stride_c)[:, None] + offset64(p, stride_p)[None, :]
    s = tl.load(s_ptr + b * s_stride + c, mask=cmask, other=0.0)
    value = tl.load(in_ptr + offs, mask=mask, other=0.0).to(tl.float32) * s[:, None]
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_out_ptr, features_ptr, grad_features_ptr, s_ptr, s_stride, partial_ptr,
    stride_b, stride_c, stride_p, C, P,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2)
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    mask = cmask[:, None] & (p < P)[None, :]
    offs = offset64(b, stride_b) + offset64(c, stride_c)[:, None] + offset64(p, stride_p)[None, :]
    g = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(features_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b * s_stride + c, mask=cmask, other=0.0)
    tl.store(grad_features_ptr + offs, (g * s[:, None]).to(grad_features_ptr.dtype.element_ty), mask=mask)
    partial_row = offset64(b * tl.num_programs(0) + block, C)
    tl.store(partial_ptr + partial_row + c, tl.sum(g * a, axis=1), mask=cmask)


@triton.jit
def _weight_grad_kernel(
    weight_ptr, keep_ptr, keep_stride, partial_ptr, grad_weight_ptr, B, K, C, T, n_blocks,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.arange(0, BLOCK_K)
    kmask = k < K
    cmask = c < C
    mask = kmask[:, None] & cmask[None, :]
    total = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
    b = 0
    while b < B:
        r = tl.zeros((BLOCK_C,), tl.float32)
        block = 0
        while block < n_blocks:
            r += tl.load(partial_ptr + offset64(b * n_blocks + block, C) + c, mask=cmask, other=0.0)
            block += 1
        keep = tl.load(keep_ptr + b * keep_stride + k, mask=kmask, other=0.0)
        total += (keep / tl.sum(keep, axis=0))[:, None] * r[None, :]
        b += 1
    active = _effective_weight(weight_ptr, k, c, mask, C, T) > 0.0
    grad = tl.where(active, total, 0.0)
    base = grad_weight_ptr + offset64(k[:, None] * C + c[None, :], T)
    t = 0
    while t < T:
        tl.store(base + t, grad, mask=mask)
        t += 1


FORWARD_CANDIDATES = ((32, 128, 4), (16, 256, 4), (64, 64, 4), (32, 64, 2))  # (BLOCK_C, BLOCK_P, warps)
BACKWARD_BLOCK_P = 256  # fixed: the pixel blocks of the partial sums set the reduction order


def _layout(features: torch.Tensor) -> tuple[int, int, int]:
    """Strides of (sample, channel, flattened pixel) of a contiguous or channels_last ``[B, C, h, w]`` tensor,
    from its sizes: the strides it reports for size-1 dimensions may be anything (``is_contiguous`` ignores them;
    a ``[B, C, h, 1]`` tensor can report ``stride(3) == h``)."""
    _, channels, h, w = features.shape
    if features.is_contiguous():
        return channels * h * w, h * w, 1
    return h * w * channels, 1, channels


def class_importance(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``s``: float32 ``[R, C]`` from float32 taps ``[K, C, T]`` and float32 keep ``[R, K]`` (both contiguous)."""
    num_classes, channels, taps = weight.shape
    s = torch.empty(keep.shape[0], channels, dtype=torch.float32, device=weight.device)
    block_k = triton.next_power_of_2(num_classes)
    grid = (triton.cdiv(channels, IMPORTANCE_BLOCK_C), keep.shape[0])
    _importance_kernel[grid](weight, keep, s, num_classes, channels, taps, BLOCK_K=block_k, BLOCK_C=IMPORTANCE_BLOCK_C)
    return s


def forward(features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """``features * s`` in the features' dtype and layout (features dense: contiguous or channels_last)."""
    batch, channels, h, w = features.shape
    out = torch.empty_like(features)
    if out.numel() == 0:
        return out
    s = class_importance(weight, keep)
    s_stride = 0 if keep.shape[0] == 1 else channels

    def run(config: tuple[int, int, int]) -> None:
        block_c, block_p, warps = config
        grid = (triton.cdiv(h * w, block_p), triton.cdiv(channels, block_c), batch)
        _scale_kernel[grid](
            features, out, s, s_stride, *_layout(features), channels, h * w,
            BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip

    key = ("channel_mask", tuple(features.shape), features.stride(), features.dtype, str(features.device))
    run(_tuning.pick(key, FORWARD_CANDIDATES, run, deterministic))
    return out


def backward(
    grad_out: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d features, d weight taps)``: grad_out laid out like features; d taps float32 ``[K, C, T]``."""
    batch, channels, h, w = features.shape
    num_classes, _, taps = weight.shape
    grad_features = torch.empty_like(features)
    block_c, warps = 32, 4
    n_blocks = max(1, triton.cdiv(h * w, BACKWARD_BLOCK_P))
    partial = torch.zeros(batch * n_blocks, channels, dtype=torch.float32, device=features.device)
    s = class_importance(weight, keep)
    s_stride = 0 if keep.shape[0] == 1 else channels
    if features.numel() > 0:
        grid = (n_blocks, triton.cdiv(channels, block_c), batch)
        _backward_kernel[grid](
            grad_out, features, grad_features, s, s_stride, partial, *_layout(features), channels, h * w,
            BLOCK_C=block_c, BLOCK_P=BACKWARD_BLOCK_P, num_warps=warps,
        )  # fmt: skip
    grad_weight = torch.empty_like(weight)
    keep_stride = 0 if keep.shape[0] == 1 else num_classes
    _weight_grad_kernel[(triton.cdiv(channels, IMPORTANCE_BLOCK_C),)](
        weight, keep, keep_stride, partial, grad_weight, batch, num_classes, channels, taps, n_blocks,
        BLOCK_K=triton.next_power_of_2(num_classes), BLOCK_C=IMPORTANCE_BLOCK_C,
    )  # fmt: skip
    return grad_features, grad_weight
