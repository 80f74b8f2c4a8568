"""Launch configurations: measured once per shape on the GPU, fixed in deterministic mode and under the interpreter.

Every kernel here is free of floating-point atomics, so a fixed configuration gives bit-identical results run to
run; measuring picks the fastest candidate but a different candidate may round differently, hence
``deterministic=True`` always takes the first (default) candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import triton
from triton.runtime.errors import OutOfResources

from ._common import INTERPRET

Config = TypeVar("Config")

_chosen: dict[Hashable, object] = {}


def pick(key: Hashable, candidates: Sequence[Config], run: Callable[[Config], object], deterministic: bool) -> Config:
    """The candidate to launch with for ``key`` (a kernel name and the shape it depends on).

    ``run(config)`` launches the kernel once (its outputs may be overwritten freely). With several candidates on a
    GPU and ``deterministic`` off, each is timed with ``triton.testing.do_bench`` the first time ``key`` is seen;
    a candidate this GPU cannot launch (more shared memory or registers than it has: ``OutOfResources``) is
    left out, and the error is raised only when no candidate launches.
    """
    if deterministic or INTERPRET or len(candidates) == 1:
        return candidates[0]
    if key not in _chosen:
        times: dict[int, float] = {}
        error: OutOfResources | None = None
        for index, config in enumerate(candidates):
            try:
                times[index] = triton.testing.do_bench(lambda config=config: run(config), warmup=5, rep=20)
            except OutOfResources as exc:
                error = exc
        if not times:
            raise error  # type: ignore[misc]
        _chosen[key] = candidates[min(times, key=times.__getitem__)]
    return _chosen[key]  # type: ignore[return-value]
