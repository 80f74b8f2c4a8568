"""Measured copy bandwidth of each device: the denominator of the ops' bandwidth floor.

One ``dst.copy_(src)`` of a 1 GiB (CUDA) or 256 MiB (CPU) uint8 buffer; ``bytes_moved`` counts the
read and the write (2x the size), so ``bytes_moved / time`` is the achieved copy bandwidth. An op's
floor is ``cases.bytes_moved(case) / copy bandwidth``.

Run: ``pytest --benchmark-only benchmarks/bench_bandwidth.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import settings
import torch

SIZE_MIB = {"cpu": 256, "cuda": 1024}
SMOKE_SIZE_MIB = 4


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_copy_bandwidth(benchmark: Any, device: str) -> None:
    if device not in settings.DEVICES:
        pytest.skip(f"device {device!r} not selected (DROPCLASS_BENCH_DEVICES)")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device in this run")
    size = (SMOKE_SIZE_MIB if settings.SMOKE else SIZE_MIB[device]) * 2**20
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def copy() -> None:
        dst.copy_(src)
        synchronize()

    copy()
    benchmark.group = f"copy bandwidth {device}"
    benchmark.extra_info.update(
        {"kind": "copy", "device": device, "threads": settings.THREADS, "bytes_moved": 2 * size}
    )
    rounds = 1 if settings.SMOKE else 20
    benchmark.pedantic(copy, rounds=rounds, warmup_rounds=0 if settings.SMOKE else 2, iterations=1)
    assert bool(dst[-1] == 1)
