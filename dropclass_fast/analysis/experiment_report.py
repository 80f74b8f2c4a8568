"""The synthetic debiasing experiment's report: the Markdown document, its figures and its CSV tables.

:func:`~dropclass_fast.analysis.experiment.run_experiment` trains and analyses the seeds, then calls
:func:`write_figures` and :func:`write_report` here with the results. The statements that interpret the numbers
are computed from them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import SyntheticStreets
from ..metrics import least_frequent_classes, subset_miou
from ..models import predict
from ..train.config import METHODS
from ..viz import plot_iou_bars, plot_predictions, plot_training_curves, plot_unbiased_comparison
from .erase import ErasedDataset
from .experiment import LABELS, VALIDATION_SEED, ExperimentConfig, SeedResult
from .tables import Table, bias_table, frequency_table, probe_table

# ------------------------------------------------------------------------------------------------- figures


def write_figures(
    config: ExperimentConfig, results: list[SeedResult], models: dict[str, nn.Module], val_set: SyntheticStreets
) -> dict[str, Path]:
    """The report's figures from the per-seed results and the first seed's models; title -> PNG path."""
    folder = config.figures
    names = val_set.class_names
    reports = [r.report for r in results]
    figures = {}
    for key, title in (("iou", "I"), ("iou_star", "I*")):
        means = {LABELS[m]: torch.stack([getattr(r, key)[m] for r in reports]).nanmean(0) for m in METHODS}
        figures[f"IoU on {title}"] = plot_iou_bars(
            names, means, folder / f"{key}.png", title=f"per-class IoU on {title}, mean over {len(reports)} seed(s)"
        )
    first = results[0]
    figures["training loss"] = plot_training_curves(
        first.logs, folder / "loss.png", title=f"training loss, seed {first.seed}"
    )
    labelled = [val_set.load_raw(i) for i in range(len(val_set))]

    def predictions(dataset, indices: Sequence[int]) -> dict[str, list[np.ndarray]]:
        images = torch.stack([dataset[i][0] for i in indices])
        with torch.no_grad():
            return {LABELS[m]: list(predict(models[m], images).argmax(1).numpy()) for m in METHODS}

    rare = [names.index("rider"), names.index("bicycle")]
    by_rare = sorted(range(len(labelled)), key=lambda i: -int(np.isin(labelled[i][1], rare).sum()))[:3]
    figures["predictions"] = plot_predictions(
        [labelled[i][0] for i in by_rare], [labelled[i][1] for i in by_rare], predictions(val_set, by_rare),
        val_set.palette, folder / "predictions.png", class_names=names,
        title=f"validation scenes with the most rider/bicycle pixels, seed {first.seed}",
    )
    report = first.report
    target = report.order[0]
    erased = ErasedDataset(val_set, report.top[target], config.fill)
    present = [i for i in range(len(labelled)) if (labelled[i][1] == target).any()] or list(range(len(labelled)))
    index = max(present, key=lambda i: int(np.isin(labelled[i][1], erased.classes).sum()))
    before, after = predictions(val_set, [index]), predictions(erased, [index])
    image_star, label_star = erased.load_raw(index)
    figures["I vs I*"] = plot_unbiased_comparison(
        labelled[index][0], image_star, labelled[index][1], label_star,
        {m: (before[m][0], after[m][0]) for m in before}, val_set.palette, folder / "unbiased.png",
        class_names=names,
        title=f"I* erases {', '.join(names[c] for c in erased.classes)}: the Top-{config.top_count} of "
        f"{names[target]} on the {LABELS[config.reference]} (seed {first.seed})",
    )
    return figures


# -------------------------------------------------------------------------------------------------- report


def _summary_values(results: list[SeedResult], frequency: torch.Tensor, model: str) -> dict[str, np.ndarray]:
    rare = least_frequent_classes(frequency)
    rows: dict[str, list[float]] = {}
    for result in results:
        report = result.report
        summary = report.summary(model)
        for name, value in (
            ("mIoU (I)", summary["miou"]),
            ("mIoU† (I)", subset_miou(report.iou[model], rare)),
            ("mIoU* (I)", summary["miou_star"]),
            ("mIoU (I*)", summary["miou_unbiased"]),
            ("mIoU* (I*)", summary["miou_star_unbiased"]),
            ("Δ mIoU (I* − I)", summary["delta_miou"]),
            ("Δ mIoU* (I* − I)", summary["delta_miou_star"]),
        ):
            rows.setdefault(name, []).append(100 * value)
    return {name: np.asarray(values) for name, values in rows.items()}


def _statement(metric: str, base: np.ndarray, ours: np.ndarray) -> str:
    """A computed sentence: which model has the higher mean, by how much, in how many seeds, against the spread."""
    difference = ours - base
    n = len(difference)
    higher = "DropClass" if difference.mean() > 0 else "the baseline" if difference.mean() < 0 else "neither model"
    text = (
        f"- **{metric}**: DropClass {ours.mean():.1f}, baseline {base.mean():.1f}; {higher} has the higher mean "
        f"(difference {difference.mean():+.1f} points); DropClass is higher in {int((difference > 0).sum())} of "
        f"{n} seed(s)"
    )
    if n < 2:
        return text + "; one seed gives no spread to compare with."
    spread = max(float(np.std(base, ddof=1)), float(np.std(ours, ddof=1)))
    relation = "exceeds" if abs(difference.mean()) > spread else "does not exceed"
    return text + f"; the difference {relation} the seeds' spread (larger standard deviation {spread:.1f})."


def _config_rows(config: ExperimentConfig) -> list[str]:
    return [
        f"| model | {config.model} (random init, N(0, 0.001) convolutions) |",
        f"| iterations | baseline {config.iters}, DropClass {2 * config.iters} |",
        f"| seeds | {', '.join(map(str, config.seeds))} |",
        f"| batch, crop, learning rate | {config.batch_size}, {config.crop_size[0]}x{config.crop_size[1]}, "
        f"{config.lr if config.lr is not None else 'recipe (0.02 for batch 8)'} |",
        f"| scenes | {config.image_size[0]}x{config.image_size[1]}; {config.train_length} training scenes per seed, "
        f"{config.val_length} validation scenes (seed {VALIDATION_SEED}, the same for every run) |",
        f"| Top-k erased per class | {config.top_count}, chosen on the {LABELS[config.reference]} |",
        f"| mIoU* classes | {config.vulnerable_count} of 8 |",
        "| mIoU† classes | the least frequent half (4 of 8) by training pixel frequency |",
        f"| erased pixels | fill {config.fill!r}, label ignored |",
        "| BatchNorm statistics | "
        + (f"re-estimated after training over {config.bn_batches} training batches |" if config.bn_batches
           else "as trained (momentum 0.01) |"),
        f"| probe | drop {', '.join(config.probe_classes) or 'none'}; {config.probe_iters} SGD steps, "
        f"learning rate {config.probe_lr} |",
    ]


def write_report(
    config: ExperimentConfig,
    results: list[SeedResult],
    frequency: torch.Tensor,
    figures: dict[str, Path],
    command: str,
    seconds: float,
) -> Path:
    """Writes ``config.doc`` and the CSV tables beside its figures; returns the document's path."""
    doc = Path(config.doc)
    folder = config.figures
    folder.mkdir(parents=True, exist_ok=True)
    reports = [r.report for r in results]
    names = reports[0].class_names
    tables: dict[str, Table] = {
        "table_b1": bias_table(reports, LABELS),
        "table_c2": frequency_table(
            names, frequency, [r.iou["baseline"] for r in reports], [r.iou["dropclass"] for r in reports],
            labels=("Baseline", "DropClass"), frequency_label="Pixel %",
        ),
    }
    probes = [p for r in results for p in r.probes]
    if probes:
        tables["probe"] = probe_table(probes)
    summaries = {m: _summary_values(results, frequency, m) for m in METHODS}
    metrics = list(summaries["baseline"])
    tables["summary"] = Table(
        ("Baseline", "DropClass", "DropClass − Baseline"),
        tuple(
            (name, (summaries["baseline"][name], summaries["dropclass"][name],
                    summaries["dropclass"][name] - summaries["baseline"][name]))
            for name in metrics
        ),
        corner="metric (%)",
    )
    for name, table in tables.items():
        (folder / f"{name}.csv").write_text(table.to_csv())

    def link(path: Path) -> str:
        return os.path.relpath(path, doc.parent).replace(os.sep, "/")

    seeds = len(results)
    spread = "mean ± sample standard deviation over the seeds" if seeds > 1 else "a single seed"
    lines = [
        "# Synthetic debiasing experiment",
        "",
        f"Written by the experiment runner on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from its own results "
        f"({seeds} seed(s), {seconds / 60:.1f} minutes in all on {os.cpu_count()} CPU core(s), "
        f"{torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}). Every number below is computed; the "
        "statements in the summary are generated from the numbers by fixed rules.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "## Setup",
        "",
        "HRNet trained from scratch on the embedded procedural street scenes (`SyntheticStreets`: 8 classes, "
        "riders appear only on bicycles), as a baseline and with DropClass (twice the iterations, as in the "
        "paper), with the training engine of `examples/train_cityscapes.py`. The bias-vulnerability protocol of "
        "Table B-1 then runs on one fixed set of validation scenes: each class's influence on every other class "
        "(IoU drop when the other class's pixels are erased), the Top-k most influential classes per class on "
        "the reference model, and every class's IoU on the unbiased images `I*` (those classes erased, their "
        "labels ignored).",
        "",
        "HRNet's BatchNorm momentum is the official 0.01, so after a few hundred iterations the running "
        "statistics can still trail the trained network. When the BatchNorm row below says so, every model's "
        "running statistics are re-estimated after training as the plain average over that many training "
        "batches (no gradient, weights unchanged), for the baseline and DropClass alike; the paper's hundreds of "
        "epochs make this step moot. The section \"BatchNorm statistics\" gives the validation mIoU of each model "
        "before and after.",
        "",
        "| setting | value |",
        "|---|---|",
        *_config_rows(config),
        "",
        f"## Summary ({spread}, IoU in %)",
        "",
        tables["summary"].to_markdown(),
        "",
        *[_statement(name, summaries["baseline"][name], summaries["dropclass"][name]) for name in metrics],
        "",
        "Δ rows: IoU on `I*` minus IoU on `I`; a value closer to 0 means less vulnerable to the erased context.",
        "",
        f"## Table B-1: bias vulnerability ({spread})",
        "",
        f"Columns sorted by the {LABELS[config.reference]}'s mean Δ (largest drop first). mIoU* averages each "
        f"seed's {config.vulnerable_count} classes of largest drop on the {LABELS[config.reference]}.",
        "",
        tables["table_b1"].to_markdown(),
        "",
        "Top-k influential classes (erased in `I*`) per class and seed:",
        "",
        "| class | " + " | ".join(f"seed {r.seed}" for r in results) + " |",
        "|---|" + "---|" * seeds,
        *[
            f"| {name} | " + " | ".join(", ".join(names[j] for j in r.report.top[c]) for r in results) + " |"
            for c, name in enumerate(names)
        ],
        "",
        f"## Table C-2 layout: classes by training pixel frequency ({spread})",
        "",
        "† marks the least frequent half (the mIoU† classes). IoU on the original validation scenes `I`.",
        "",
        tables["table_c2"].to_markdown(),
        "",
    ]
    if probes:
        lines += [
            "## Reconstruction probe (section A)",
            "",
            "The trained DropClass model is frozen; a fresh classifier is trained on `A_drop` with class z "
            f"dropped at every step ({config.probe_iters} steps) against all labels. The control classifier "
            "is trained the same way with nothing dropped. IoU of z in %.",
            "",
            tables["probe"].to_markdown(),
            "",
        ]
    lines += [
        "## BatchNorm statistics",
        "",
        "Validation mIoU (%) with the running statistics as trained and as analysed above"
        + (f" (re-estimated over {config.bn_batches} training batches)" if config.bn_batches else "") + ":",
        "",
        "| seed | " + " | ".join(f"{LABELS[m]} as trained | {LABELS[m]} analysed" for m in METHODS) + " |",
        "|---|" + "---:|" * 2 * len(METHODS),
        *[
            f"| {r.seed} | "
            + " | ".join(f"{100 * r.trained_miou[m]:.1f} | {100 * r.report.summary(m)['miou']:.1f}" for m in METHODS)
            + " |"
            for r in results
        ],
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{title}]({link(path)})" for title, path in figures.items()]
    lines += [
        "",
        "CSV versions of the tables: " + ", ".join(f"[{n}]({link(folder / f'{n}.csv')})" for n in tables) + ".",
        "",
        "## Time",
        "",
        "| seed | " + " | ".join(results[0].seconds) + " |",
        "|---|" + "---:|" * len(results[0].seconds),
        *[f"| {r.seed} | " + " | ".join(f"{v:.0f} s" for v in r.seconds.values()) + " |" for r in results],
        "",
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    return doc

