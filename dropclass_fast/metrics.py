"""Segmentation metrics from a confusion matrix accumulated on device (and summed over DDP ranks): per-class
IoU, mIoU, and the paper's subsets: ``mIoU†`` over the least frequent half of the classes (Table C-2) and
``mIoU*`` over the classes most vulnerable to bias, i.e. of largest IoU drop on ``I*`` (Table B-1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from ._checks import IntListLike, check_ignore_index, check_int, check_int_in, int_list, require_tensor


class ConfusionMatrix:
    """A ``[K, K]`` int64 confusion matrix (rows: label, columns: prediction).

    Accumulates on the device of the first update, so evaluation never copies
    predictions to the host; :meth:`all_reduce` sums it over DDP ranks.

    Args:
        num_classes: ``K``.
        ignore_index: label value that is not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = check_int("num_classes", num_classes)
        self.ignore_index = check_ignore_index(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``prediction`` and ``target`` integer tensors of the same shape.

        Pixels whose target is ``ignore_index`` are skipped; any other target
        outside ``[0, K)`` or prediction outside ``[0, K)`` is a ``ValueError``.
        """
        prediction, target = require_tensor("prediction", prediction), require_tensor("target", target)
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
                f"and {tuple(target.shape)}"
            )
        if any(t.is_floating_point() or t.is_complex() for t in (prediction, target)):
            raise TypeError(f"prediction and target must be integer tensors, got {prediction.dtype} and {target.dtype}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        k = self.num_classes
        target = target.reshape(-1).long()
        prediction = prediction.reshape(-1).to(target.device).long()
        valid = target != self.ignore_index
        target, prediction = target[valid], prediction[valid]
        bad_target = (target < 0) | (target >= k)
        bad_prediction = (prediction < 0) | (prediction >= k)
        if bool((bad_target | bad_prediction).any()):
            raise ValueError(
                f"target values must be in [0, {k}) or {self.ignore_index} and predictions in [0, {k}); got "
                f"target {target[bad_target].unique().tolist()}, "
                f"prediction {prediction[bad_prediction].unique().tolist()}"
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
    """Mean of the per-class IoUs ``iou`` (floating ``[K]``) that are defined (NaN entries skipped)."""
    iou = _check_vector(iou, "iou")
    return float(iou.nanmean()) if bool((~iou.isnan()).any()) else float("nan")


def format_iou_table(class_names: Sequence[str], ious: Mapping[str, torch.Tensor]) -> str:
    """A Markdown table of per-class IoU (in %) with one column per model and a final mIoU row.

    ``ious`` maps a column title to a ``[K]`` IoU tensor. With exactly two
    columns a third gives their difference (second minus first).
    """
    ious = check_iou_columns(class_names, ious)
    titles = list(ious)
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


def check_iou_columns(class_names: Sequence[str], ious: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ious`` with each column detached; TypeError naming the column unless every value is a 1-D floating tensor,
    ValueError unless it has one entry per class of ``class_names``."""
    columns = {title: _check_vector(values, f"ious[{title!r}]") for title, values in ious.items()}
    for title, values in columns.items():
        if values.numel() != len(class_names):
            raise ValueError(f"ious[{title!r}] has {values.numel()} entries for {len(class_names)} classes")
    return columns


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"


def subset_miou(iou: torch.Tensor, classes: IntListLike) -> float:
    """Mean of ``iou`` (floating ``[K]``) over the class indices ``classes`` (NaN entries skipped, as in
    :func:`mean_iou`): distinct integers, as a sequence or a 1-D integer tensor or array (floats and bools are
    refused, not truncated)."""
    iou = _check_vector(iou, "iou")
    indices = _check_class_indices(classes, iou.numel(), "classes")
    return mean_iou(iou[indices])


def least_frequent_classes(frequency: torch.Tensor, count: int | None = None) -> list[int]:
    """The ``count`` classes of lowest ``frequency`` (floating ``[K]``), least frequent first; the ``mIoU†`` set.

    ``count`` defaults to ``K // 2`` (Table C-2: the 10 least frequent of VOC's 20
    classes). Ties keep the class order.
    """
    frequency = _check_vector(frequency, "frequency")
    k = frequency.numel()
    count = k // 2 if count is None else check_int_in("count", count, 1, k, "the number of classes")
    if bool(frequency.isnan().any()):
        raise ValueError(f"frequency must not contain NaN, got {frequency.tolist()}")
    return torch.sort(frequency.double().cpu(), stable=True).indices[:count].tolist()


def most_vulnerable_classes(delta: torch.Tensor, count: int = 9) -> list[int]:
    """The ``count`` classes with the largest IoU drop (most negative ``delta = IoU(I*) - IoU(I)``, floating
    ``[K]``), largest first.

    The ``mIoU*`` set of Table B-1 (9 of Cityscapes' 19 classes). NaN deltas
    (classes absent from the evaluation) come last; ties keep the class order.
    """
    delta = _check_vector(delta, "delta")
    count = check_int_in("count", count, 1, delta.numel(), "the number of classes")
    return vulnerability_order(delta)[:count]


def vulnerability_order(delta: torch.Tensor) -> list[int]:
    """Every class index sorted by ``delta`` (floating ``[K]``) ascending (largest drop first), NaN last; Table
    B-1's column order."""
    delta = _check_vector(delta, "delta").double().cpu()
    key = torch.where(delta.isnan(), torch.full_like(delta, float("inf")), delta)
    return torch.sort(key, stable=True).indices.tolist()


def miou_least_frequent(iou: torch.Tensor, frequency: torch.Tensor, count: int | None = None) -> float:
    """``mIoU†``: the mean of ``iou`` over the ``count`` least frequent classes of ``frequency`` (default: the least
    frequent half); both floating ``[K]``."""
    return subset_miou(iou, least_frequent_classes(frequency, count))


def miou_most_vulnerable(iou: torch.Tensor, delta: torch.Tensor, count: int = 9) -> float:
    """``mIoU*``: the mean of ``iou`` over the ``count`` classes with the largest drop in ``delta``; both floating
    ``[K]``."""
    return subset_miou(iou, most_vulnerable_classes(delta, count))


def _check_vector(values: object, name: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point():
        got = f"shape {tuple(values.shape)}, dtype {values.dtype}" if isinstance(values, torch.Tensor) else type(values)
        raise TypeError(f"{name} must be a 1-D floating tensor [K], got {got}")
    return values.detach()


def _check_class_indices(classes: object, num_classes: int, name: str) -> list[int]:
    indices = int_list(name, classes, "class indices")
    if not indices or any(not 0 <= c < num_classes for c in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"{name} must be distinct class indices in [0, {num_classes}), got {indices}")
    return indices
