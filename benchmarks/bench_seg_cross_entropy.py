"""Fused ``seg_cross_entropy`` forward+backward against the eager reference and ``torch.compile`` of it.

Shape (CPU-sized Cityscapes crop, output stride 4): B=2, K=19, logits
128x256 -> labels 512x1024, ``align_corners=False``, float32 and bfloat16
logits. Implementations:

* ``cpp``       -- ``dcf.seg_cross_entropy`` under ``set_backend("cpp")`` (fused C++ kernel);
* ``eager``     -- ``dcf.seg_cross_entropy`` under ``set_backend("eager")`` (input checks +
  ``F.interpolate`` + ``F.cross_entropy``): the baseline of every ratio;
* ``reference`` -- ``dropclass_fast.reference.seg_cross_entropy`` called directly (no checks);
* ``compile``   -- ``torch.compile(reference.seg_cross_entropy)``.

Run: ``pytest --benchmark-only benchmarks/bench_seg_cross_entropy.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

FULL = {"B": 2, "K": 19, "h": 128, "w": 256, "H": 512, "W": 1024}
SMOKE = {"B": 2, "K": 19, "h": 16, "w": 32, "H": 64, "W": 128}


def _shape(s: dict[str, int]) -> str:
    return f"B{s['B']} K{s['K']} {s['h']}x{s['w']}->{s['H']}x{s['W']}"


@pytest.mark.parametrize("impl", ["cpp", "eager", "reference", "compile"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seg_cross_entropy(run_case: Callable[..., None], smoke: bool, dtype: str, impl: str) -> None:
    shape = SMOKE if smoke else FULL
    case = {"op": "seg_cross_entropy", "impl": impl, "dtype": dtype, "align_corners": False, **shape}
    run_case(case, _shape(shape), memory_in_smoke=(dtype == "float32" and impl in ("cpp", "eager")))
