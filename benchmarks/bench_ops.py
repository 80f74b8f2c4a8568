"""The other DropClass ops, forward+backward, at CPU-sized shapes.

* ``dropped_class_prob`` -- ``L_sup`` on drop-path logits B=2, K=19, 128x256, class 3 dropped;
* ``channel_mask`` -- ``A * s`` with features B=2, C=256, 128x256 and a [19, 256] weight
  (backward of ``(out * g).sum()`` with a fixed cotangent ``g``: gradients of A and W);
* ``dropclass_loss`` -- the whole loss: two fused CEs (logits 128x256 -> labels 512x1024)
  and ``L_sup``, class 3 dropped, progress 0.5;
* ``dropclass_step`` -- ``DropClass(nn.Conv2d(256, 19, 1))`` forward in training mode on
  B=2, C=256, 128x256 features + ``DropClassLoss`` + backward (module and loss together).

Implementations as in ``bench_seg_cross_entropy.py`` (``cpp``, ``eager`` = the baseline,
``reference``, ``compile``). Run: ``pytest --benchmark-only benchmarks/bench_ops.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

IMPLS = ["cpp", "eager", "reference", "compile"]

FULL = {"B": 2, "K": 19, "C": 256, "h": 128, "w": 256, "H": 512, "W": 1024}
SMOKE = {"B": 2, "K": 19, "C": 32, "h": 16, "w": 32, "H": 64, "W": 128}


def _shapes(smoke: bool) -> dict[str, int]:
    return SMOKE if smoke else FULL


@pytest.mark.parametrize("impl", IMPLS)
def test_dropped_class_prob(run_case: Callable[..., None], smoke: bool, impl: str) -> None:
    s = _shapes(smoke)
    case = {"op": "dropped_class_prob", "impl": impl, "B": s["B"], "K": s["K"], "h": s["h"], "w": s["w"]}
    run_case(case, f"B{s['B']} K{s['K']} {s['h']}x{s['w']}")


@pytest.mark.parametrize("impl", IMPLS)
def test_channel_mask(run_case: Callable[..., None], smoke: bool, impl: str) -> None:
    s = _shapes(smoke)
    case = {"op": "channel_mask", "impl": impl, "B": s["B"], "K": s["K"], "C": s["C"], "h": s["h"], "w": s["w"]}
    run_case(case, f"B{s['B']} C{s['C']} K{s['K']} {s['h']}x{s['w']}")


@pytest.mark.parametrize("impl", IMPLS)
def test_dropclass_loss(run_case: Callable[..., None], smoke: bool, impl: str) -> None:
    s = _shapes(smoke)
    case = {"op": "dropclass_loss", "impl": impl, "progress": 0.5, **{k: s[k] for k in ("B", "K", "h", "w", "H", "W")}}
    run_case(case, f"B{s['B']} K{s['K']} {s['h']}x{s['w']}->{s['H']}x{s['W']}")


@pytest.mark.parametrize("impl", ["cpp", "eager"])
def test_dropclass_step(run_case: Callable[..., None], smoke: bool, impl: str) -> None:
    s = _shapes(smoke)
    case = {"op": "dropclass_step", "impl": impl, "progress": 0.5, **s}
    run_case(case, f"B{s['B']} C{s['C']} K{s['K']} {s['h']}x{s['w']}->{s['H']}x{s['W']}")
