"""benchmarks/gpu_session.py, the one-command job of a lent GPU machine, checked on the CPU.

The stage selections pick exactly the benchmark rows each stage is for (collected, not run); a stage
over its time is interrupted and keeps its exit status, one that ignores the interrupt is killed; a
run's JSON gets the commit a tree without ``.git`` cannot record; and a smoke session end to end
writes what the device tool can bring back (at most 8 files, plain names) and what the report reads.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import cases  # noqa: E402 - benchmarks/ is not a package
import gpu_session  # noqa: E402
import results  # noqa: E402

GPU_IMPLS = (*cases.GPU_BACKENDS, "eager", "compile")
# The device tool brings back at most 8 files from $OUT, each named in letters, digits, '.', '_' and '-'.
MAX_FILES = 8
PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _op_ids(device: str, shape: str, dtypes, modes, ops, impls) -> set[str]:
    return {
        f"bench_ops.py::test_op[{device}-{shape}-{dtype}-{mode}-{op}-{impl}]"
        for dtype, mode, op, impl in itertools.product(dtypes, modes, ops, impls)
    }


def _collecting(expression: str) -> subprocess.Popen:
    """A pytest that lists the benchmark ids ``-k expression`` selects (collects them, runs nothing)."""
    command = [sys.executable, "-m", "pytest", str(BENCH_DIR), "--benchmark-only", "--collect-only", "-q",
               "-p", "no:cacheprovider", "-k", expression]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ids(proc: subprocess.Popen) -> set[str]:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-2000:]
    return {line.split("/", 1)[1] for line in output.splitlines() if line.startswith("benchmarks/")}


@pytest.fixture(scope="module")
def gpu_selections() -> dict[str, set[str]]:
    """The benchmark ids of each benchmark stage on a GPU (the four collections run side by side)."""
    procs = {
        stage: _collecting(gpu_session.benchmark_selection(stage, "cuda", "cityscapes", "bf16-autocast"))
        for stage in ("targets", "step", "ops", "voc")
    }
    return {stage: _ids(proc) for stage, proc in procs.items()}


def test_targets_stage_selects_the_rows_the_kernel_targets_are_judged_on(gpu_selections) -> None:
    expected = _op_ids("cuda", "cityscapes", cases.DTYPES, ["fwd+bwd"], ["dropclass_loss"], GPU_IMPLS)
    assert gpu_selections["targets"] == expected | {"bench_bandwidth.py::test_copy_bandwidth[cuda]"}


def test_step_stage_selects_the_bf16_steps_the_step_targets_need(gpu_selections) -> None:
    variants = ("baseline", "official", "dropclass_fast")
    expected = {f"bench_train_step.py::test_train_step[cuda-cityscapes-bf16-autocast-{v}]" for v in variants}
    expected.add("bench_train_step.py::test_train_step_interleaved[cuda-cityscapes-bf16-autocast]")
    assert gpu_selections["step"] == expected


def test_ops_and_voc_stages_cover_every_other_gpu_op_row(gpu_selections) -> None:
    every_cityscapes_row = _op_ids("cuda", "cityscapes", cases.DTYPES, cases.MODES, cases.OPS, GPU_IMPLS)
    assert gpu_selections["ops"] == every_cityscapes_row - gpu_selections["targets"]
    assert gpu_selections["voc"] == _op_ids("cuda", "voc", cases.DTYPES, cases.MODES, cases.OPS, GPU_IMPLS)


def test_unknown_stage_is_named() -> None:
    with pytest.raises(ValueError, match="got warmup"):
        gpu_session.plan(["targets", "warmup"], Path("/tmp"), Path("/tmp"), smoke=True, cuda_arch=None)
    with pytest.raises(ValueError, match="got 'tests'"):
        gpu_session.benchmark_selection("tests", "cuda", "cityscapes", "bf16-autocast")


def test_every_stage_compiles_for_the_device_architecture_only(tmp_path: Path) -> None:
    """The build stage, and a JIT build in any later stage (where the build failed), target the device alone."""
    stages = gpu_session.plan(gpu_session.STAGE_NAMES, tmp_path, tmp_path, smoke=False, cuda_arch="9.0")
    assert [stage.name for stage in stages] == list(gpu_session.STAGE_NAMES)
    build = stages[0]
    assert build.command[1:] == ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
    assert int(build.env["MAX_JOBS"]) >= 1
    assert all(stage.env["TORCH_CUDA_ARCH_LIST"] == "9.0" for stage in stages)
    assert all(stage.env["DROPCLASS_BENCH_DEVICES"] == "cuda" for stage in stages if stage.benchmark_json)


def test_main_refuses_a_bad_stage_and_budget(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_session.main(["--out", str(tmp_path), "--stages", "targets,bogus"])
    assert exit_info.value.code == 2 and "got bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        gpu_session.main(["--out", str(tmp_path), "--budget", "-5"])
    assert exit_info.value.code == 2 and "--budget must be positive, got -5.0" in capsys.readouterr().err


# A stand-in for pytest: prints, then waits; SIGINT makes it write a marker and exit 3 (as pytest keeps what
# finished), unless told to ignore SIGINT.
SLOW_STAGE = """
import signal, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("started", flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(sys.argv[1], "w").write("interrupted")
    sys.exit(3)
"""


def test_a_stage_over_its_cap_is_interrupted_and_keeps_its_status(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    stage = gpu_session.Stage("slow", [sys.executable, "-c", SLOW_STAGE, str(marker), "catch"], cap_s=2.0)
    log = gpu_session.Log(tmp_path / "session.log")
    start = time.monotonic()
    outcome = gpu_session.run_stage(stage, time.monotonic() + 100, log)
    log.close()
    assert outcome.cut_short and outcome.status == 3 and marker.read_text() == "interrupted"
    assert 2.0 <= time.monotonic() - start < 30
    assert "started" in (tmp_path / "session.log").read_text()


def test_the_session_deadline_cuts_a_stage_before_its_cap(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    stage = gpu_session.Stage("slow", [sys.executable, "-c", SLOW_STAGE, str(marker), "catch"], cap_s=50.0)
    log = gpu_session.Log(tmp_path / "session.log")
    outcome = gpu_session.run_stage(stage, time.monotonic() + 2, log)
    log.close()
    assert outcome.cut_short and outcome.seconds < 30 and marker.is_file()


def test_a_stage_ignoring_the_interrupt_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_session, "STOP_GRACE_S", 1.0)
    marker = tmp_path / "marker"
    stage = gpu_session.Stage("stuck", [sys.executable, "-c", SLOW_STAGE, str(marker), "ignore"], cap_s=2.0)
    log = gpu_session.Log(tmp_path / "session.log")
    outcome = gpu_session.run_stage(stage, time.monotonic() + 100, log)
    log.close()
    assert outcome.cut_short and outcome.status == -9 and not marker.exists()
    assert "killed" in (tmp_path / "session.log").read_text()


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_what_a_stage_leaves_running_is_killed_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    leaves_a_child = (
        "import subprocess, sys; child = subprocess.Popen(['sleep', '60']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))"
    )
    stage = gpu_session.Stage("leaves", [sys.executable, "-c", leaves_a_child], cap_s=30.0)
    log = gpu_session.Log(tmp_path / "session.log")
    outcome = gpu_session.run_stage(stage, time.monotonic() + 100, log)
    log.close()
    assert outcome.status == 0 and not outcome.cut_short
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def test_benchmark_json_gets_the_commit_a_tree_without_git_lacks(tmp_path: Path) -> None:
    source, target = tmp_path / "run.json", tmp_path / "kept.json"
    started = time.time() - 5
    source.write_text(json.dumps({"commit_info": {"error": "no git"}, "benchmarks": [{"name": "a"}, {"name": "b"}]}))
    assert gpu_session.keep_benchmark_json(source, target, "0123abc", started) == "2 benchmark rows in kept.json"
    assert json.loads(target.read_text())["commit_info"]["id"] == "0123abc"
    source.write_text(json.dumps({"commit_info": {"id": "fedcba9", "dirty": True}, "benchmarks": []}))
    gpu_session.keep_benchmark_json(source, target, "0123abc", started)
    assert json.loads(target.read_text())["commit_info"] == {"id": "fedcba9", "dirty": True}


def test_a_missing_or_stale_benchmark_json_is_not_kept(tmp_path: Path) -> None:
    source, target = tmp_path / "run.json", tmp_path / "kept.json"
    assert gpu_session.keep_benchmark_json(source, target, None, time.time()).startswith("no benchmark JSON")
    source.write_text(json.dumps({"benchmarks": [{"name": "old"}]}))
    assert gpu_session.keep_benchmark_json(source, target, None, time.time() + 60).startswith("no benchmark JSON")
    assert not target.exists()


def test_smoke_session_writes_what_the_device_tool_brings_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(BENCH_DIR / "gpu_session.py"), "--out", str(out), "--smoke",
               "--stages", "targets", "--budget", "400", "--commit", "0123abc"]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["session.log", "targets.json"]
    assert len(files) <= MAX_FILES and all(PLAIN_NAME.fullmatch(name) for name in files)
    rows = results.load([out / "targets.json"])
    loss_rows = rows.select("op", op="dropclass_loss", mode="fwd+bwd", device="cpu", shape="smoke")
    assert {(r["impl"], r["dtype"]) for r in loss_rows} >= set(itertools.product(("eager", "compile"), cases.DTYPES))
    assert len(rows.select("copy", device="cpu")) == 1
    log = (out / "session.log").read_text()
    assert "=== commit 0123abc" in log and re.search(r"targets +exit 0, \d+ s; \d+ benchmark rows", log)


def _collected(command: list[str]) -> list[str]:
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("tests/")]


def test_tests_stage_runs_every_gpu_test_file_the_sanitizer_first(tmp_path: Path) -> None:
    """Every file with GPU-marked tests is in the stage, in its order (the minutes-long sanitizer, then the
    full-size checks); the compile-only check it leaves to the CPU suite is a test that exists."""
    others = (path for path in (REPO_ROOT / "tests").glob("test_*.py") if path.name != Path(__file__).name)
    marked = {f"tests/{path.name}" for path in others if "pytest.mark.gpu" in path.read_text()}
    assert set(gpu_session.GPU_TEST_FILES) == marked
    (stage,) = gpu_session.plan(["tests"], tmp_path, tmp_path, smoke=False, cuda_arch="9.0")
    ids = _collected([*stage.command, "--collect-only"])
    files = list(dict.fromkeys(test_id.split("::")[0] for test_id in ids))
    assert files[:2] == ["tests/test_cuda_sanitizer.py", "tests/test_triton_gpu.py"], files
    for test_id in gpu_session.CPU_CHECKED:
        assert len(_collected([sys.executable, "-m", "pytest", "--collect-only", "-q", test_id])) == 1, test_id
        assert not any(collected.startswith(test_id) for collected in ids), test_id
