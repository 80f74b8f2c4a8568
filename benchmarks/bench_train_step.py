"""End-to-end training step of HRNet-W18-small-v2: baseline, official-style DropClass, DropClass with dropclass_fast.

See ``train_step.py`` for the variants. CPU: a small shape (B=2, 256x512 images) in float32; CUDA:
the Cityscapes per-GPU shape (B=12, 512x1024) in float32 and under bf16 autocast
(``settings.STEP_CONFIGS``). Time per step and peak extra memory, each variant on its own; and the
interleaved comparison: every round runs one step of the baseline, the official-style and the
``dropclass_fast`` variant back to back (the order reversed every round), and each variant's time
relative to the baseline is the median of its per-round ratios (``extra_info``:
``<variant>_median_ms``, ``<variant>_ratio_median`` / ``_min`` / ``_max``). On a machine whose speed
drifts over minutes (the shared CPU VM) the separately timed medians can disagree by more than the
effect measured; the interleaved ratios do not.

Run: ``pytest --benchmark-only benchmarks/bench_train_step.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import cases
import pytest
import settings
from cases import Case
from settings import STEP_CONFIGS
from train_step import MODEL, STEP_SHAPES, VARIANTS, effective_backend

INTERLEAVED_VARIANTS = ("baseline", "official", "dropclass_fast")
INTERLEAVED_ROUNDS = 10


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("device", "shape", "precision"), STEP_CONFIGS)
def test_train_step(
    run_case: Callable[[Case], None], benchmark: Any, device: str, shape: str, precision: str, variant: str
) -> None:
    case = {"kind": "train_step", "op": "train_step", "model": MODEL, "variant": variant, "precision": precision}
    case.update(device=device, shape=shape, **STEP_SHAPES[shape])
    run_case(case)
    if variant in ("baseline_fused", "dropclass_fast"):
        benchmark.extra_info["dropclass_backend"] = effective_backend(case)


@pytest.mark.parametrize(("device", "shape", "precision"), STEP_CONFIGS)
def test_train_step_interleaved(benchmark: Any, device: str, shape: str, precision: str) -> None:
    base = {"kind": "interleaved_step", "op": "train_step", "model": MODEL, "precision": precision}
    base.update(device=device, shape=shape, threads=settings.THREADS, **STEP_SHAPES[shape])
    reason = cases.unavailable(base)
    if reason is not None:
        pytest.skip(reason)
    runners = {variant: cases.build({**base, "variant": variant}) for variant in INTERLEAVED_VARIANTS}
    benchmark.group = f"train_step {device} {precision} {cases.shape_label(base)} interleaved"
    times = cases.time_interleaved(benchmark, runners, INTERLEAVED_ROUNDS, warmup_rounds=1).seconds
    info = {**base, "shape_label": cases.shape_label(base), "rounds": len(times["baseline"])}
    for variant, variant_times in times.items():
        ratios = [t / b for t, b in zip(variant_times, times["baseline"])]
        info[f"{variant}_median_ms"] = round(1e3 * statistics.median(variant_times), 3)
        info[f"{variant}_ratio_median"] = round(statistics.median(ratios), 4)
        info[f"{variant}_ratio_min"] = round(min(ratios), 4)
        info[f"{variant}_ratio_max"] = round(max(ratios), 4)
    benchmark.extra_info.update(info)
