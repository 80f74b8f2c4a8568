"""Shared machinery of the pytest-benchmark suite (``pytest benchmarks/ --benchmark-only``).

Every case is timed with ``benchmark.pedantic`` (2 warm-up rounds, then rounds for about
``DROPCLASS_BENCH_SECONDS`` seconds, 5 to 60) and its peak extra memory measured
(``peak_memory.py``: CPU in a child process, CUDA with ``max_memory_allocated``). What a row needs
for the report goes into ``benchmark.extra_info`` (the case, ``shape``, ``peak_extra_mib``,
``bytes_moved``, ``first_call_s``...), which ``--benchmark-json=FILE`` writes out and
``benchmarks/report.py`` reads. ``settings.py`` lists the environment variables (smoke run, devices,
threads, time per case).
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import cases  # noqa: E402 - after the path set-up above
import peak_memory  # noqa: E402
import settings  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(settings.THREADS)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` here (the project's ``python_files`` is the default ``test_*.py``)."""
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A case that fails or is interrupted (Ctrl-C) is left out of the JSON: pytest-benchmark writes no row
    whose ``has_error`` is set, and it sets that only for an ``Exception`` inside the timed function. A row
    cut short would lack its peak memory, or hold a partial (or no) timing."""
    outcome = yield
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if outcome.excinfo is not None and benchmark is not None:
        benchmark.has_error = True


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    """Interrupts are ignored from the session's end on: one then (``timeout -s INT`` as the last case
    finishes) would stop pytest-benchmark writing the JSON, and the whole run would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """What the report prints about the run: versions, devices, threads, the command."""
    cuda = torch.cuda.is_available()
    machine_info["dropclass_fast"] = {
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "threads": settings.THREADS,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "smoke": settings.SMOKE,
        "devices": list(settings.DEVICES),
        "compile_backend": settings.COMPILE_BACKEND,
        "command": " ".join([Path(sys.executable).name, "-m", "pytest", *sys.argv[1:]]),
    }


@pytest.fixture(scope="session")
def memory_worker() -> Iterator[peak_memory.MemoryWorker]:
    worker = peak_memory.MemoryWorker()
    yield worker
    worker.close()


def _build(case: cases.Case) -> tuple[cases.Runner, float]:
    """The case's runner and the time of its first call (kernel loading, compilation); skips where it cannot run."""
    try:
        runner = cases.build(case)
        start = time.perf_counter()
        runner.run()
        return runner, time.perf_counter() - start
    except Exception as exc:
        if case.get("impl") in ("eager", None):
            raise  # the reference and the training steps must run everywhere
        pytest.skip(f"{case['impl']} failed on {case['device']}: {type(exc).__name__}: {exc}")


def _time(benchmark: Any, runner: cases.Runner) -> None:
    if settings.SMOKE:
        benchmark.pedantic(runner.run, rounds=1, iterations=1)
        return
    start = time.perf_counter()
    runner.run()
    one = max(time.perf_counter() - start, 1e-6)
    rounds = int(min(settings.MAX_ROUNDS, max(settings.MIN_ROUNDS, settings.SECONDS_PER_CASE / one)))
    benchmark.pedantic(runner.run, rounds=rounds, warmup_rounds=settings.WARMUP_ROUNDS, iterations=1)


@pytest.fixture
def run_case(benchmark: Any, memory_worker: peak_memory.MemoryWorker) -> Callable[[cases.Case], None]:
    """``run_case(case)``: skip it with the reason where it cannot run, else time it and measure its peak memory."""

    def run(case: cases.Case) -> None:
        case = {"threads": settings.THREADS, **case}
        if case.get("impl") == "compile":
            case["compile_backend"] = settings.COMPILE_BACKEND
        reason = cases.unavailable(case)
        if reason is not None:
            pytest.skip(reason)
        label = cases.shape_label(case)
        if case["op"] == "train_step":
            benchmark.group = f"train_step {case['device']} {case['precision']} {label}"
        else:
            benchmark.group = f"{case['op']} {case['mode']} {case['device']} {case['dtype']} {label}"
            benchmark.extra_info["bytes_moved"] = cases.bytes_moved(case)
        benchmark.extra_info.update(case)
        benchmark.extra_info["shape_label"] = label

        runner, first_call_s = _build(case)
        benchmark.extra_info["first_call_s"] = round(first_call_s, 3)
        _time(benchmark, runner)
        runner.clear()
        if case["device"] == "cuda":
            benchmark.extra_info["peak_extra_mib"] = round(peak_memory.cuda_peak_extra_mib(runner), 3)
            benchmark.extra_info["peak_method"] = "torch.cuda.max_memory_allocated minus memory_allocated before"
        else:
            del runner  # free the inputs before the child makes its own
            memory = memory_worker.measure(case)
            benchmark.extra_info["peak_extra_mib"] = round(memory["peak_extra_mib"], 3)
            benchmark.extra_info["peak_method"] = "child process: " + memory["method"]

    return run
