"""Reading the suite's pytest-benchmark JSON files into rows the report can look up.

A row is a benchmark's ``extra_info`` (the case: ``kind``, ``op``, ``impl``, ``mode``, ``dtype``,
``device``, ``shape``, ``peak_extra_mib``, ``bytes_moved``...) plus its timing: ``median_s``,
``min_s``, ``rounds``, ``run``, the index of the file it came from, and ``gpu``, the name of that run's
CUDA device (``None`` without one): ratios are taken between rows of the same GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def on_device(device: str, gpu: str | None) -> dict[str, Any]:
    """The fields that select rows measured on ``device``: on ``"cuda"`` also the GPU's name, so that ratios are
    taken between rows of one GPU."""
    return {"device": device, **({"gpu": gpu} if device == "cuda" else {})}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None where either is missing or the denominator is 0."""
    return None if numerator is None or not denominator else numerator / denominator


def formatted(value: float | None, spec: str) -> str:
    """``value`` in the format ``spec``; ``-`` where it is missing (None or NaN)."""
    return "-" if value is None or math.isnan(value) else format(value, spec)


@dataclass
class Run:
    """One JSON file: when and where it ran, and what with."""

    path: str
    datetime: str
    commit: str
    machine: dict[str, Any]
    cpu_brand: str


@dataclass
class Results:
    """Every row of one or more runs, and the runs."""

    runs: list[Run] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def select(self, kind: str, **fields: Any) -> list[Row]:
        """Rows of ``kind`` whose fields equal ``fields`` (a field missing from a row never matches)."""
        return [
            row
            for row in self.rows
            if row.get("kind") == kind and all(key in row and row[key] == value for key, value in fields.items())
        ]

    def one(self, kind: str, **fields: Any) -> Row | None:
        """The last row (the latest run's) of ``kind`` matching ``fields``, or ``None``."""
        found = self.select(kind, **fields)
        return found[-1] if found else None

    def latest_per(self, kind: str, key: str, **fields: Any) -> list[Row]:
        """For each value of ``key`` among the rows :meth:`select` gives, the last such row, in first-seen order
        (a case measured by two runs appears once, as the later run measured it)."""
        latest: dict[Any, Row] = {}
        for row in self.select(kind, **fields):
            latest[row.get(key)] = row  # a key keeps its first position
        return list(latest.values())

    def configs(self, kind: str, keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """The distinct values of ``keys`` among rows of ``kind``, in first-seen order."""
        seen: dict[tuple[Any, ...], None] = {}
        for row in self.select(kind):
            seen.setdefault(tuple(row.get(key) for key in keys), None)
        return list(seen)

    def copy_bandwidth(self, device: str, gpu: str | None = None) -> float | None:
        """Measured copy bandwidth of ``device`` in bytes/s (``bench_bandwidth.py``; for ``"cuda"``, measured on
        the GPU named ``gpu``), or ``None``."""
        row = self.one("copy", **on_device(device, gpu))
        return None if row is None else row["bytes_moved"] / row["median_s"]


def _commit(info: dict[str, Any]) -> str:
    commit = str(info.get("id") or "unknown")[:7]
    return f"{commit} (uncommitted changes)" if info.get("dirty") else commit


def load(paths: list[Path]) -> Results:
    """The rows of the pytest-benchmark JSON files ``paths`` (``--benchmark-json``), in order.

    Raises ``ValueError`` naming a file that is not such a JSON file.
    """
    results = Results()
    for index, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or "benchmarks" not in data or "machine_info" not in data:
            raise ValueError(f"{path} is not a pytest-benchmark JSON file (--benchmark-json): no 'benchmarks'")
        machine = data["machine_info"]
        results.runs.append(
            Run(
                path=str(path),
                datetime=str(data.get("datetime", "unknown")),
                commit=_commit(data.get("commit_info") or {}),
                machine=machine.get("dropclass_fast", {}),
                cpu_brand=str((machine.get("cpu") or {}).get("brand_raw", machine.get("machine", "unknown"))),
            )
        )
        for bench in data["benchmarks"]:
            stats = bench["stats"]
            row = dict(bench.get("extra_info") or {})
            row.update(
                median_s=float(stats["median"]),
                min_s=float(stats["min"]),
                rounds=int(stats["rounds"]),
                run=index,
                name=bench["name"],
                gpu=machine.get("dropclass_fast", {}).get("cuda_device"),
            )
            results.rows.append(row)
    return results
