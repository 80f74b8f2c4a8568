"""Work decomposition of the fused upsample + cross-entropy kernel (host side, cached per shape).

Each program owns a rectangle of low-resolution pixels: a band of source rows ``[ya, yb)`` and a tile of source
columns ``[xa, xb)``. It walks every full-resolution pixel whose bilinear stencil touches that rectangle (output
rows ``[Ys, Ye)``, output columns ``[Xs, Xe)``, at most ``TX`` of them) and is the only writer of the rectangle's
gradient, so the gradient needs no atomics and no second reduction (the halo pixels are evaluated by both
neighbours). A pixel counts towards the loss in the program that owns its first source row and column.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def axis_coefficients(src: int, dst: int, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``i0, i1`` (int32) and weight ``l1`` of ``i1`` (float32) for each of ``dst`` output positions.

    Evaluated in float32 exactly as ``F.interpolate(mode="bilinear")`` does (``area_pixel_compute_scale``,
    ``area_pixel_compute_source_index``); the weight of ``i0`` is ``1 - l1``.
    """
    d = torch.arange(dst, dtype=torch.float32)
    if src == dst:  # PyTorch copies
        index = torch.arange(dst, dtype=torch.int64)
        return index.int(), index.int(), torch.zeros(dst, dtype=torch.float32)
    if align_corners:
        scale = torch.tensor(src - 1.0, dtype=torch.float32) / max(dst - 1, 1) if dst > 1 else torch.tensor(0.0)
        source = scale * d
    else:
        scale = torch.tensor(src, dtype=torch.float32) / torch.tensor(dst, dtype=torch.float32)
        source = (scale * (d + 0.5) - 0.5).clamp(min=0.0)
    i0 = torch.floor(source).long().clamp(max=src - 1)
    l1 = (source - i0.float()).clamp(0.0, 1.0)
    i1 = i0 + (i0 < src - 1).long()
    return i0.int(), i1.int(), l1


def _reach(i0: torch.Tensor, i1: torch.Tensor, lo: int, hi: int) -> tuple[int, int]:
    """Output positions ``[start, end)`` whose two source indices touch ``[lo, hi)``."""
    start = int(torch.searchsorted(i1, torch.tensor(lo, dtype=torch.int32)))
    end = int(torch.searchsorted(i0, torch.tensor(hi, dtype=torch.int32)))
    return start, max(start, end)


@dataclass(frozen=True)
class Plan:
    """Tables of one shape (CPU tensors; the launcher moves them to the device once)."""

    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # i0, i1, l1 per output row
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # i0, i1, l1 per output column
    bands: torch.Tensor  # int32 [n_bands, 4]: ya, yb, Ys, Ye
    tiles: torch.Tensor  # int32 [n_tiles, 4]: xa, xb, Xs, Xe
    source_span: int  # most source columns one tile reads
    covers_all: bool  # every source pixel is touched by some output pixel (false only when downsampling)


@functools.lru_cache(maxsize=64)
def make_plan(
    h: int, w: int, out_h: int, out_w: int, align_corners: bool, band_rows: int, tile_cols: int
) -> Plan | None:
    """The plan for ``[h, w] -> [out_h, out_w]`` with ``band_rows`` source rows per band and windows of ``tile_cols``
    output columns; ``None`` when one source column alone needs a wider window."""
    rows = axis_coefficients(h, out_h, align_corners)
    cols = axis_coefficients(w, out_w, align_corners)
    bands = []
    for ya in range(0, h, band_rows):
        yb = min(h, ya + band_rows)
        bands.append((ya, yb, *_reach(*rows[:2], ya, yb)))
    tiles = []
    span = 1
    xa = 0
    while xa < w:
        xb = xa + 1
        if _window(cols, xa, xb)[1] > tile_cols:
            return None
        while xb < w and _window(cols, xa, xb + 1)[1] <= tile_cols:
            xb += 1
        (start, end), _ = _window(cols, xa, xb)
        tiles.append((xa, xb, start, end))
        if end > start:
            span = max(span, int(cols[1][end - 1]) - int(cols[0][start]) + 1)
        xa = xb
    touched_rows = torch.zeros(h, dtype=torch.bool)
    touched_rows[rows[0].long()] = True
    touched_rows[rows[1].long()] = True
    touched_cols = torch.zeros(w, dtype=torch.bool)
    touched_cols[cols[0].long()] = True
    touched_cols[cols[1].long()] = True
    return Plan(
        rows=rows,
        cols=cols,
        bands=torch.tensor(bands, dtype=torch.int32),
        tiles=torch.tensor(tiles, dtype=torch.int32),
        source_span=span,
        covers_all=bool(touched_rows.all()) and bool(touched_cols.all()),
    )


def _window(cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor], xa: int, xb: int) -> tuple[tuple[int, int], int]:
    start, end = _reach(cols[0], cols[1], xa, xb)
    return (start, end), end - start
