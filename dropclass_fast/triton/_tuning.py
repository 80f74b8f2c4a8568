"""Launch configurations: measured once per shape on the GPU, fixed in deterministic mode and under the interpreter.

Every kernel here is free of floating-point atomics, so a fixed configuration gives bit-identical results run to
run; measuring picks the fastest candidate but a different candidate may round differently, hence
``deterministic=True`` takes the first candidate the GPU can launch (the default one, unless it needs more shared
memory or registers than this GPU has).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

import triton
from triton.runtime.errors import OutOfResources

from ._common import INTERPRET

Config = TypeVar("Config")
Result = TypeVar("Result")

_chosen: dict[Hashable, object] = {}


def pick(key: Hashable, candidates: Sequence[Config], run: Callable[[Config], object], deterministic: bool) -> Config:
    """The candidate to launch with for ``key`` (a kernel name and the shape it depends on).

    ``run(config)`` launches the kernel once (its outputs may be overwritten freely). With several candidates on a
    GPU, the first time ``key`` is seen: with ``deterministic`` off each is timed with ``triton.testing.do_bench``
    and the fastest kept; with it on, the first that launches is kept. A candidate this GPU cannot launch (more
    shared memory or registers than it has: ``OutOfResources``) is left out either way, and the error is raised
    only when no candidate launches.
    """
    if INTERPRET or len(candidates) == 1:
        return candidates[0]
    chosen_key = (key, deterministic)
    if chosen_key not in _chosen:
        _chosen[chosen_key] = _first_launching(candidates, run) if deterministic else _fastest(candidates, run)
    return _chosen[chosen_key]  # type: ignore[return-value]


def _first_launching(candidates: Sequence[Config], run: Callable[[Config], object]) -> Config:
    config, _ = next(_launching(candidates, run))
    return config


def _fastest(candidates: Sequence[Config], run: Callable[[Config], object]) -> Config:
    def milliseconds(config: Config) -> float:
        return triton.testing.do_bench(lambda: run(config), warmup=5, rep=20)

    config, _ = min(_launching(candidates, milliseconds), key=lambda launched: launched[1])
    return config


def _launching(
    candidates: Sequence[Config], attempt: Callable[[Config], Result]
) -> Iterator[tuple[Config, Result]]:
    """``(config, attempt(config))`` for each candidate the GPU can launch, in order; the last ``OutOfResources``
    once the candidates are exhausted if none launched."""
    error: OutOfResources | None = None
    launched = False
    for config in candidates:
        try:
            result = attempt(config)
        except OutOfResources as exc:
            error = exc
            continue
        launched = True
        yield config, result
    if not launched:
        raise error  # type: ignore[misc]
