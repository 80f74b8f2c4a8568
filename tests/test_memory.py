"""Memory bounds: the fused loss never materialises the full-resolution logits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PEAK_MEMORY = Path(__file__).resolve().parents[1] / "benchmarks" / "peak_memory.py"


def _peak_memory_module():
    spec = importlib.util.spec_from_file_location("peak_memory", PEAK_MEMORY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("keep", [False, True])
def test_fused_seg_cross_entropy_peak_memory_is_an_eighth_of_eager(cpp_backend, keep):
    """B=2, K=19, 64x128 -> 256x512: eager holds several B*K*H*W float32 tensors (~20 MiB each)."""
    measure = _peak_memory_module().measure
    case = {"op": "seg_cross_entropy", "B": 2, "K": 19, "h": 64, "w": 128, "H": 256, "W": 512, "keep": keep}
    fused = measure({**case, "impl": "cpp"})["peak_extra_mib"]
    eager = measure({**case, "impl": "eager"})["peak_extra_mib"]
    full_resolution_mib = 2 * 19 * 256 * 512 * 4 / 2**20
    assert eager > 2 * full_resolution_mib, (eager, fused)
    assert fused <= eager / 8, (eager, fused)
    assert fused < full_resolution_mib / 2, (eager, fused)


def test_fused_dropclass_loss_holds_only_its_gradients(cpp_backend):
    """``dropclass_loss`` fwd+bwd (B=2, K=19, 64x128 -> 256x512): at its peak it holds the three gradients it saves
    (of CE, CE_drop and L_sup) and the two input gradients it writes, each the size of the float32 logits, and
    nothing of full resolution; no zero tensors for the gradients of its gradient outputs."""
    measure = _peak_memory_module().measure
    case = {"op": "dropclass_loss", "B": 2, "K": 19, "h": 64, "w": 128, "H": 256, "W": 512, "keep": True}
    fused = measure({**case, "impl": "cpp"})["peak_extra_mib"]
    logits_mib = 2 * 19 * 64 * 128 * 4 / 2**20
    assert fused <= 5.5 * logits_mib, (fused, logits_mib)


def test_peak_extra_reads_counter_noise_below_zero_as_zero_and_refuses_more():
    peak_memory = _peak_memory_module()
    assert peak_memory.peak_extra_kib(1100, 1000, error_kib=256) == 100
    assert peak_memory.peak_extra_kib(996, 1000, error_kib=256) == 0
    assert peak_memory.peak_extra_kib(744, 1000, error_kib=256) == 0
    with pytest.raises(RuntimeError, match="743 KiB is 257 KiB below the baseline 1000 KiB"):
        peak_memory.peak_extra_kib(743, 1000, error_kib=256)


def test_rss_counter_error_bound_is_one_batch_of_pages_per_cpu():
    error_kib = _peak_memory_module().rss_counter_error_kib
    assert error_kib(cpus=2, page_kib=4) == 2 * 32 * 4
    assert error_kib(cpus=64, page_kib=4) == 64 * 128 * 4
