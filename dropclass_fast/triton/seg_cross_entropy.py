"""Fused bilinear upsample + softmax cross-entropy + dropped-class remap + ignore + mean, with its gradient.

One program per (sample, band of source rows, tile of source columns), see :mod:`._plan`. Down the output rows
it keeps the two source rows of the current bilinear stencil horizontally upsampled in registers (``tl.dot`` of
the ``[K, source columns]`` row with the tile's interpolation matrix, once per source row), blends them per output
row, takes the log-softmax over K in float32, and accumulates the pixel gradient ``softmax - onehot`` into two
row slots that are reduced back to source columns (the transposed matrix) when a source row leaves the stencil.
Nothing of size B*K*H*W exists. The gradient is written unscaled (a sum over pixels); the mean's ``1 / count``
is applied with the incoming gradient in backward, so no pass has to wait for the count.

With ``SUP`` the same pass also produces ``L_sup`` (softmax of the source pixels the program owns, weighted by
the dropped classes) and its gradient, so ``dropclass_loss`` reads ``drop_logits`` once.
"""

# ruff: noqa: N803, N806 - Triton convention: constexpr and size arguments in capitals (BLOCK_K, K, H, W)

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _tuning
from ._common import dot_precision, offset64
from ._plan import Plan, make_plan

NO_BAD_LABEL: tl.constexpr = tl.constexpr(2**62)  # ``bad_index`` when every label is valid


@triton.jit
def _source_row(
    logits_ptr, stride_lk, stride_ly, stride_lx, sample_offset, row, h, w, k, kmask, src_cols, interp, PRECISION
):
    """Row ``row`` of one sample, ``[BLOCK_K, SX]`` float32 (zeros outside), and it upsampled, ``[BLOCK_K, TX]``."""
    inside = (row >= 0) & (row < h)
    mask = kmask[:, None] & (src_cols < w)[None, :] & inside
    ptrs = (
        logits_ptr
        + sample_offset
        + offset64(k, stride_lk)[:, None]
        + offset64(row, stride_ly)
        + offset64(src_cols, stride_lx)[None, :]
    )
    z = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return z, tl.dot(z, interp, input_precision=PRECISION)


@triton.jit
def _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_offset, row, ya, yb, g, interp_t, k, kmask,
                    src_cols, owned_cols, PRECISION):
    """Reduces a row slot ``[BLOCK_K, TX]`` to source columns and stores it if this program owns ``row``."""
    if (row >= ya) & (row < yb):
        low = tl.dot(g, interp_t, input_precision=PRECISION)
        ptrs = (
            grad_ptr
            + sample_offset
            + offset64(k, stride_gk)[:, None]
            + offset64(row, stride_gy)
            + offset64(src_cols, stride_gx)[None, :]
        )
        tl.store(ptrs, low, mask=kmask[:, None] & owned_cols[None, :])


@triton.jit
def _sup_row(sup_grad_ptr, stride_gk, stride_gy, stride_gx, sample_offset, row, ya, yb, z, dropped, k, kmask,
             src_cols, owned_cols, COMPUTE_GRAD):
    """``sum_k dropped_k * softmax_k`` over the owned pixels of source row ``row`` (0 if not owned); stores the
    unscaled gradient ``p * (dropped - sum_k dropped_k p_k)``."""
    total = tl.zeros((), tl.float32)
    if (row >= ya) & (row < yb):
        zm = tl.where(kmask[:, None], z, float("-inf"))
        e = tl.exp(zm - tl.max(zm, axis=0)[None, :])
        p = e / tl.sum(e, axis=0)[None, :]
        weighted = tl.sum(p * dropped[:, None], axis=0)
        total = tl.sum(tl.where(owned_cols, weighted, 0.0), axis=0)
        if COMPUTE_GRAD:
            ptrs = (
                sup_grad_ptr
                + sample_offset
                + offset64(k, stride_gk)[:, None]
                + offset64(row, stride_gy)
                + offset64(src_cols, stride_gx)[None, :]
            )
            tl.store(ptrs, p * (dropped[:, None] - weighted[None, :]), mask=kmask[:, None] & owned_cols[None, :])
    return total


@triton.jit
def _seg_cross_entropy_kernel(
    logits_ptr, stride_lb, stride_lk, stride_ly, stride_lx,
    target_ptr, stride_tb, stride_ty, stride_tx,
    keep_ptr, keep_stride,
    grad_ptr, sup_grad_ptr, stride_gb, stride_gk, stride_gy, stride_gx,
    loss_part_ptr, count_part_ptr, sup_part_ptr, bad_ptr,
    row_i0_ptr, row_i1_ptr, row_l1_ptr, col_i0_ptr, col_i1_ptr, col_l1_ptr, bands_ptr, tiles_ptr,
    K, h, w, H, W, ignore_index,
    HAS_KEEP: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SUP: tl.constexpr,
    BLOCK_K: tl.constexpr, TX: tl.constexpr, SX: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    band = tl.program_id(1)
    b = tl.program_id(2)
    program = (b * tl.num_programs(1) + band) * tl.num_programs(0) + tile
    xa = tl.load(tiles_ptr + tile * 4)
    xb = tl.load(tiles_ptr + tile * 4 + 1)
    x_start = tl.load(tiles_ptr + tile * 4 + 2)
    x_end = tl.load(tiles_ptr + tile * 4 + 3)
    ya = tl.load(bands_ptr + band * 4)
    yb = tl.load(bands_ptr + band * 4 + 1)
    y_start = tl.load(bands_ptr + band * 4 + 2)
    y_end = tl.load(bands_ptr + band * 4 + 3)

    k = tl.arange(0, BLOCK_K)
    kmask = k < K
    cols = x_start + tl.arange(0, TX)
    cmask = cols < x_end
    cx0 = tl.load(col_i0_ptr + cols, mask=cmask, other=0)
    cx1 = tl.load(col_i1_ptr + cols, mask=cmask, other=0)
    cl1 = tl.load(col_l1_ptr + cols, mask=cmask, other=0.0)
    cl0 = tl.where(cmask, 1.0 - cl1, 0.0)
    xlo = tl.load(col_i0_ptr + x_start, mask=x_start < W, other=0)
    src_cols = xlo + tl.arange(0, SX)
    owned_cols = (src_cols >= xa) & (src_cols < xb)
    primary_cols = cmask & (cx0 >= xa) & (cx0 < xb)
    # Horizontal interpolation matrix of the tile: interp[j, X] = weight of source column xlo + j in output X.
    j = tl.arange(0, SX)[:, None]
    interp = tl.where(j == (cx0 - xlo)[None, :], cl0[None, :], 0.0)
    interp += tl.where(j == (cx1 - xlo)[None, :], cl1[None, :], 0.0)
    interp_t = tl.trans(interp)

    sample_l = offset64(b, stride_lb)
    sample_g = offset64(b, stride_gb)
    keep_row = keep_ptr + b * keep_stride
    dropped = tl.zeros((BLOCK_K,), tl.float32)
    if SUP:
        dropped = tl.where(kmask, 1.0 - tl.load(keep_row + k, mask=kmask, other=1.0), 0.0)

    row_a = tl.full((), -2, tl.int32)  # source row in slot A; slot B holds row_a + 1
    h_a = tl.zeros((BLOCK_K, TX), tl.float32)
    h_b = tl.zeros((BLOCK_K, TX), tl.float32)
    g_a = tl.zeros((BLOCK_K, TX), tl.float32)
    g_b = tl.zeros((BLOCK_K, TX), tl.float32)
    loss_acc = tl.zeros((TX,), tl.float32)
    count_acc = tl.zeros((TX,), tl.int32)
    sup_acc = tl.zeros((), tl.float32)
    bad_min = tl.full((), NO_BAD_LABEL, tl.int64)

    Y = y_start
    while Y < y_end:
        y0 = tl.load(row_i0_ptr + Y)
        y1 = tl.load(row_i1_ptr + Y)
        l1 = tl.load(row_l1_ptr + Y)
        if y0 != row_a:
            if y0 == row_a + 1:  # the stencil moves down one source row: slot B becomes slot A
                if COMPUTE_GRAD:
                    _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a, ya, yb, g_a,
                                    interp_t, k, kmask, src_cols, owned_cols, PRECISION)
                h_a = h_b
                g_a = g_b
                row_a = y0
                z, h_b = _source_row(logits_ptr, stride_lk, stride_ly, stride_lx, sample_l, row_a + 1, h, w, k,
                                     kmask, src_cols, interp, PRECISION)
                g_b = tl.zeros((BLOCK_K, TX), tl.float32)
                if SUP:
                    sup_acc += _sup_row(sup_grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a + 1, ya, yb,
                                        z, dropped, k, kmask, src_cols, owned_cols, COMPUTE_GRAD)
            else:  # a jump (first row, or downsampling): flush both slots, load two new rows
                if COMPUTE_GRAD:
                    _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a, ya, yb, g_a,
                                    interp_t, k, kmask, src_cols, owned_cols, PRECISION)
                    _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a + 1, ya, yb, g_b,
                                    interp_t, k, kmask, src_cols, owned_cols, PRECISION)
                row_a = y0
                z_a, h_a = _source_row(logits_ptr, stride_lk, stride_ly, stride_lx, sample_l, row_a, h, w, k, kmask,
                                       src_cols, interp, PRECISION)
                z, h_b = _source_row(logits_ptr, stride_lk, stride_ly, stride_lx, sample_l, row_a + 1, h, w, k,
                                     kmask, src_cols, interp, PRECISION)
                g_a = tl.zeros((BLOCK_K, TX), tl.float32)
                g_b = tl.zeros((BLOCK_K, TX), tl.float32)
                if SUP:
                    sup_acc += _sup_row(sup_grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a, ya, yb, z_a,
                                        dropped, k, kmask, src_cols, owned_cols, COMPUTE_GRAD)
                    sup_acc += _sup_row(sup_grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a + 1, ya, yb,
                                        z, dropped, k, kmask, src_cols, owned_cols, COMPUTE_GRAD)
        # At the last source row PyTorch blends the row with itself (y1 == y0).
        same = y1 == y0
        w_a = tl.where(same, 1.0, 1.0 - l1)
        w_b = tl.where(same, 0.0, l1)
        u = tl.where(kmask[:, None], w_a * h_a + w_b * h_b, float("-inf"))

        labels = tl.load(target_ptr + offset64(b, stride_tb) + offset64(Y, stride_ty) + offset64(cols, stride_tx),
                         mask=cmask, other=0).to(tl.int64)
        in_range = (labels >= 0) & (labels < K)
        labelled = cmask & (labels != ignore_index)
        target = tl.where(in_range, labels, 0)
        valid = labelled & in_range
        if HAS_KEEP:
            valid = valid & (tl.load(keep_row + target, mask=valid, other=0.0) != 0.0)
        primary = primary_cols & (y0 >= ya) & (y0 < yb)
        bad = labelled & (~in_range) & primary
        bad_index = offset64(b * H + Y, W) + cols
        bad_min = tl.minimum(bad_min, tl.min(tl.where(bad, bad_index, NO_BAD_LABEL), axis=0))

        m = tl.max(u, axis=0)
        e = tl.exp(u - m[None, :])
        s = tl.sum(e, axis=0)
        onehot = k[:, None] == target[None, :]
        z_target = tl.sum(tl.where(onehot, u, 0.0), axis=0)
        counted = valid & primary
        loss_acc += tl.where(counted, m + tl.log(s) - z_target, 0.0)
        count_acc += counted.to(tl.int32)
        if COMPUTE_GRAD:
            g = tl.where(valid[None, :], e / s[None, :] - onehot.to(tl.float32), 0.0)
            g_a += w_a * g
            g_b += w_b * g
        Y += 1

    if COMPUTE_GRAD:
        _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a, ya, yb, g_a, interp_t, k, kmask,
                        src_cols, owned_cols, PRECISION)
        _store_grad_row(grad_ptr, stride_gk, stride_gy, stride_gx, sample_g, row_a + 1, ya, yb, g_b, interp_t, k,
                        kmask, src_cols, owned_cols, PRECISION)
    tl.store(loss_part_ptr + program, tl.sum(loss_acc, axis=0))
    tl.store(count_part_ptr + program, tl.sum(count_acc, axis=0))
    if SUP:
        tl.store(sup_part_ptr + program, sup_acc)
    if bad_min < NO_BAD_LABEL:
        tl.atomic_min(bad_ptr, bad_min)


# (output columns per program, source rows per band, warps); the first is the fixed choice of deterministic mode.
# The 16-column window is for strong downsampling, where a window's source span (SX, in shared memory) is
# the downsampling factor times its width: at 16x the 32-column window needs 192 KiB, more than an A100 has.
CANDIDATES = ((64, 8, 8), (128, 8, 8), (32, 8, 4), (64, 4, 4), (64, 8, 4), (256, 8, 8), (16, 8, 4))
MAX_TILE_ELEMENTS = 8192  # BLOCK_K * TX per register tile
# The window of extreme upsampling (a source column's stencil wider than every candidate's). Compiled for sm_90:
# 128 KiB of shared memory at BLOCK_K=16, 192 KiB at 32 (more than an A100's 163 KiB per block); 1024 columns need
# 256 KiB at 16, more than an H100's 227 KiB.
WIDEST_WINDOW = 512
WIDEST_WINDOW_BLOCK_K = 16


def _block_k(num_classes: int) -> int:
    return max(16, triton.next_power_of_2(num_classes))


Feasible = tuple[tuple[tuple[int, int, int], Plan], ...]  # (launch configuration, its plan) pairs


@functools.lru_cache(maxsize=64)
def _feasible(shape: tuple[int, int, int, int, int], align_corners: bool) -> Feasible:
    """Candidates (and their plans) whose register tile ``BLOCK_K * TX`` fits and whose windows hold every source
    column's stencil, in ``CANDIDATES`` order. Where none qualifies (very many classes, or upsampling so strong
    that one source column reaches past the fitting windows), the narrowest window that holds the stencils, alone;
    ValueError where not even :data:`WIDEST_WINDOW` does (see :func:`unsupported_upsampling`). Cached: a call asks
    for it up to three times per logits tensor (the dispatch check, ``L_sup``'s check, the pass)."""
    num_classes, h, w, out_h, out_w = shape

    def with_plans(configs: list[tuple[int, int, int]]) -> list[tuple[tuple[int, int, int], Plan]]:
        plans = [(config, make_plan(h, w, out_h, out_w, align_corners, config[1], config[0])) for config in configs]
        return [(config, plan) for config, plan in plans if plan is not None]

    fits = [config for config in CANDIDATES if _block_k(num_classes) * config[0] <= MAX_TILE_ELEMENTS]
    oversized = sorted((config for config in CANDIDATES if config not in fits), key=lambda config: config[0])
    found = with_plans(fits) or with_plans(oversized)[:1]
    if not found and _block_k(num_classes) <= WIDEST_WINDOW_BLOCK_K:  # a stencil wider than every candidate window
        plan = make_plan(h, w, out_h, out_w, align_corners, 8, WIDEST_WINDOW)
        if plan is not None:
            found.append(((WIDEST_WINDOW, 8, 8), plan))
    if not found:
        raise ValueError(
            f"upsampling {w} logit columns to {out_w} label columns with K={num_classes} classes needs a window "
            f"wider than the Triton kernel's {WIDEST_WINDOW} columns (at most {WIDEST_WINDOW_BLOCK_K} classes at that "
            f"width)"
        )
    return tuple(found)


def unsupported_upsampling(logits_shape: torch.Size, target_shape: torch.Size, align_corners: bool) -> str | None:
    """Why the kernel cannot take logits ``[B, K, h, w]`` to labels ``[B, H, W]``, or None when it can: a source
    column whose bilinear stencil spans more output columns than any window holds (about 100x upsampling and
    more; 200x with at most 16 classes) does not fit in one program's shared memory."""
    _, num_classes, h, w = logits_shape
    _, out_h, out_w = target_shape
    try:
        _feasible((num_classes, h, w, out_h, out_w), align_corners)
    except ValueError as error:
        return str(error)
    return None


@functools.lru_cache(maxsize=64)
def _device_tables(plan: Plan, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in (*plan.rows, *plan.cols, plan.bands, plan.tiles))


class CrossEntropyPass:
    """Outputs of one fused pass: sums over the batch (device tensors, no host sync).

    ``loss_sum`` float32 0-dim, ``count`` int64 0-dim, ``sup_sum`` float32 0-dim (0 without ``sup``),
    ``bad_index`` int64 [1]: the lowest flat index of a label outside ``[0, K)`` that is not ignored, or
    :data:`NO_BAD_LABEL` (``.value``); ``grad`` / ``sup_grad`` float32 in the logits' layout, unscaled, or None.
    """

    def __init__(self, loss_sum, count, sup_sum, bad_index, grad, sup_grad) -> None:
        self.loss_sum = loss_sum
        self.count = count
        self.sup_sum = sup_sum
        self.bad_index = bad_index
        self.grad = grad
        self.sup_grad = sup_grad


def supports_fused_sup(logits: torch.Tensor, target: torch.Tensor, align_corners: bool) -> bool:
    """Whether the pass can produce ``L_sup`` too: every source pixel lies in some output pixel's stencil."""
    _, num_classes, h, w = logits.shape
    shape = (num_classes, h, w, target.shape[1], target.shape[2])
    return _feasible(shape, align_corners)[0][1].covers_all


def cross_entropy_pass(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor | None,
    ignore_index: int,
    align_corners: bool,
    compute_grad: bool,
    sup: bool,
    deterministic: bool,
) -> CrossEntropyPass:
    """Runs the fused kernel.

    Args:
        logits: ``[B, K, h, w]`` float32/float16/bfloat16, contiguous or channels_last.
        target: integer ``[B, H, W]`` (any strides).
        keep: float32 ``[1, K]`` or ``[B, K]`` (0/1, validated by the caller) or None.
        sup: also compute ``L_sup`` (needs ``keep`` and :func:`supports_fused_sup`).
    """
    batch, num_classes, h, w = logits.shape
    _, out_h, out_w = target.shape
    device = logits.device
    bad = torch.full((1,), NO_BAD_LABEL.value, dtype=torch.int64, device=device)
    if logits.numel() == 0 or target.numel() == 0:  # no output pixel: loss 0, gradient 0
        zeros = (torch.zeros_like(logits, dtype=torch.float32) if compute_grad else None for _ in range(2))
        return CrossEntropyPass(logits.new_zeros((), dtype=torch.float32), logits.new_zeros((), dtype=torch.int64),
                                logits.new_zeros((), dtype=torch.float32), bad, *zeros)  # fmt: skip
    shape = (num_classes, h, w, out_h, out_w)
    feasible = _feasible(shape, align_corners)
    plans = dict(feasible)
    grad = sup_grad = None
    if compute_grad:
        needs_zeros = not feasible[0][1].covers_all  # source pixels no output touches get no store
        alloc = torch.zeros_like if needs_zeros else torch.empty_like
        grad = alloc(logits, dtype=torch.float32)
        sup_grad = alloc(logits, dtype=torch.float32) if sup else None
    keep_arg = keep if keep is not None else bad
    keep_stride = 0 if keep is None or keep.shape[0] == 1 else num_classes
    precision = dot_precision(device)
    outputs: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def run(config: tuple[int, int, int]) -> None:
        plan = plans[config]
        tile_cols, _, warps = config
        tables = _device_tables(plan, device)
        grid = (plan.tiles.shape[0], plan.bands.shape[0], batch)
        programs = grid[0] * grid[1] * grid[2]
        parts = (
            torch.empty(programs, dtype=torch.float32, device=device),
            torch.empty(programs, dtype=torch.int32, device=device),
            torch.zeros(programs, dtype=torch.float32, device=device),
        )
        outputs[config] = parts
        _seg_cross_entropy_kernel[grid](
            logits, *logits.stride(),
            target, *target.stride(),
            keep_arg, keep_stride,
            grad if grad is not None else bad, sup_grad if sup_grad is not None else bad,
            *(grad.stride() if grad is not None else (0, 0, 0, 0)),
            *parts, bad, *tables,
            num_classes, h, w, out_h, out_w, ignore_index,
            HAS_KEEP=keep is not None, COMPUTE_GRAD=compute_grad, SUP=sup,
            BLOCK_K=_block_k(num_classes), TX=tile_cols,
            SX=max(16, triton.next_power_of_2(plan.source_span)), PRECISION=precision, num_warps=warps,
        )  # fmt: skip

    key = ("seg_cross_entropy", batch, shape, align_corners, keep is not None, compute_grad, sup, logits.dtype,
           logits.stride(), str(device))  # fmt: skip
    config = _tuning.pick(key, [config for config, _ in feasible], run, deterministic)
    run(config)
    loss_part, count_part, sup_part = outputs[config]
    return CrossEntropyPass(loss_part.sum(), count_part.sum(dtype=torch.int64), sup_part.sum(), bad, grad, sup_grad)
