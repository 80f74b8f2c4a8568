"""Every DropClass op, forward and forward+backward, under every backend and ``torch.compile`` of the reference.

Ops ``channel_mask``, ``seg_cross_entropy``, ``dropped_class_prob`` and ``dropclass_loss`` (see
``cases.py`` for their inputs: class 3 dropped, progress 0.5, logits upsampled bilinearly to the
labels); modes ``fwd`` (no grad) and ``fwd+bwd``; float32 and bfloat16; implementations: every
backend of ``dropclass_fast.set_backend`` (``eager`` is the baseline of the ratios; one that cannot
run a case is skipped with the reason) and ``compile`` = ``torch.compile(dropclass_fast.reference.<op>)``.
Shapes: ``cpu`` on CPU, the paper's ``cityscapes`` and ``voc`` on CUDA (``settings.OP_SHAPES``).

Run: ``pytest --benchmark-only benchmarks/bench_ops.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cases import DTYPES, IMPLS, MODES, OPS, SHAPES, Case
from settings import OP_SHAPES


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("device", "shape"), OP_SHAPES)
def test_op(
    run_case: Callable[[Case], None], device: str, shape: str, dtype: str, mode: str, op: str, impl: str
) -> None:
    case = {"kind": "op", "op": op, "impl": impl, "mode": mode, "dtype": dtype, "device": device, "shape": shape}
    run_case({**case, **SHAPES[shape]})
