"""Figures as PNG files: per-class IoU of several models, training curves (matplotlib without pyplot)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure


def plot_iou_bars(
    class_names: Sequence[str], ious: Mapping[str, torch.Tensor], path: str | os.PathLike, title: str = ""
) -> Path:
    """Grouped bars of per-class IoU (in %), one colour per model; writes a PNG at ``path``.

    ``ious`` maps a model's name to its ``[K]`` IoU tensor (NaN: class absent, drawn as no bar).
    """
    names = list(ious)
    for name in names:
        if ious[name].numel() != len(class_names):
            raise ValueError(f"ious[{name!r}] has {ious[name].numel()} entries for {len(class_names)} classes")
    x = np.arange(len(class_names))
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(max(6.0, 0.6 * len(class_names) + 2), 3.6))
    ax = fig.subplots()
    for i, name in enumerate(names):
        values = np.nan_to_num(ious[name].double().numpy() * 100, nan=0.0)
        miou = float(np.nanmean(ious[name].double().numpy())) * 100
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=f"{name} (mIoU {miou:.1f})")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training_curves(logs: Mapping[str, str | os.PathLike], path: str | os.PathLike, title: str = "") -> Path:
    """Total loss against iteration for each run's ``log.csv`` (written by the training engine)."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    for name, log in logs.items():
        with Path(log).open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"training log {log} has no rows")
        ax.plot([int(r["iteration"]) for r in rows], [float(r["loss"]) for r in rows], label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
