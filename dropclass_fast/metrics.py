"""Segmentation metrics from a confusion matrix accumulated on device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """A ``[K, K]`` int64 confusion matrix (rows: label, columns: prediction).

    Accumulates on the device of the first update, so evaluation never copies
    predictions to the host; :meth:`all_reduce` sums it over DDP ranks.

    Args:
        num_classes: ``K``.
        ignore_index: label value that is not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``prediction`` and ``target`` integer tensors of the same shape.

        Pixels whose target is ``ignore_index`` are skipped; any other target
        outside ``[0, K)`` or prediction outside ``[0, K)`` is a ``ValueError``.
        """
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
                f"and {tuple(target.shape)}"
            )
        if prediction.is_floating_point() or target.is_floating_point():
            raise TypeError(f"prediction and target must be integer tensors, got {prediction.dtype} and {target.dtype}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        k = self.num_classes
        target = target.reshape(-1).long()
        prediction = prediction.reshape(-1).to(target.device).long()
        valid = target != self.ignore_index
        target, prediction = target[valid], prediction[valid]
        bad = (target < 0) | (target >= k) | (prediction < 0) | (prediction >= k)
        if bool(bad.any()):
            raise ValueError(
                f"target values must be in [0, {k}) or {self.ignore_index} and predictions in [0, {k}); got "
                f"target {sorted(set(target[bad].unique().tolist()))}, "
                f"prediction {sorted(set(prediction[bad].unique().tolist()))}"
            )
        self.matrix += torch.bincount(target * k + prediction, minlength=k * k).view(k, k)

    def all_reduce(self) -> None:
        """Sums the matrix over all ranks of the default process group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per-class IoU ``[K]`` float64 (TP / union); NaN where a class is in neither labels nor predictions."""
        matrix = self.matrix.double()
        tp = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan"))).cpu()

    def pixel_accuracy(self) -> float:
        """Correct pixels over counted pixels (NaN when nothing was counted)."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")


def mean_iou(iou: torch.Tensor) -> float:
    """Mean of the per-class IoUs that are defined (NaN entries skipped)."""
    return float(iou.nanmean()) if bool((~iou.isnan()).any()) else float("nan")


def format_iou_table(class_names: Sequence[str], ious: Mapping[str, torch.Tensor]) -> str:
    """A Markdown table of per-class IoU (in %) with one column per model and a final mIoU row.

    ``ious`` maps a column title to a ``[K]`` IoU tensor. With exactly two
    columns a third gives their difference (second minus first).
    """
    titles = list(ious)
    for title, values in ious.items():
        if values.numel() != len(class_names):
            raise ValueError(f"ious[{title!r}] has {values.numel()} entries for {len(class_names)} classes")
    with_delta = len(titles) == 2

    def row(name: str, values: list[float]) -> str:
        cells = [_percent(v) for v in values]
        if with_delta:
            delta = values[1] - values[0]
            cells.append("n/a" if delta != delta else f"{delta:+.1f}")
        return "| " + " | ".join([name, *cells]) + " |"

    header = ["class", *titles, *(["delta"] if with_delta else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += [row(name, [float(ious[t][c]) * 100 for t in titles]) for c, name in enumerate(class_names)]
    lines.append(row("mIoU", [mean_iou(ious[t]) * 100 for t in titles]))
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"
