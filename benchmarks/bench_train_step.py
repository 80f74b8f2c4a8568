"""End-to-end training step of HRNet-W18-small-v2: baseline, official-style DropClass, DropClass with dropclass_fast.

See ``train_step.py`` for the variants. CPU: a small shape (B=2, 256x512 images) in float32; CUDA:
the Cityscapes per-GPU shape (B=12, 512x1024) in float32 and under bf16 autocast
(``settings.STEP_CONFIGS``). Time per step and peak extra memory.

Run: ``pytest --benchmark-only benchmarks/bench_train_step.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cases import Case
from settings import STEP_CONFIGS
from train_step import MODEL, STEP_SHAPES, VARIANTS, effective_backend


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
