"""``compute-sanitizer`` (memcheck, racecheck) on one call of each CUDA kernel, in a child process.

Its own file so that the GPU session can start it first: a sanitizer run takes minutes while the other GPU tests
run beside it (``benchmarks/gpu_session.py``). Where the device is not supported (gVisor machines), it skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import CUDA_TOOL_PLACES, find_cuda_tool

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parents[1]
SANITIZED_CALLS = textwrap.dedent(
    """
    import torch
    from dropclass_fast import _extension

    assert _extension.load(), _extension.error()
    ops = torch.ops.dropclass_fast
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(2, 19, 13, 21, device="cuda", generator=g)
    target = torch.randint(0, 19, (2, 50, 83), device="cuda", generator=g)
    target[:, :4] = 255
    keep = torch.ones(2, 19, device="cuda")
    keep[1, 3] = 0
    features = torch.randn(2, 24, 7, 9, device="cuda", generator=g)
    weight = torch.randn(19, 24, 1, device="cuda", generator=g)
    ops.seg_cross_entropy(logits, target, keep, 255, False, True)
    ops.seg_cross_entropy(logits.half(), target.to(torch.uint8), None, 255, True, False)
    ops.seg_cross_entropy(torch.randn(1, 40, 3, 5, device="cuda"), target[:1].clamp(max=39), None, 255, False, True)
    ops.dropped_class_prob(logits, keep, True)
    ops.dropclass_loss(logits, logits * 0.5, target, keep, 255, False, True)
    ops.dropclass_loss(logits.bfloat16(), logits.bfloat16(), target, keep[0], 255, True, False)
    big = torch.randn(1, 40, 3, 5, device="cuda")
    keep40 = torch.ones(40, device="cuda")
    keep40[3] = 0
    ops.dropclass_loss(big, big, target[:1].clamp(max=39), keep40, 255, False, True)
    ops.channel_mask(features, weight, keep)
    ops.channel_mask_backward(features, features, weight, keep)
    cl = features.contiguous(memory_format=torch.channels_last)
    ops.channel_mask_backward(cl, cl, weight, keep)
    torch.cuda.synchronize()
    """
)


# The summary line of a clean run: racecheck counts hazards, not errors.
SANITIZER_CLEAN = {
    "memcheck": "ERROR SUMMARY: 0 errors",
    "racecheck": "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)",
}


@pytest.mark.parametrize("tool", sorted(SANITIZER_CLEAN))
def test_compute_sanitizer_is_clean(tool, tmp_path):
    sanitizer = find_cuda_tool("compute-sanitizer")
    if sanitizer is None:
        pytest.skip(f"compute-sanitizer not found ({CUDA_TOOL_PLACES})")
    script = tmp_path / "calls.py"
    script.write_text(SANITIZED_CALLS)
    # Without torch's caching allocator every tensor is its own cudaMalloc, whose bounds memcheck knows: a read
    # past a tensor's end inside a cached block would go unseen. The script imports the package from the tree.
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sanitizer, f"--tool={tool}", "--error-exitcode=1", sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    if "not supported" in result.stdout + result.stderr:
        pytest.skip(f"compute-sanitizer {tool} does not support this device: {result.stdout[-500:]}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert SANITIZER_CLEAN[tool] in result.stdout + result.stderr, result.stdout[-4000:]
