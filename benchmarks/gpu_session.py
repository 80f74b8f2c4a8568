"""A lent GPU machine's whole job in one command: build, the GPU benchmarks the targets are judged on, the GPU tests.

A session that is lent a GPU machine gets about 15 minutes of device time in all (the machine's start
included), one command of at most 10 minutes, and at most 8 files back from ``$OUT``. This script
does the GPU work of the open issues in one such command, the most needed first, every stage cut
short at its time cap or at the session's deadline, whichever comes first. A stage cut short is sent
SIGINT: pytest stops at the running case and keeps what finished (a benchmark JSON of the finished
cases, the test results so far); the next stage then starts.

Stages (``--stages`` picks some, in this order):

``build``
    ``pip install --no-deps --no-build-isolation -e .`` for the device's architecture only
    (``TORCH_CUDA_ARCH_LIST``, set for every stage, so that a JIT build where this one failed is quick too),
    with a compile job per CPU.
``targets``
    copy bandwidth and ``dropclass_loss`` forward+backward at the Cityscapes shape, every GPU
    backend, eager and ``torch.compile``, float32 and bfloat16: the kernel targets of the Triton and
    CUDA issues.
``step``
    the HRNet-W18-small-v2 training step under bf16 autocast, baseline, official-style and
    ``dropclass_fast``, alone and interleaved: the training-step targets.
``tests``
    ``pytest -m gpu`` over :data:`GPU_TEST_FILES`, the most needed first: ``compute-sanitizer``
    (minutes, beside the rest), both GPU backends at full size, bit-identity, the odd shapes;
    on several pytest-xdist workers where pytest-xdist is installed, the tests past 2**31
    elements (about 18 GiB each) on one of them. The check that the Triton kernels compile for
    sm_80 and sm_90 needs no GPU and is left to the CPU suite.
``ops``
    the other ops and modes at the Cityscapes shape (``benchmarks/backend_table.py``'s rows), one
    second of timing a case.
``voc``
    every op at the VOC shape, one second of timing a case.

Files written to ``--out``: ``session.log`` (every stage's command, output, exit status and time),
``tests.xml`` (JUnit XML of the tests stage) and ``<stage>.json`` (pytest-benchmark JSON) of each
benchmark stage that finished a case. A copy of the working tree without ``.git`` records no commit:
``--commit`` (default: ``git rev-parse HEAD`` where that works) is then written into each JSON's
``commit_info``. On the development machine, ``make gpu-session-report GPU_SESSION=<folder>`` merges
the JSON files into ``benchmarks/RESULTS.md`` and ``dropclass_fast/backend_table.json``.

Usage on the GPU machine, from the repository root (``--budget`` leaves the command's limit a margin)::

    python3 benchmarks/gpu_session.py --out "$OUT" --budget 530 --commit 0123abc

``--smoke`` runs the same stages at the benchmark suite's smoke shape on the CPU (no build, no GPU):
the check that the script itself works, which ``tests/test_gpu_session.py`` makes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STAGE_NAMES = ("build", "targets", "step", "tests", "ops", "voc")
#: The default stages of ``--smoke``: the benchmark stages that have cases at the smoke shape.
SMOKE_STAGES = ("targets", "step", "ops")
#: Seconds a stage cut short may take to stop after SIGINT (a case's cleanup, pytest-benchmark's JSON)
#: before its process group is killed.
STOP_GRACE_S = 45.0
#: A stage is not started with less time than this left before the session's deadline.
MIN_STAGE_S = 20.0
#: The files holding GPU tests, in the order the tests stage runs them (pytest keeps the order of its arguments).
GPU_TEST_FILES = (
    "tests/test_cuda_sanitizer.py",
    "tests/test_triton_gpu.py",
    "tests/test_cuda_ops.py",
    "tests/test_bounds.py",
    "tests/test_triton.py",
    "tests/test_backend.py",
)
#: GPU-marked tests the tests stage leaves out: compile-only checks the CPU suite makes.
CPU_CHECKED = ("tests/test_triton.py::test_kernels_compile_for_sm80_and_sm90",)
#: pytest-xdist workers of the tests stage (the machine has 16 CPUs, for Triton's compiles, and 80 GiB or more).
TEST_WORKERS = 6


@dataclass(frozen=True)
class Stage:
    """One step of the session: a command run from the repository root, for at most ``cap_s`` seconds."""

    name: str
    command: list[str]
    cap_s: float
    env: dict[str, str] = field(default_factory=dict)
    #: pytest-benchmark JSON the command writes (copied to the output folder as ``<name>.json``).
    benchmark_json: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """How a stage ended: its exit status (None when it was not started) and what it cost."""

    name: str
    status: int | None
    seconds: float
    cut_short: bool
    note: str = ""


def benchmark_selection(stage: str, device: str, shape: str, precision: str) -> str:
    """The pytest ``-k`` expression of a benchmark stage on ``device`` at op shape ``shape`` (training-step
    precision ``precision``); the ``cpp`` rows are left out (the C++ kernels run on CPU tensors only)."""
    loss = f"{device} and {shape} and dropclass_loss and fwd+bwd and not cpp"
    if stage == "targets":
        return f"copy_bandwidth[{device}] or ({loss})"
    if stage == "step":
        return f"train_step and {device} and {shape} and {precision} and not baseline_fused"
    if stage == "ops":
        return f"test_op and {device} and {shape} and not cpp and not (dropclass_loss and fwd+bwd)"
    if stage == "voc":
        return f"test_op and {device} and voc and not cpp"
    raise ValueError(f"stage must be one of 'targets', 'step', 'ops', 'voc', got {stage!r}")


def _cuda_arch() -> str | None:
    """The device's compute capability as ``TORCH_CUDA_ARCH_LIST`` writes it (``"9.0"``), None without CUDA. Asked
    in a child process: a CUDA context in this one would hold GPU memory through every stage."""
    ask = "import torch; print('%d.%d' % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else '')"
    result = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or None


def check_stage_names(names: Sequence[str]) -> None:
    """ValueError naming the entries of ``names`` that are not in :data:`STAGE_NAMES`."""
    unknown = sorted(set(names) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"stages must be among {', '.join(STAGE_NAMES)}; got {', '.join(unknown)}")


def plan(names: Sequence[str], scratch: Path, out: Path, smoke: bool, cuda_arch: str | None) -> list[Stage]:
    """The stages ``names`` (in :data:`STAGE_NAMES` order) with their commands; ``smoke`` runs the benchmarks on
    the CPU at the smoke shape (``DROPCLASS_BENCH_SMOKE=1``, one thread) instead of the GPU at the paper's."""
    check_stage_names(names)
    python = sys.executable
    device, shape, precision = ("cpu", "smoke", "float32") if smoke else ("cuda", "cityscapes", "bf16-autocast")
    # Every stage: a JIT build of the extension (where the build stage failed or did not run) compiles for this
    # device only too.
    common_env = {} if cuda_arch is None else {"TORCH_CUDA_ARCH_LIST": cuda_arch}
    bench_env = {**common_env, "DROPCLASS_BENCH_DEVICES": device}
    if smoke:
        bench_env.update(DROPCLASS_BENCH_SMOKE="1", DROPCLASS_BENCH_THREADS="1")
    caps = {"build": 200.0, "targets": 240.0, "step": 100.0, "tests": 180.0, "ops": 150.0, "voc": 120.0}
    stages = []
    for name in (n for n in STAGE_NAMES if n in names):
        if name == "build":
            command = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
            stages.append(Stage(name, command, caps[name], {**common_env, "MAX_JOBS": str(os.cpu_count() or 1)}))
        elif name == "tests":
            command = [python, "-m", "pytest", *GPU_TEST_FILES, "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider",
                       f"--junitxml={out / 'tests.xml'}"]  # fmt: skip
            command += [f"--deselect={test}" for test in CPU_CHECKED]
            if not smoke and importlib.util.find_spec("xdist") is not None:  # pytest-xdist
                command += ["-n", str(TEST_WORKERS), "--dist", "loadgroup"]
            stages.append(Stage(name, command, caps[name], dict(common_env)))
        else:
            json_path = scratch / f"{name}.json"
            selection = benchmark_selection(name, device, shape, precision)
            command = [python, "-m", "pytest", str(BENCH_DIR), "--benchmark-only", f"--benchmark-json={json_path}",
                       "-q", "-p", "no:cacheprovider", "-k", selection]  # fmt: skip
            env = dict(bench_env)
            if name in ("ops", "voc") and not smoke:
                env["DROPCLASS_BENCH_SECONDS"] = "1"
            stages.append(Stage(name, command, caps[name], env, json_path))
    return stages


class Log:
    """Writes to standard output and to ``session.log`` together (the device tool returns only the output's end)."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def run_stage(stage: Stage, deadline: float, log: Log) -> Outcome:
    """Runs ``stage`` until it ends, its cap passes or ``deadline`` (``time.monotonic()``) comes; in the last two
    cases it is sent SIGINT, then killed with its process group if it has not stopped :data:`STOP_GRACE_S` later."""
    start = time.monotonic()
    stop_at = min(start + stage.cap_s, deadline)
    log.write(f"\n=== {stage.name}: {' '.join(stage.command)}\n")
    if stage.env:
        log.write(f"=== env: {' '.join(f'{k}={v}' for k, v in sorted(stage.env.items()))}\n")
    log.write(f"=== at most {stop_at - start:.0f} s\n")
    proc = subprocess.Popen(
        stage.command, cwd=REPO_ROOT, env={**os.environ, **stage.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    pump = threading.Thread(target=lambda: [log.write(line) for line in proc.stdout], daemon=True)
    pump.start()
    cut_short = False
    try:
        status = proc.wait(timeout=max(stop_at - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        cut_short = True
        log.write(f"\n=== {stage.name}: time is up, SIGINT (the finished cases are kept)\n")
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.write(f"=== {stage.name}: still running {STOP_GRACE_S:.0f} s after SIGINT, killed\n")
            _kill_group(proc.pid)
            status = proc.wait()
    _kill_group(proc.pid)  # what the stage left running (compile workers, say) must not load the next stage's GPU
    pump.join(timeout=10)
    return Outcome(stage.name, status, time.monotonic() - start, cut_short)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing of the group is left


def keep_benchmark_json(source: Path, target: Path, commit: str | None, started: float) -> str:
    """Copies a stage's pytest-benchmark JSON to ``target``, filling in ``commit`` where the run recorded none;
    returns what was kept (or why nothing was: no JSON, or one older than the stage, which ``started`` gives as a
    ``time.time()``)."""
    if not source.is_file() or source.stat().st_mtime < started:
        return "no benchmark JSON (no case finished)"
    data = json.loads(source.read_text())
    info = data.get("commit_info") or {}
    if commit and not info.get("id"):
        data["commit_info"] = {**info, "id": commit, "dirty": False, "filled_in_by": "gpu_session.py --commit"}
    target.write_text(json.dumps(data, indent=1))
    return f"{len(data.get('benchmarks', []))} benchmark rows in {target.name}"


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _machine_facts(log: Log, smoke: bool) -> None:
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    if not smoke and shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"]
        result = subprocess.run(query, capture_output=True, text=True, timeout=30)
        log.write(f"=== nvidia-smi: {result.stdout.strip() or result.stderr.strip()}\n")
    versions = "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)\n"
    versions += "try:\n import triton; print('triton', triton.__version__)\nexcept ImportError: print('no triton')"
    result = subprocess.run([sys.executable, "-c", versions], capture_output=True, text=True, timeout=120)
    log.write(f"=== {' '.join(result.stdout.split())}\n")


def run_session(
    names: Sequence[str], out: Path, budget_s: float, smoke: bool = False, commit: str | None = None
) -> list[Outcome]:
    """Runs the stages ``names`` within ``budget_s`` seconds, writing into ``out``; returns how each ended."""
    deadline = time.monotonic() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "session.log")
    outcomes = []
    try:
        _machine_facts(log, smoke)
        commit = commit or _git_commit()
        log.write(f"=== commit {commit or 'unknown'}; budget {budget_s:.0f} s; stages {', '.join(names)}\n")
        with tempfile.TemporaryDirectory(prefix="gpu-session-") as scratch:
            cuda_arch = None if smoke else _cuda_arch()
            for stage in plan(names, Path(scratch), out, smoke, cuda_arch):
                left = deadline - time.monotonic()
                if left < MIN_STAGE_S:
                    outcomes.append(Outcome(stage.name, None, 0.0, False, f"not started: {left:.0f} s left"))
                    continue
                started = time.time()
                outcome = run_stage(stage, deadline, log)
                if stage.benchmark_json is not None:
                    kept = keep_benchmark_json(stage.benchmark_json, out / f"{stage.name}.json", commit, started)
                    outcome = dataclasses.replace(outcome, note=kept)
                outcomes.append(outcome)
        log.write("\n=== summary\n")
        for o in outcomes:
            status = "not run" if o.status is None else f"exit {o.status}"
            cut = ", cut short" if o.cut_short else ""
            log.write(f"{o.name:8s} {status}{cut}, {o.seconds:.0f} s{'; ' + o.note if o.note else ''}\n")
    finally:
        log.close()
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for session.log, tests.xml and <stage>.json")
    parser.add_argument("--budget", type=float, default=530.0, help="seconds for all stages together (default 530)")
    stages_help = f"comma-separated, of {', '.join(STAGE_NAMES)} (default: all; --smoke: {', '.join(SMOKE_STAGES)})"
    parser.add_argument("--stages", help=stages_help)
    parser.add_argument("--commit", help="the commit the tree is at (default: git rev-parse HEAD where git works)")
    parser.add_argument("--smoke", action="store_true", help="on the CPU at the smoke shape: a check of the script")
    args = parser.parse_args(argv)
    if args.stages is None:
        names = list(SMOKE_STAGES if args.smoke else STAGE_NAMES)
    else:
        names = [name.strip() for name in args.stages.split(",") if name.strip()]
    try:
        check_stage_names(names)
    except ValueError as exc:
        parser.error(str(exc))
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    outcomes = run_session(names, args.out, args.budget, args.smoke, args.commit)
    return 0 if all(o.status == 0 and not o.cut_short for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
