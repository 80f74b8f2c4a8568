"""Fill ``dropclass_fast/backend_table.json`` (what ``set_backend("auto")`` runs on CUDA tensors) from benchmark runs.

Usage (from the repository root, on the JSON of a benchmark run made on a GPU)::

    python benchmarks/backend_table.py --json build/gpu-bench/results.json
    python benchmarks/backend_table.py --json h100.json --json a100.json --output /tmp/table.json --shape voc

For every GPU of the runs (``torch.cuda.get_device_name(0)``, recorded by ``benchmarks/conftest.py`` as
``machine_info["dropclass_fast"]["cuda_device"]``) and every op, the table names the faster of the
``triton`` and ``cuda`` backends: the one with the smaller sum, over float32 and bfloat16, of the median
``fwd+bwd`` times at the shape ``--shape`` (default ``cityscapes``, the paper's shape the targets use);
a tie goes to ``triton``. An op is left out for a GPU unless both backends have a row there for every
dtype (``set_backend("auto")`` then uses Triton). Where a row was measured more than once, the last
``--json`` file's counts. The GPUs measured replace their entries in the table at ``--output`` (default
``dropclass_fast/backend_table.json``); the other GPUs there are kept, with their dates. ``"measured"``
says when and at which commit each GPU was measured, ``"command"`` the command line of the last update.

Exits with a message naming the file when a ``--json`` file has no CUDA ``fwd+bwd`` rows of both the
``triton`` and ``cuda`` backends at that shape, or does not record its GPU's name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cases
import results as results_module
from results import Results, Run

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR.parent / "dropclass_fast" / "backend_table.json"
ABOUT = (
    "Fastest backend per GPU (torch.cuda.get_device_name()) and op, measured; set_backend('auto') reads it for "
    "CUDA tensors and uses Triton for ops not listed."
)
MODE = "fwd+bwd"


def _run_label(run: Run) -> str:
    return f"{run.datetime[:16].replace('T', ' ')} UTC, commit {run.commit}"


def _check_runs(results: Results, shape: str) -> None:
    """SystemExit naming the first file without CUDA rows of both GPU backends, or without its GPU's name."""
    for index, run in enumerate(results.runs):
        rows = results.select("op", device="cuda", mode=MODE, shape=shape, run=index)
        missing = [impl for impl in cases.GPU_BACKENDS if not any(row["impl"] == impl for row in rows)]
        if missing:
            raise SystemExit(
                f"{run.path}: no CUDA {MODE} rows of the {' and '.join(missing)} backend{'s' * (len(missing) > 1)} "
                f"at shape {shape!r}; the table needs both (run the benchmark suite on a GPU: make gpu-bench)"
            )
        if not run.machine.get("cuda_device"):
            raise SystemExit(f"{run.path}: the run does not record its GPU's name (machine_info.dropclass_fast)")


def medians(results: Results, shape: str) -> dict[str, dict[tuple[str, str, str], float]]:
    """GPU name -> ``(op, impl, dtype)`` -> median seconds of the CUDA ``fwd+bwd`` rows at ``shape`` of the
    ``triton`` and ``cuda`` backends (a row measured again in a later run replaces the earlier one)."""
    table: dict[str, dict[tuple[str, str, str], float]] = {}
    for row in results.select("op", device="cuda", mode=MODE, shape=shape):
        if row["impl"] in cases.GPU_BACKENDS:
            gpu = results.runs[row["run"]].machine["cuda_device"]
            table.setdefault(gpu, {})[(row["op"], row["impl"], row["dtype"])] = row["median_s"]
    return table


def choose(times: dict[tuple[str, str, str], float]) -> dict[str, tuple[str, dict[str, float]] | None]:
    """For each op: ``(backend, {impl: summed median seconds over cases.DTYPES})``, or ``None`` where a backend
    lacks a dtype. ``times``: one GPU's ``(op, impl, dtype) -> median seconds``, as from :func:`medians`."""
    chosen: dict[str, tuple[str, dict[str, float]] | None] = {}
    for op in cases.OPS:
        keys = {impl: [(op, impl, dtype) for dtype in cases.DTYPES] for impl in cases.GPU_BACKENDS}
        if not all(key in times for impl_keys in keys.values() for key in impl_keys):
            chosen[op] = None
            continue
        sums = {impl: sum(times[key] for key in impl_keys) for impl, impl_keys in keys.items()}
        chosen[op] = ("cuda" if sums["cuda"] < sums["triton"] else "triton", sums)
    return chosen


def _measured(old: dict, gpus: dict[str, str], kept: list[str]) -> str:
    """The ``"measured"`` text: ``"GPU: date UTC, commit c"`` per GPU, the kept ones' taken from ``old``."""
    old_parts = str(old.get("measured", "")).split("; ")
    parts = [part for gpu in kept for part in old_parts if part.startswith(f"{gpu}: ")]
    parts += [f"{gpu}: {label}" for gpu, label in gpus.items()]
    return "; ".join(sorted(parts))


def update_table(output: Path, results: Results, shape: str, command: str) -> None:
    """Merge the choices of ``results`` into the table at ``output`` (created if absent), write it, print them."""
    old = json.loads(output.read_text()) if output.is_file() else {}
    devices = dict(old.get("devices", {}))
    labels: dict[str, str] = {}
    for gpu, times in medians(results, shape).items():
        runs = [run for run in results.runs if run.machine["cuda_device"] == gpu]
        labels[gpu] = " and ".join(_run_label(run) for run in runs)
        print(gpu)
        entry = {}
        for op, choice in choose(times).items():
            if choice is None:
                print(f"  {op:<20} left out: no triton and cuda rows for every dtype ({', '.join(cases.DTYPES)})")
                continue
            backend, sums = choice
            entry[op] = backend
            print(f"  {op:<20} triton {1e3 * sums['triton']:9.3f} ms  cuda {1e3 * sums['cuda']:9.3f} ms  -> {backend}")
        devices[gpu] = entry
    kept = [gpu for gpu in devices if gpu not in labels]
    table = {
        "about": ABOUT,
        "measured": _measured(old, labels, kept),
        "command": command,
        "devices": {gpu: devices[gpu] for gpu in sorted(devices)},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(table, indent=2) + "\n")


def main(argv: list[str]) -> int:
    """Command line: see the module docstring. Returns the exit status (0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, action="append", required=True, help="pytest-benchmark JSON of a run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the table to update")
    parser.add_argument("--shape", default="cityscapes", choices=sorted(cases.SHAPES), help="op shape judged on")
    args = parser.parse_args(argv)
    for path in args.json:
        if not path.is_file():
            parser.error(f"--json {path}: no such file")
    try:
        results = results_module.load(args.json)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    _check_runs(results, args.shape)
    command = " ".join(["python benchmarks/backend_table.py", *argv])
    update_table(args.output, results, args.shape, command)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
