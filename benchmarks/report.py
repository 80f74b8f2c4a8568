"""Run the benchmark suite (or read its JSON) and write ``RESULTS.md`` with tables and PNG plots.

Usage (from the repository root)::

    python benchmarks/report.py                                  # run the whole suite, then write the report
    python benchmarks/report.py --json cpu.json --json gpu.json  # report on runs already made
    python benchmarks/report.py --output-dir /tmp/report -- -k "not train_step"   # pytest arguments after --

Running the suite writes its pytest-benchmark JSON to ``<output-dir>/results.json`` (the report's
input, kept beside it). An interrupt (Ctrl-C, ``timeout -s INT``) stops the suite at the running case
and the report covers the cases that finished; a second interrupt aborts without a report. The report
(``<output-dir>/RESULTS.md``, default ``benchmarks/``) has: the runs (device, date, torch/triton
versions, command), the targets with met / not met / not measured, the op tables (time, speedup over
eager and ``torch.compile``, peak memory; achieved bandwidth against the bytes each op must move and
the measured copy bandwidth), the interleaved fused-versus-eager timing, the training steps, and
``speedup.png`` and ``train_step.png``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import plots
import results as results_module
import targets as targets_module
from results import Results, Row, formatted, on_device, ratio

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
IMPL_ORDER = ("eager", "cpp", "triton", "cuda", "compile")
NOT_MEASURED_GPU = (
    "GPU rows (Cityscapes B=12 and VOC B=16 shapes, Triton/CUDA backends, achieved bandwidth, the GPU "
    "training step): **not measured** (no CUDA device in these runs)."
)
METHOD = """\
## How things are measured

* **time**: `benchmark.pedantic` (pytest-benchmark), 2 warm-up rounds, then 5-60 rounds (about
  `DROPCLASS_BENCH_SECONDS`=3 s a case); the median (min in brackets). `fwd` runs under
  `torch.no_grad()`; `fwd+bwd` also computes the gradient of every floating input. `eager` is
  `dcf.<op>` under `set_backend("eager")` (the input checks, then `dropclass_fast.reference`), the
  baseline of every ratio; `compile` is `torch.compile(dropclass_fast.reference.<op>)`, Inductor.
  CUDA calls end with `torch.cuda.synchronize()`.
* **peak extra memory**: CPU: a child process builds the case, runs it once (warm-up), takes VmRSS,
  resets the peak (`5` to `/proc/self/clear_refs`), runs it again and reads VmHWM (glibc told to
  return every block over 64 KiB to the OS). CUDA: `torch.cuda.max_memory_allocated()` after
  `reset_peak_memory_stats()`, minus what was allocated before the call. Input gradients count.
* **bandwidth**: the bytes an op must move (every input read once, every output and input gradient
  written once; labels int64) over its median time, against the measured device-to-device copy
  bandwidth (`bench_bandwidth.py`: read + write of a 1 GiB (CUDA) or 256 MiB (CPU) buffer).
  `x floor` = time / (bytes / copy bandwidth).
* **training step**: HRNet-W18-small-v2 forward, loss, backward and SGD step (momentum 0.9), class 3
  dropped at progress 0.5 every step. `baseline`: no DropClass, `F.interpolate` + cross-entropy
  (`dcf.seg_cross_entropy` under `"eager"`); `baseline_fused`: the same with the fused loss;
  `official`: DropClass written as the official code (`benchmarks/official_dropclass.py`);
  `dropclass_fast`: `build_model(..., dropclass=True)` + `DropClassLoss` (backend `"auto"`).
* **noise**: on a shared machine the same case's median can move by 2x between runs minutes apart;
  the interleaved timings (the implementations, or the training-step variants, timed back to back in
  every round, the order alternating) give the robust ratios, and the targets are judged on them.
"""


def _wait_finishing_on_interrupt(proc: subprocess.Popen) -> int:
    """``proc``'s exit status. A first interrupt asks it (SIGINT, to pytest alone: its helper processes, such
    as the peak-memory worker, must not die under the case that is running) to stop after writing what it
    has; a second one kills its process group and raises."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("interrupted: stopping the suite; the report will cover the cases that finished (interrupt again to "
              "abort)", file=sys.stderr, flush=True)  # fmt: skip
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def _run_suite(output_dir: Path, pytest_args: list[str]) -> tuple[Path, int]:
    """Runs the suite into ``output_dir/results.json``: ``(its path, pytest's exit status)``. A run in which some
    case failed still gives its JSON (the report then covers the cases that ran); no JSON is an error."""
    json_path = output_dir / "results.json"
    command = [
        sys.executable, "-m", "pytest", str(BENCH_DIR), "--benchmark-only", f"--benchmark-json={json_path}",
        "-p", "no:cacheprovider", *pytest_args,
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    # The old JSON stays until pytest-benchmark replaces it (deleting a tracked results.json would make the
    # run's commit read "uncommitted changes"); one older than the run is not this run's.
    started = time.time()
    # Its own session: an interrupt reaches pytest once, from here, however it was sent to this process;
    # SIGTERM and SIGHUP are passed on as they come (pytest then stops without its JSON).
    proc = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True)

    def pass_on(signum: int, _frame: object) -> None:
        os.killpg(proc.pid, signum)
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        status = _wait_finishing_on_interrupt(proc)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status < 0:  # pytest ended by a signal (an interrupt can land where it does not catch it): as a shell says
        status = 128 - status
    if not json_path.is_file() or json_path.stat().st_mtime < started:
        raise SystemExit(f"the benchmark suite failed (exit status {status}) and wrote no JSON; no report")
    return json_path, status


def _ms(row: Row) -> str:
    return f"{1e3 * row['median_s']:.4g} ({1e3 * row['min_s']:.4g})"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _runs_section(results: Results, command: str) -> list[str]:
    lines = []
    for index, run in enumerate(results.runs):
        info = run.machine
        device = info.get("cuda_device") or f"CPU: {info.get('cpu_model', run.cpu_brand)}"
        cpus = f"{info.get('cpu_count', '?')} CPUs, {info.get('threads', '?')} threads"
        smoke = " **smoke run: tiny shapes, one round, not a measurement**" if info.get("smoke") else ""
        lines.append(
            [
                str(index),
                device + smoke,
                cpus,
                run.datetime[:19].replace("T", " ") + " UTC",
                f"torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, "
                f"CUDA {info.get('cuda_version') or '-'}, Python {info.get('python', '?')}",
                run.commit,
                f"`{info.get('command', '?')}`",
            ]
        )
    header = ["run", "device", "CPU", "date", "versions", "commit", "command"]
    return ["## Runs", "", f"Report written by `{command}`.", "", *_table(header, lines), ""]


def _targets_section(results: Results) -> list[str]:
    lines = [[t.name, t.measured, f"**{t.status}**"] for t in targets_module.evaluate(results)]
    return ["## Targets", "", *_table(["target", "measured", "status"], lines), ""]


def _op_section(results: Results) -> list[str]:
    out = ["## Ops: time, peak memory, bandwidth", ""]
    for device, shape, gpu in results.configs("op", ("device", "shape", "gpu")):
        rows = results.select("op", shape=shape, **on_device(device, gpu))
        copy_bandwidth = results.copy_bandwidth(device, gpu)
        sizes = rows[0]
        out += [
            f"### {gpu if device == 'cuda' else device}, shape `{shape}`: B={sizes['B']}, K={sizes['K']}, "
            f"C={sizes['C']}, logits {sizes['h']}x{sizes['w']} -> labels {sizes['H']}x{sizes['W']}",
            "",
        ]
        lines = []
        for op, mode, dtype in results.configs("op", ("op", "mode", "dtype")):
            where = {"shape": shape, "op": op, "mode": mode, "dtype": dtype, **on_device(device, gpu)}
            eager, compiled = results.one("op", impl="eager", **where), results.one("op", impl="compile", **where)
            for impl in IMPL_ORDER:
                row = results.one("op", impl=impl, **where)
                if row is None:
                    continue
                gbps = row["bytes_moved"] / row["median_s"] / 1e9
                floor = None if copy_bandwidth is None else row["median_s"] * copy_bandwidth / row["bytes_moved"]
                lines.append(
                    [
                        op,
                        mode,
                        dtype,
                        impl,
                        _ms(row),
                        formatted(ratio(eager and eager["median_s"], row["median_s"]), ".2f"),
                        formatted(ratio(compiled and compiled["median_s"], row["median_s"]), ".2f"),
                        formatted(row.get("peak_extra_mib"), ".1f"),
                        formatted(ratio(row.get("peak_extra_mib"), eager and eager.get("peak_extra_mib")), ".3f"),
                        f"{gbps:.2f}",
                        formatted(floor, ".1f"),
                    ]
                )
        header = ["op", "mode", "dtype", "impl", "median ms (min)", "x eager", "x compile", "peak extra MiB",
                  "/eager", "GB/s", "x floor"]  # fmt: skip
        out += [*_table(header, lines), ""]
        if copy_bandwidth is not None:
            out += [f"Measured copy bandwidth on {device}: {copy_bandwidth / 1e9:.1f} GB/s.", ""]
    return out


def _backends_section(results: Results) -> list[str]:
    """CUDA against Triton, case by case, where both ran (on the same GPU)."""
    lines = []
    for shape, op, mode, dtype, gpu in results.configs("op", ("shape", "op", "mode", "dtype", "gpu")):
        where = {"device": "cuda", "shape": shape, "op": op, "mode": mode, "dtype": dtype, "gpu": gpu}
        triton, cuda = results.one("op", impl="triton", **where), results.one("op", impl="cuda", **where)
        if triton is None or cuda is None:
            continue
        ratio = cuda["median_s"] / triton["median_s"]
        faster = "cuda" if ratio < 1 else "triton" if ratio > 1 else "tie"
        lines.append([shape, op, mode, dtype, _ms(triton), _ms(cuda), f"{ratio:.3f}", faster])
    if not lines:
        return []
    header = ["shape", "op", "mode", "dtype", "triton median ms (min)", "cuda median ms (min)", "cuda / triton",
              "faster"]  # fmt: skip
    return ["## CUDA against Triton", "", *_table(header, lines), ""]


def _interleaved_section(results: Results) -> list[str]:
    rows = results.select("interleaved")
    if not rows:
        return []
    lines = [
        [
            row["shape_label"],
            row["dtype"],
            f"{row['cpp_median_ms']:.2f}",
            f"{row['eager_median_ms']:.2f}",
            f"{row['speedup_median']:.2f} ({row['speedup_min']:.2f}-{row['speedup_max']:.2f})",
            str(row["rounds"]),
            f"{row['cpp_minor_faults_per_call']:,.0f} / {row['eager_minor_faults_per_call']:,.0f}",
        ]
        for row in rows
    ]
    header = ["shape", "dtype", "cpp median ms", "eager median ms", "speedup (range)", "rounds",
              "minor page faults / call (cpp / eager)"]  # fmt: skip
    intro = (
        "`seg_cross_entropy` fwd+bwd on CPU, `cpp` and `eager` timed back to back in every round "
        "(alternating which goes first); the speedup is the median of the per-round ratios."
    )
    return ["## Interleaved fused-versus-eager timing (CPU)", "", intro, "", *_table(header, lines), ""]


def _step_section(results: Results) -> list[str]:
    out = ["## Training step (HRNet-W18-small-v2)", ""]
    configs = results.configs("train_step", ("device", "shape", "precision", "gpu"))
    if not configs:
        return [*out, "No training-step rows in these runs.", ""]
    for device, shape, precision, gpu in configs:
        where = {"shape": shape, "precision": precision, **on_device(device, gpu)}
        rows = results.latest_per("train_step", "variant", **where)
        base = results.one("train_step", variant="baseline", **where)
        out += [f"### {gpu if device == 'cuda' else device}, {precision}, {rows[0]['shape_label']}", ""]
        lines = [
            [
                row["variant"],
                row.get("dropclass_backend", "eager"),
                _ms(row),
                formatted(ratio(row["median_s"], base and base["median_s"]), ".3f"),
                formatted(row.get("peak_extra_mib"), ".1f"),
                formatted(ratio(row.get("peak_extra_mib"), base and base.get("peak_extra_mib")), ".3f"),
            ]
            for row in rows
        ]
        header = ["variant", "loss/DropClass backend", "median ms (min)", "/ baseline time", "peak extra MiB",
                  "/ baseline memory"]  # fmt: skip
        out += [*_table(header, lines), ""]
        interleaved = results.one("interleaved_step", **where)
        if interleaved is not None:
            text = targets_module.interleaved_step_text(interleaved)
            out += [f"Steps timed back to back in every round ({text}).", ""]
    return out


def render(results: Results, command: str, figures: list[str]) -> str:
    """The text of ``RESULTS.md`` for ``results``; ``figures``: PNG file names written beside it."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# Benchmark results", "", f"Generated by `benchmarks/report.py` on {today}.", ""]
    out += ["Wall-clock times of the training jobs and of the test suite are in `RUN_TIMES.md`.", ""]
    out += _runs_section(results, command)
    out += _targets_section(results)
    if not any(row.get("device") == "cuda" for row in results.rows):
        out += [NOT_MEASURED_GPU, ""]
    out += _op_section(results)
    out += _backends_section(results)
    out += _interleaved_section(results)
    out += _step_section(results)
    if figures:
        out += ["## Figures", "", *[f"![{name}]({name})" for name in figures], ""]
    out += [METHOD]
    return "\n".join(out)


def write_report(results: Results, output_dir: Path, command: str) -> Path:
    """Write ``RESULTS.md`` and the PNG figures into ``output_dir``; returns the path of ``RESULTS.md``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if plots.speedup_figure(results, output_dir / "speedup.png"):
        figures.append("speedup.png")
    if plots.train_step_figure(results, output_dir / "train_step.png"):
        figures.append("train_step.png")
    path = output_dir / "RESULTS.md"
    path.write_text(render(results, command, figures))
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, action="append", default=[], help="pytest-benchmark JSON of a run (repeatable)"
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR, help="where RESULTS.md and the PNGs go")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for the suite run (after --)")
    args = parser.parse_args(argv)
    if args.json and args.pytest_args:
        parser.error("pytest arguments only apply when the suite is run (no --json)")
    for path in args.json:
        if not path.is_file():
            parser.error(f"--json {path}: no such file")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    paths = args.json
    if not paths:
        suite_json, status = _run_suite(args.output_dir, args.pytest_args)
        paths = [suite_json]
    command = " ".join(["python benchmarks/report.py", *argv])
    path = write_report(results_module.load(paths), args.output_dir, command)
    print(f"wrote {path}")
    if status != 0:
        print(f"the benchmark suite exited with status {status}: the report covers the cases that ran", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
