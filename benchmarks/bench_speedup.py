"""Interleaved fused-versus-eager timing of ``seg_cross_entropy`` forward+backward (the headline ratio).

On a shared machine the speed of the CPU drifts over minutes, so two separately
timed benchmarks can disagree by more than the effect measured. Here every
round times ``cpp`` and ``eager`` back to back (alternating which goes first)
and the speedup is the median of the per-round ratios. The pytest-benchmark
time of this test is that of one (cpp + eager) pair; the numbers that matter
are in ``extra_info``: ``cpp_median_ms``, ``eager_median_ms``,
``speedup_median`` (and its min/max over rounds), and the minor page faults per
call (``*_minor_faults_per_call``): PyTorch's CPU allocator does not cache, so
the eager path maps and touches its ~230 MiB of full-resolution buffers anew on
every call, and on a VM those faults are a large and variable part of its time.

Shape as in ``bench_seg_cross_entropy.py``: B=2, K=19, logits 128x256 -> labels
512x1024, ``align_corners=False``. Run: ``pytest --benchmark-only benchmarks/bench_speedup.py``.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import peak_memory
import pytest

FULL = {"B": 2, "K": 19, "h": 128, "w": 256, "H": 512, "W": 1024}
SMOKE = {"B": 2, "K": 19, "h": 16, "w": 32, "H": 64, "W": 128}
ROUNDS = 15


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seg_cross_entropy_interleaved(benchmark: Any, smoke: bool, cpp_available: str | None, dtype: str) -> None:
    if cpp_available is not None:
        pytest.skip(f"C++ kernels unavailable: {cpp_available}")
    shape = SMOKE if smoke else FULL
    base = {"op": "seg_cross_entropy", "dtype": dtype, "align_corners": False, "threads": 2, **shape}
    fns = {impl: peak_memory.build({**base, "impl": impl}) for impl in ("cpp", "eager")}
    for fn in fns.values():
        fn()  # load the kernels, first-call costs
    times: dict[str, list[float]] = {"cpp": [], "eager": []}
    faults: dict[str, list[int]] = {"cpp": [], "eager": []}
    order = ["cpp", "eager"]

    def pair() -> None:
        for impl in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fns[impl]()
            times[impl].append(time.perf_counter() - t0)
            faults[impl].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        order.reverse()

    benchmark.group = f"seg_cross_entropy {dtype} interleaved cpp+eager"
    if smoke:
        benchmark.pedantic(pair, rounds=1, iterations=1)
    else:
        benchmark.pedantic(pair, rounds=ROUNDS, warmup_rounds=2, iterations=1)
        times = {k: v[-ROUNDS:] for k, v in times.items()}  # drop the warm-up rounds
    ratios = [e / c for c, e in zip(times["cpp"], times["eager"])]
    benchmark.extra_info.update(
        {
            **base,
            "rounds": len(ratios),
            "cpp_median_ms": round(1e3 * statistics.median(times["cpp"]), 2),
            "eager_median_ms": round(1e3 * statistics.median(times["eager"]), 2),
            "speedup_median": round(statistics.median(ratios), 3),
            "speedup_min": round(min(ratios), 3),
            "speedup_max": round(max(ratios), 3),
            # fresh pages touched per call: eager allocates its full-resolution buffers anew each call
            "cpp_minor_faults_per_call": statistics.median(faults["cpp"]),
            "eager_minor_faults_per_call": statistics.median(faults["eager"]),
        }
    )
