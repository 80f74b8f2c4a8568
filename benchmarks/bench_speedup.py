"""Interleaved fused-versus-eager timing of ``seg_cross_entropy`` forward+backward on CPU (the core target's ratio).

On a shared machine the speed of the CPU drifts over minutes, so two separately timed benchmarks can
disagree by more than the effect measured. Here every round times ``cpp`` and ``eager`` back to back
(alternating which goes first) and the speedup is the median of the per-round ratios. The
pytest-benchmark time of this test is that of one (cpp + eager) pair; the numbers that matter are in
``extra_info``: ``cpp_median_ms``, ``eager_median_ms``, ``speedup_median`` (and its min/max over
rounds), and the minor page faults per call (``*_minor_faults_per_call``): PyTorch's CPU allocator
does not cache, so the eager path maps and touches its ~230 MiB of full-resolution buffers anew on
every call, and on a VM those faults are a large and variable part of its time.

Shape: ``cases.SHAPES["cpu"]`` (B=2, K=19, logits 128x256 -> labels 512x1024, ``align_corners=False``).
Run: ``pytest --benchmark-only benchmarks/bench_speedup.py``.
"""

from __future__ import annotations

import statistics
from typing import Any

import cases
import pytest
import settings

from dropclass_fast import _extension

ROUNDS = 15
IMPLS = ("cpp", "eager")


@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_seg_cross_entropy_interleaved(benchmark: Any, dtype: str) -> None:
    if "cpu" not in settings.DEVICES:
        pytest.skip("device 'cpu' not selected (DROPCLASS_BENCH_DEVICES)")
    if not _extension.load():
        pytest.skip(f"C++ kernels unavailable: {_extension.error()}")
    shape = "smoke" if settings.SMOKE else "cpu"
    base = {"kind": "interleaved", "op": "seg_cross_entropy", "mode": "fwd+bwd", "dtype": dtype, "device": "cpu"}
    base.update(shape=shape, threads=settings.THREADS, **cases.SHAPES[shape])
    runners = {impl: cases.build({**base, "impl": impl}) for impl in IMPLS}
    benchmark.group = f"seg_cross_entropy {dtype} interleaved cpp+eager"
    times, faults = cases.time_interleaved(benchmark, runners, ROUNDS, warmup_rounds=2)
    ratios = [eager / cpp for cpp, eager in zip(times["cpp"], times["eager"])]
    benchmark.extra_info.update(
        {
            **base,
            "shape_label": cases.shape_label(base),
            "rounds": len(ratios),
            "cpp_median_ms": round(1e3 * statistics.median(times["cpp"]), 3),
            "eager_median_ms": round(1e3 * statistics.median(times["eager"]), 3),
            "speedup_median": round(statistics.median(ratios), 3),
            "speedup_min": round(min(ratios), 3),
            "speedup_max": round(max(ratios), 3),
            # fresh pages touched per call: eager allocates its full-resolution buffers anew each call
            "cpp_minor_faults_per_call": statistics.median(faults["cpp"]),
            "eager_minor_faults_per_call": statistics.median(faults["eager"]),
        }
    )
