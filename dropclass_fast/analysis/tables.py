"""Tables in the paper's layouts, as Markdown and CSV: Table B-1 (bias), Table C-2 (by frequency), the probe.

Every cell holds one value per run (seed): one value prints as is, several as
``mean ± std`` (sample standard deviation over the runs). IoUs print in %.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import least_frequent_classes, mean_iou, subset_miou, vulnerability_order
from .bias import BiasReport
from .probe import ProbeResult


@dataclass(frozen=True)
class Table:
    """Rows of cells under named columns; a cell is a float64 array ``[runs]``.

    Non-finite values (NaN: a class absent; inf: a ratio to 0) are left out of
    a cell's statistics; a cell with none left prints ``n/a`` (Markdown) or nothing (CSV).

    Attributes:
        columns: column titles (the row-label column is ``corner``).
        rows: ``(label, cells)`` with one cell per column.
        corner: title of the row-label column.
        decimals: digits after the point.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[np.ndarray, ...]], ...]
    corner: str = ""
    decimals: int = 1

    def __post_init__(self) -> None:
        for label, cells in self.rows:
            if len(cells) != len(self.columns):
                raise ValueError(f"row {label!r} has {len(cells)} cells for {len(self.columns)} columns")

    def _format(self, cell: np.ndarray) -> str:
        values = cell[np.isfinite(cell)]
        if values.size == 0:
            return "n/a"
        if cell.size == 1:
            return _fixed(values[0], self.decimals)
        if values.size == 1:
            return f"{_fixed(values[0], self.decimals)} (1 of {cell.size} runs)"
        return f"{_fixed(values.mean(), self.decimals)} ± {_fixed(np.std(values, ddof=1), self.decimals)}"

    def to_markdown(self) -> str:
        """A Markdown table; multi-run cells as ``mean ± std``."""
        lines = ["| " + " | ".join([self.corner, *self.columns]) + " |", "|---|" + "---:|" * len(self.columns)]
        lines += ["| " + " | ".join([label, *(self._format(c) for c in cells)]) + " |" for label, cells in self.rows]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """CSV with a ``stat`` column: one ``value`` line per single-run row, ``mean`` and ``std`` lines otherwise."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([self.corner or "row", "stat", *self.columns])
        for label, cells in self.rows:
            if max(c.size for c in cells) == 1:
                writer.writerow([label, "value", *(_number(c, np.mean, self.decimals) for c in cells)])
                continue
            writer.writerow([label, "mean", *(_number(c, np.mean, self.decimals) for c in cells)])
            writer.writerow([label, "std", *(_number(c, _sample_std, self.decimals + 1) for c in cells)])
        return out.getvalue()


def _fixed(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` digits; a negative value that rounds to zero prints as ``0.0``, not ``-0.0``."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _sample_std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def _number(cell: np.ndarray, statistic: Callable[[np.ndarray], float], decimals: int) -> str:
    """``statistic`` of the finite values of ``cell``; empty when there are none (or it is undefined)."""
    values = cell[np.isfinite(cell)]
    value = float(statistic(values)) if values.size else float("nan")
    return "" if value != value else _fixed(value, decimals)


def _percent(values: Sequence[float] | torch.Tensor) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64) * 100


def _stack(values: torch.Tensor | Sequence[torch.Tensor], name: str, num_classes: int) -> torch.Tensor:
    """``[K]`` or ``[runs, K]`` (or a list of ``[K]``) as float64 ``[runs, K]``."""
    stacked = torch.stack([torch.as_tensor(v) for v in values]) if isinstance(values, (list, tuple)) else values
    stacked = stacked.double().cpu()
    stacked = stacked.unsqueeze(0) if stacked.dim() == 1 else stacked
    if stacked.dim() != 2 or stacked.shape[1] != num_classes:
        raise ValueError(f"{name} must be [K] or [runs, K] with K = {num_classes}, got shape {tuple(stacked.shape)}")
    return stacked


def bias_table(reports: Sequence[BiasReport], labels: Mapping[str, str] | None = None) -> Table:
    """Table B-1 over one report per run: rows ``model (I)``, ``model (I*)``, ``Δ (model)`` per model; columns
    the classes by the reference model's mean Δ (largest drop first), then ``mIoU`` and ``mIoU*`` (each run's
    ``mIoU*`` over that run's most vulnerable classes). ``labels`` renames models in the row titles.
    """
    if not reports:
        raise ValueError("reports must hold at least one BiasReport")
    first = reports[0]
    for index, report in enumerate(reports[1:], start=1):
        for field in ("class_names", "models", "reference"):
            if getattr(report, field) != getattr(first, field):
                raise ValueError(f"reports must share {field}: reports[{index}] has {getattr(report, field)!r}, "
                                 f"reports[0] {getattr(first, field)!r}")
    deltas = torch.stack([r.delta(r.reference) for r in reports])
    order = vulnerability_order(deltas.nanmean(0))
    labels = dict(labels or {})
    rows = []
    for model in first.models:
        name = labels.get(model, model)
        summaries = [r.summary(model) for r in reports]
        for title, per_class, miou, miou_star in (
            (f"{name} (I)", [r.iou[model] for r in reports], "miou", "miou_star"),
            (f"{name} (I*)", [r.iou_star[model] for r in reports], "miou_unbiased", "miou_star_unbiased"),
            (f"Δ ({name})", [r.delta(model) for r in reports], "delta_miou", "delta_miou_star"),
        ):
            values = torch.stack(per_class).double()
            cells = [_percent(values[:, c]) for c in order]
            cells += [_percent([s[miou] for s in summaries]), _percent([s[miou_star] for s in summaries])]
            rows.append((title, tuple(cells)))
    columns = tuple(first.class_names[c] for c in order) + ("mIoU", "mIoU*")
    return Table(columns, tuple(rows))


def frequency_table(
    class_names: Sequence[str],
    frequency: torch.Tensor,
    baseline: torch.Tensor | Sequence[torch.Tensor],
    ours: torch.Tensor | Sequence[torch.Tensor],
    labels: tuple[str, str] = ("Baseline", "Ours"),
    frequency_label: str = "Frequency %",
    count: int | None = None,
) -> Table:
    """Table C-2: classes by increasing ``frequency`` (``[K]``), the ``count`` least frequent marked ``†``
    (default ``K // 2``); rows: frequency in %, the two models' IoU, ``Δ`` (ours - baseline, points) and
    ``Δ (%)`` (relative to the baseline); last columns ``mIoU`` and ``mIoU†``.

    ``baseline`` and ``ours`` are per-class IoU ``[K]`` or ``[runs, K]`` with runs paired by index (seeds).
    """
    k = len(class_names)
    if frequency.shape != (k,):
        raise ValueError(f"frequency must be [K] = [{k}], got shape {tuple(frequency.shape)}")
    base, mine = _stack(baseline, "baseline", k), _stack(ours, "ours", k)
    if base.shape != mine.shape:
        raise ValueError(f"baseline and ours must have the same runs, got {tuple(base.shape)} and {tuple(mine.shape)}")
    rare = least_frequent_classes(frequency.double(), count)
    order = torch.sort(frequency.double().cpu(), stable=True).indices.tolist()

    def summary(iou: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return _percent([mean_iou(run) for run in iou]), _percent([subset_miou(run, rare) for run in iou])

    (base_miou, base_rare), (mine_miou, mine_rare) = summary(base), summary(mine)
    delta = mine - base
    relative = delta / base  # inf or NaN where the baseline's IoU is 0: left out of the cells
    rows = [
        (frequency_label, tuple(_percent([frequency[c]]) for c in order) + (np.full(1, np.nan),) * 2),
        (labels[0], tuple(_percent(base[:, c]) for c in order) + (base_miou, base_rare)),
        (labels[1], tuple(_percent(mine[:, c]) for c in order) + (mine_miou, mine_rare)),
        ("Δ", tuple(_percent(delta[:, c]) for c in order) + (mine_miou - base_miou, mine_rare - base_rare)),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_means = (100 * (mine_miou - base_miou) / base_miou, 100 * (mine_rare - base_rare) / base_rare)
    rows.append(("Δ (%)", tuple(_percent(relative[:, c]) for c in order) + relative_means))
    columns = tuple(class_names[c] + (" †" if c in rare else "") for c in order) + ("mIoU", "mIoU†")
    return Table(columns, tuple(rows))


def probe_table(results: Sequence[ProbeResult]) -> Table:
    """The reconstruction probe: one row per dropped class (runs of the same class pooled as ``mean ± std``);
    columns: IoU of ``z`` by the model, by its own classifier with ``z`` dropped, by the probe ``h'`` and by
    the control classifier (nothing dropped)."""
    by_class: dict[str, list[ProbeResult]] = {}
    for result in results:
        by_class.setdefault(result.class_name, []).append(result)
    fields = ("iou_model", "iou_dropped", "iou_probe", "iou_control")
    rows = tuple(
        (name, tuple(_percent([getattr(r, f) for r in runs]) for f in fields)) for name, runs in by_class.items()
    )
    columns = ("model", "model, z dropped", "probe h' (z dropped)", "control h' (nothing dropped)")
    return Table(columns, rows, corner="dropped class z")
