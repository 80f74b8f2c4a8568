"""``L_sup``: softmax over K at the logits' resolution, mean probability of the dropped classes, gradient in one pass.

One program per (sample, block of pixels): a ``[BLOCK_K, BLOCK_P]`` tile, softmax in float32, the per-pixel sum
``sum_k dropped_k p_k`` reduced into a per-program partial (summed afterwards in a fixed order) and the unscaled
gradient ``p_k (dropped_k - sum_j dropped_j p_j)``. The mean's ``1 / (h w N)`` (``N`` dropped (sample, class)
pairs) is applied with the incoming gradient in backward.
"""

# ruff: noqa: N803, N806 - Triton convention: constexpr and size arguments in capitals (BLOCK_K, K, H, W)

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._common import offset64


@triton.jit
def _dropped_class_prob_kernel(
    logits_ptr, stride_b, stride_k, stride_y, stride_x,
    keep_ptr, keep_stride,
    grad_ptr, stride_gb, stride_gk, stride_gy, stride_gx,
    part_ptr, K, w, P,
    COMPUTE_GRAD: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    b = tl.program_id(1)
    k = tl.arange(0, BLOCK_K)
    kmask = k < K
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    y = p // w
    x = p % w
    mask = kmask[:, None] & pmask[None, :]
    ptrs = (
        logits_ptr
        + offset64(b, stride_b)
        + offset64(k, stride_k)[:, None]
        + (offset64(y, stride_y) + offset64(x, stride_x))[None, :]
    )
    z = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    z = tl.where(kmask[:, None], z, float("-inf"))
    z = tl.where(pmask[None, :], z, 0.0)
    e = tl.exp(z - tl.max(z, axis=0)[None, :])
    prob = e / tl.sum(e, axis=0)[None, :]
    dropped = tl.where(kmask, 1.0 - tl.load(keep_ptr + b * keep_stride + k, mask=kmask, other=1.0), 0.0)
    weighted = tl.sum(prob * dropped[:, None], axis=0)
    tl.store(part_ptr + b * tl.num_programs(0) + block, tl.sum(tl.where(pmask, weighted, 0.0), axis=0))
    if COMPUTE_GRAD:
        grad_ptrs = (
            grad_ptr
            + offset64(b, stride_gb)
            + offset64(k, stride_gk)[:, None]
            + (offset64(y, stride_gy) + offset64(x, stride_gx))[None, :]
        )
        tl.store(grad_ptrs, prob * (dropped[:, None] - weighted[None, :]), mask=mask)


CANDIDATES = ((128, 4), (64, 4), (256, 8), (32, 2))  # (pixels per program, warps); the first is deterministic mode's
MAX_TILE_ELEMENTS = 8192


def dropped_prob_sum(
    logits: torch.Tensor, keep: torch.Tensor, compute_grad: bool, deterministic: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``sum_{b, k dropped, pixels} softmax_k`` (float32 0-dim) and its unscaled gradient (float32, logits' layout).

    Args:
        logits: ``[B, K, h, w]`` float32/float16/bfloat16, contiguous or channels_last.
        keep: float32 ``[1, K]`` or ``[B, K]`` of 0/1.
    """
    batch, num_classes, h, w = logits.shape
    pixels = h * w
    block_k = max(16, triton.next_power_of_2(num_classes))
    grad = torch.empty_like(logits, dtype=torch.float32) if compute_grad else None
    keep_stride = 0 if keep.shape[0] == 1 else num_classes
    candidates = [c for c in CANDIDATES if block_k * c[0] <= MAX_TILE_ELEMENTS] or [(16, 4)]
    parts: dict[tuple[int, int], torch.Tensor] = {}

    def run(config: tuple[int, int]) -> None:
        block_p, warps = config
        grid = (triton.cdiv(pixels, block_p), batch)
        parts[config] = torch.zeros(grid[0] * grid[1], dtype=torch.float32, device=logits.device)
        if grid[0] * grid[1] == 0:
            return
        _dropped_class_prob_kernel[grid](
            logits, *logits.stride(), keep, keep_stride,
            grad if grad is not None else keep, *(grad.stride() if grad is not None else (0, 0, 0, 0)),
            parts[config], num_classes, w, pixels,
            COMPUTE_GRAD=compute_grad, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip

    key = ("dropped_class_prob", tuple(logits.shape), logits.stride(), logits.dtype, compute_grad, str(logits.device))
    config = _tuning.pick(key, candidates, run, deterministic)
    run(config)
    return parts[config].sum(), grad
