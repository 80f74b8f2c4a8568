"""Figures as PNG files (matplotlib without pyplot): per-class IoU of several models, training curves,
segmentation maps in the datasets' palettes with boxes where predictions differ, ``I`` against ``I*`` (Figure B-2)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ._checks import check_fraction, check_int
from .data.cityscapes import PALETTE as CITYSCAPES_PALETTE
from .data.synthetic import PALETTE as SYNTHETIC_PALETTE
from .data.voc import voc_palette
from .metrics import check_iou_columns, mean_iou

#: RGB uint8 ``[K, 3]`` colour per train id: Cityscapes' 19 classes, VOC's 21 (background first), the synthetic 8.
PALETTES: dict[str, np.ndarray] = {
    "cityscapes": CITYSCAPES_PALETTE,
    "voc": voc_palette(21),
    "synthetic": SYNTHETIC_PALETTE,
}


def plot_iou_bars(
    class_names: Sequence[str], ious: Mapping[str, torch.Tensor], path: str | os.PathLike, title: str = ""
) -> Path:
    """Grouped bars of per-class IoU (in %), one colour per model; writes a PNG at ``path``.

    ``ious`` maps a model's name to its floating ``[K]`` IoU tensor on any device (NaN: class absent, drawn as
    no bar).
    """
    ious = check_iou_columns(class_names, ious)
    names = list(ious)
    x = np.arange(len(class_names))
    width = 0.8 / max(len(names), 1)
    fig = Figure(figsize=(max(6.0, 0.6 * len(class_names) + 2), 3.6))
    ax = fig.subplots()
    for i, name in enumerate(names):
        values = np.nan_to_num(ious[name].double().cpu().numpy() * 100, nan=0.0)
        miou = mean_iou(ious[name]) * 100
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=f"{name} (mIoU {miou:.1f})")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training_curves(logs: Mapping[str, str | os.PathLike], path: str | os.PathLike, title: str = "") -> Path:
    """Total loss against iteration for each run's ``log.csv`` (written by the training engine).

    ``ValueError`` naming the file for a log without rows or without the ``iteration`` and ``loss`` columns.
    """
    needed = ("iteration", "loss")
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    for name, log in logs.items():
        with Path(log).open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is not None and not set(needed) <= set(reader.fieldnames):
                raise ValueError(f"training log {log} needs the columns {list(needed)}, "
                                 f"its columns are {reader.fieldnames}")
            rows = list(reader)
        if not rows:
            raise ValueError(f"training log {log} has no rows")
        ax.plot([int(r["iteration"]) for r in rows], [float(r["loss"]) for r in rows], label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike, rect: tuple[float, float, float, float] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    return path


def colorize(label: np.ndarray | torch.Tensor, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """A label map ``[H, W]`` (integer train ids) as an RGB uint8 ``[H, W, 3]`` image in ``palette`` (``[K, 3]``).

    ``ignore_index`` pixels are black; any other value outside ``[0, K)`` is a ``ValueError``.
    """
    label = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    palette = _check_palette(palette)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer [H, W] map, got dtype {label.dtype}, shape {label.shape}")
    ignored = label == ignore_index
    bad = ~ignored & ((label < 0) | (label >= len(palette)))
    if bad.any():
        raise ValueError(f"label has values {sorted(set(label[bad].tolist()))} outside [0, {len(palette)}) and "
                         f"ignore_index {ignore_index}")
    out = palette[np.where(ignored, 0, label)]
    out[ignored] = 0
    return out


def _check_palette(palette: object) -> np.ndarray:
    """``palette`` as uint8 ``[K, 3]``; ValueError unless it holds integer RGB values in ``[0, 255]``: cast to uint8,
    a float palette in ``[0, 1]`` would turn black and 256 would wrap to 0."""
    array = np.asarray(palette)
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"palette must be [K, 3] integer RGB values, got dtype {array.dtype}, shape {array.shape}")
    if array.size and not (array.min() >= 0 and array.max() <= 255):
        raise ValueError(f"palette values must be in [0, 255], got values from {array.min()} to {array.max()}")
    return array.astype(np.uint8)


def difference_boxes(
    first: np.ndarray, second: np.ndarray, valid: np.ndarray | None = None, cell: int = 8, min_fraction: float = 0.2
) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, left, bottom, right)`` (pixels, exclusive ends) around regions where two label maps differ.

    The maps (``[H, W]``) are compared on a grid of ``cell x cell`` pixels; a
    cell counts when at least ``min_fraction`` of its ``valid`` pixels (default:
    all) differ, and each 8-connected group of counted cells gives one box.
    """
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"first and second must be [H, W] maps of one shape, got {first.shape} and {second.shape}")
    cell = check_int("cell", cell)
    min_fraction = check_fraction("min_fraction", min_fraction)
    valid = np.ones(first.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != first.shape:
        raise ValueError(f"valid must be an [H, W] mask of the maps' shape {first.shape}, got {valid.shape}")
    height, width = first.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell, 2))
    padded[:height, :width, 0] = (first != second) & valid
    padded[:height, :width, 1] = valid
    sums = padded.reshape(rows, cell, cols, cell, 2).sum(axis=(1, 3))
    marked = (sums[..., 0] > 0) & (sums[..., 0] >= min_fraction * np.maximum(sums[..., 1], 1))
    component = np.where(marked, np.arange(rows * cols).reshape(rows, cols), rows * cols)
    while True:  # propagate the smallest cell index through 8-connected marked cells
        grown = np.pad(component, 1, constant_values=rows * cols)
        neighbours = np.min([grown[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols]
                             for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        updated = np.where(marked, neighbours, rows * cols)
        if np.array_equal(updated, component):
            break
        component = updated
    boxes = []
    for index in np.unique(component[marked]):
        ys, xs = np.nonzero(component == index)
        boxes.append((int(ys.min()) * cell, int(xs.min()) * cell,
                      min(height, (int(ys.max()) + 1) * cell), min(width, (int(xs.max()) + 1) * cell)))
    return boxes


def plot_predictions(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    palette: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "",
) -> Path:
    """Figure D-3's layout: per row, the image, the ground truth and each model's prediction side by side,
    with boxes where the first two models' predictions differ on labelled pixels.

    ``images``: RGB uint8 ``[H, W, 3]``; ``labels``: ``[H, W]`` train ids;
    ``predictions``: model name -> one ``[H, W]`` map per image.
    """
    names = list(predictions)
    if len(images) != len(labels) or any(len(predictions[n]) != len(images) for n in names):
        raise ValueError(f"images ({len(images)}), labels ({len(labels)}) and every model's predictions "
                         f"({[len(predictions[n]) for n in names]}) must have one entry per image")
    columns = 2 + len(names)
    fig = Figure(figsize=(2.6 * columns, 1.6 * len(images) + 0.9))
    axes = np.asarray(fig.subplots(len(images), columns, squeeze=False))
    for row, (image, label) in enumerate(zip(images, labels)):
        boxes = []
        if len(names) >= 2:
            boxes = difference_boxes(predictions[names[0]][row], predictions[names[1]][row], label != ignore_index)
        panels = [("image", np.asarray(image), []), ("ground truth", colorize(label, palette, ignore_index), [])]
        panels += [(n, colorize(predictions[n][row], palette, ignore_index), boxes) for n in names]
        for ax, (name, picture, panel_boxes) in zip(axes[row], panels):
            _show(ax, picture, name if row == 0 else "", panel_boxes)
    fig.suptitle(title)
    return _save(fig, path, rect=_legend(fig, palette, class_names))


def plot_unbiased_comparison(
    image: np.ndarray,
    image_star: np.ndarray,
    label: np.ndarray,
    label_star: np.ndarray,
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    palette: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "",
) -> Path:
    """Figure B-2: top row the original image ``I``, bottom row the unbiased ``I*``; columns the image, the
    ground truth and each model's prediction, with boxes where a model's prediction changes from ``I`` to ``I*``
    (on pixels labelled in ``I*``).

    ``predictions``: model name -> (prediction on ``I``, prediction on ``I*``), ``[H, W]`` each.
    """
    names = list(predictions)
    columns = 2 + len(names)
    fig = Figure(figsize=(2.6 * columns, 4.1))
    axes = np.asarray(fig.subplots(2, columns, squeeze=False))
    valid = np.asarray(label_star) != ignore_index
    boxes = {n: difference_boxes(predictions[n][0], predictions[n][1], valid) for n in names}
    for row, (picture, truth, tag) in enumerate(((image, label, "I"), (image_star, label_star, "I*"))):
        panels = [(f"image ({tag})", np.asarray(picture), []),
                  (f"ground truth ({tag})", colorize(truth, palette, ignore_index), [])]
        panels += [(f"{n} ({tag})", colorize(predictions[n][row], palette, ignore_index), boxes[n]) for n in names]
        for ax, (name, shown, panel_boxes) in zip(axes[row], panels):
            _show(ax, shown, name, panel_boxes)
    fig.suptitle(title)
    return _save(fig, path, rect=_legend(fig, palette, class_names))


def _show(ax, picture: np.ndarray, title: str, boxes: Sequence[tuple[int, int, int, int]]) -> None:
    ax.imshow(picture, interpolation="nearest")
    for top, left, bottom, right in boxes:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="white",
                               linewidth=1.2))
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()


def _legend(
    fig: Figure, palette: np.ndarray, class_names: Sequence[str] | None
) -> tuple[float, float, float, float] | None:
    """A colour legend along the bottom; returns the rectangle left for the panels (``None``: no legend)."""
    if class_names is None:
        return None
    if len(class_names) > len(palette):
        raise ValueError(f"class_names has {len(class_names)} entries but the palette only {len(palette)} colours")
    handles = [Patch(color=np.asarray(palette[c]) / 255, label=name) for c, name in enumerate(class_names)]
    rows = -(-len(handles) // 10)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize="x-small", frameon=False)
    return (0.0, 0.06 * rows, 1.0, 1.0)
