"""Shared machinery of the pytest-benchmark suite.

* ``pytest --benchmark-only benchmarks/``: full shapes, timed with
  ``benchmark.pedantic`` (warm-up, then a fixed number of rounds sized to about
  ``DROPCLASS_BENCH_SECONDS`` seconds per case, default 3), and each case's
  peak extra memory measured in a child process (``peak_memory.py``), stored as
  ``benchmark.extra_info["peak_extra_mib"]``.
* ``pytest benchmarks/ --benchmark-disable``: a smoke run, every case once at a
  small shape; no ``torch.compile`` (about 20 s a case here) unless
  ``DROPCLASS_BENCH_COMPILE=1``; peak memory only for the cases marked for it.

At the end a summary table gives each case's median, its speedup over the
``eager`` backend and its peak-memory ratio to eager; with
``DROPCLASS_BENCH_JSON=path`` it is also written as JSON.
Threads: ``DROPCLASS_BENCH_THREADS`` (default 2, the CPU of the reference runs).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _p in (str(REPO_ROOT), str(BENCH_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import peak_memory  # noqa: E402 - after the path set-up above

THREADS = int(os.environ.get("DROPCLASS_BENCH_THREADS", "2"))
SECONDS_PER_CASE = float(os.environ.get("DROPCLASS_BENCH_SECONDS", "3"))
COMPILE_IN_SMOKE = os.environ.get("DROPCLASS_BENCH_COMPILE") == "1"

# (op, dtype, shape label) -> impl -> {"median_s": ..., "peak_extra_mib": ...}
_SUMMARY: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` here (the project's ``python_files`` is the default ``test_*.py``)."""
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(THREADS)


@pytest.fixture
def smoke(benchmark: Any) -> bool:
    """True under ``--benchmark-disable``: run each case once, at a small shape."""
    return bool(benchmark.disabled)


@pytest.fixture(scope="session")
def cpp_available() -> str | None:
    """``None`` when the C++ kernels load, else the reason they do not."""
    from dropclass_fast import _extension

    return None if _extension.load() else str(_extension.error())


def _median(benchmark: Any) -> float | None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    inner = getattr(stats, "stats", stats)
    return float(inner.median)


@pytest.fixture
def run_case(benchmark: Any, smoke: bool, cpp_available: str | None) -> Callable[..., None]:
    """``run_case(case, shape_label, memory_in_smoke=False)``: time ``case`` and record its peak memory."""

    def run(case: dict[str, Any], shape_label: str, memory_in_smoke: bool = False) -> None:
        case = {"threads": THREADS, **case}
        impl = case["impl"]
        if impl == "cpp" and cpp_available is not None:
            pytest.skip(f"C++ kernels unavailable: {cpp_available}")
        if impl == "compile" and smoke and not COMPILE_IN_SMOKE:
            pytest.skip("torch.compile takes ~20 s a case: not in the smoke run (DROPCLASS_BENCH_COMPILE=1 adds it)")
        benchmark.group = f"{case['op']} {case.get('dtype', 'float32')} {shape_label}"
        benchmark.extra_info.update(case)
        benchmark.extra_info["torch"] = torch.__version__

        try:
            fn = peak_memory.build(case)
            t0 = time.perf_counter()
            fn()  # first call: loads the kernels / compiles; not timed
            first_s = time.perf_counter() - t0
        except Exception as exc:
            if impl == "compile":
                pytest.skip(f"torch.compile of the eager reference failed here: {type(exc).__name__}: {exc}")
            raise
        if impl == "compile":
            benchmark.extra_info["compile_and_first_call_s"] = round(first_s, 2)

        if smoke:
            benchmark.pedantic(fn, rounds=1, iterations=1)
        else:
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-6)
            rounds = int(min(60, max(7, SECONDS_PER_CASE / one)))
            benchmark.pedantic(fn, rounds=rounds, warmup_rounds=2, iterations=1)

        peak = None
        if not smoke or memory_in_smoke:
            mem = peak_memory.measure(case)
            peak = mem["peak_extra_mib"]
            benchmark.extra_info["peak_extra_mib"] = round(peak, 2)
            benchmark.extra_info["peak_method"] = mem["method"]
        key = (case["op"], case.get("dtype", "float32"), shape_label)
        _SUMMARY.setdefault(key, {})[impl] = {"median_s": _median(benchmark), "peak_extra_mib": peak}

    return run


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _SUMMARY:
        return
    rows = []
    for (op, dtype, shape), impls in sorted(_SUMMARY.items()):
        base = impls.get("eager", {})
        for impl, r in sorted(impls.items()):
            med, peak = r["median_s"], r["peak_extra_mib"]
            speedup = base["median_s"] / med if med and base.get("median_s") else None
            ratio = peak / base["peak_extra_mib"] if peak is not None and base.get("peak_extra_mib") else None
            rows.append(
                {
                    "op": op,
                    "dtype": dtype,
                    "shape": shape,
                    "impl": impl,
                    "median_ms": None if med is None else 1e3 * med,
                    "speedup_vs_eager": speedup,
                    "peak_extra_mib": peak,
                    "peak_ratio_vs_eager": ratio,
                }
            )
    tr = terminalreporter
    tr.section("dropclass_fast benchmark summary")
    tr.write_line(f"torch {torch.__version__}, {THREADS} threads, {platform.machine()}")
    head = f"{'op':<20}{'dtype':<10}{'shape':<34}{'impl':<10}"
    head += f"{'median ms':>10}{'x eager':>9}{'peak MiB':>10}{'/eager':>8}"
    tr.write_line(head)
    tr.write_line("-" * len(head))
    for r in rows:
        tr.write_line(
            f"{r['op']:<20}{r['dtype']:<10}{r['shape']:<34}{r['impl']:<10}"
            f"{_fmt(r['median_ms'], '10.2f')}{_fmt(r['speedup_vs_eager'], '9.2f')}"
            f"{_fmt(r['peak_extra_mib'], '10.1f')}{_fmt(r['peak_ratio_vs_eager'], '8.3f')}"
        )
    out = os.environ.get("DROPCLASS_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps({"torch": torch.__version__, "threads": THREADS, "rows": rows}, indent=2))
        tr.write_line(f"summary written to {out}")
