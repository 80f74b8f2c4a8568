"""Peak extra memory of a benchmark case: CPU in a child process, CUDA in process.

CPU (:func:`measure`, :class:`MemoryWorker`): a child interpreter (``sys.executable``) builds the
case (``cases.build``) and reports the peak resident memory above the baseline taken after the inputs
were made and after one warm-up call (so loading the C++ kernels, compiling, creating thread pools is
not counted):

1. make the inputs, run the case once, free what it left (gradients);
2. reset the peak by writing ``5`` to ``/proc/self/clear_refs`` (so ``VmHWM`` restarts at
   the current RSS), then baseline = ``VmRSS``;
3. run the case once more; peak = ``VmHWM``; ``peak_extra = peak - baseline``.

The kernel keeps RSS in per-CPU counters and updates ``VmHWM`` from their approximate sum, so the
two readings can disagree by a few pages: a case that allocates next to nothing can read a few KiB
below zero. A reading below zero by no more than the counters' error bound
(:func:`rss_counter_error_kib`) is reported as 0; one further below raises ``RuntimeError``, since
then the method itself has failed.

If ``clear_refs`` cannot be written, the peak falls back to ``getrusage(RUSAGE_SELF).ru_maxrss``,
which cannot be reset: the child then skips the warm-up (the number includes one-time costs) and says
so in ``method``. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every
large block with ``mmap`` and gives it back on free: otherwise a freed block could stay resident
after the warm-up and be reused unseen. :func:`measure` starts one child per case;
:class:`MemoryWorker` keeps one child for many cases (torch is imported once), which needs the reset.

CUDA (:func:`cuda_peak_extra_mib`): ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the memory allocated before the call, after a warm-up call.

Run by hand::

    python benchmarks/peak_memory.py '{"op": "seg_cross_entropy", "impl": "eager", "B": 2, ...}'
    python benchmarks/peak_memory.py --serve     # one JSON case a line on stdin, one result a line on stdout
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "PEAK_MEMORY_RESULT "
RESET_METHOD = "VmHWM after clear_refs reset, minus VmRSS before the call (warm-up call first)"

Case = dict[str, Any]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def rss_counter_error_kib(cpus: int | None = None, page_kib: int | None = None) -> int:
    """How far the kernel's approximate RSS sum can be off, in KiB: each of ``cpus`` per-CPU counters
    holds back up to one batch of ``max(32, 2 * cpus)`` pages (``percpu_counter_batch``)."""
    cpus = cpus or os.cpu_count() or 1
    page_kib = page_kib or os.sysconf("SC_PAGE_SIZE") // 1024
    return cpus * max(32, 2 * cpus) * page_kib


def peak_extra_kib(peak_kib: int, baseline_kib: int, error_kib: int) -> int:
    """``peak_kib - baseline_kib``, or 0 where it is below zero by at most ``error_kib`` (counter noise).

    Raises ``RuntimeError`` naming both readings when it is further below zero.
    """
    extra = peak_kib - baseline_kib
    if extra < -error_kib:
        raise RuntimeError(
            f"peak RSS {peak_kib} KiB is {-extra} KiB below the baseline {baseline_kib} KiB, more than the "
            f"RSS counters' error bound of {error_kib} KiB: the peak was not measured"
        )
    return max(extra, 0)


def _child(case: Case) -> dict[str, Any]:
    """Measure ``case`` in this process (the child): the protocol of the module docstring."""
    import cases  # beside this file: the child runs it as a script, so its directory is on sys.path

    runner = cases.build(case)  # the inputs are made here and stay alive
    can_reset = _reset_peak()  # probe once; the real reset is below
    if can_reset:
        runner.run()  # warm-up: kernel loading, compilation, thread pools, lazy inits
        runner.clear()
    gc.collect()
    if can_reset:
        _reset_peak()
    # the baseline is read after the reset, where VmHWM restarted: a page freed in between
    # lowers the baseline, not the peak
    rss_before = _status_kib("VmRSS")
    runner.run()
    hwm = _status_kib("VmHWM")
    maxrss_after = _maxrss_kib()
    if can_reset:
        peak_kib, method = hwm, RESET_METHOD
    else:
        peak_kib = max(maxrss_after, hwm)
        method = "ru_maxrss minus VmRSS before the call (no peak reset possible; no warm-up)"
    return {
        "peak_extra_mib": peak_extra_kib(peak_kib, rss_before, rss_counter_error_kib()) / 1024.0,
        "baseline_rss_mib": rss_before / 1024.0,
        "method": method,
    }


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def measure(case: Case, timeout: float = 600.0) -> dict[str, Any]:
    """Run ``case`` in a fresh child interpreter; its ``peak_extra_mib`` and how it was measured (``method``).

    Raises ``RuntimeError`` with the child's stderr when the child fails.
    """
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(case)],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child failed for {case}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class MemoryWorker:
    """One child interpreter measuring cases one after another (``measure`` per case, ``close`` at the end).

    Each case is built, measured and freed before the next; a case that fails in the child raises
    ``RuntimeError`` here (with the child's traceback) and the worker carries on. Where the peak
    cannot be reset (no writable ``clear_refs``), every case gets a fresh child (:func:`measure`).
    """

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._fresh_child_per_case = not os.access("/proc/self/clear_refs", os.W_OK)

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                env=_child_env(),
            )
        return self._proc

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def measure(self, case: Case) -> dict[str, Any]:
        """``peak_extra_mib`` and ``method`` of ``case``, measured in the worker child."""
        if self._fresh_child_per_case:
            return measure(case, self.timeout)
        proc = self._start()
        proc.stdin.write(json.dumps(case) + "\n")
        proc.stdin.flush()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline() if ready else ""
            if not line:
                self.close()
                raise RuntimeError(f"peak-memory worker died or timed out on {case}:\n{self._stderr_tail()}")
            if line.startswith(RESULT_PREFIX):
                break
        result = json.loads(line[len(RESULT_PREFIX) :])
        if "error" in result:
            raise RuntimeError(f"peak-memory worker failed on {case}:\n{result['error']}")
        if result["method"] != RESET_METHOD:  # the child could not reset its peak: one fresh child per case
            self._fresh_child_per_case = True
            self.close()
            return measure(case, self.timeout)
        return result

    def close(self) -> None:
        """End the child (it is started again by the next ``measure``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def cuda_peak_extra_mib(runner: Any) -> float:
    """Peak CUDA memory of one ``runner.run()`` above what was allocated before it, in MiB (after a warm-up)."""
    import torch

    runner.run()
    runner.clear()
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _serve() -> int:
    for line in sys.stdin:
        try:
            result = _child(json.loads(line))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            result = {"error": traceback.format_exc()}
        gc.collect()
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        return _serve()
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(_child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
