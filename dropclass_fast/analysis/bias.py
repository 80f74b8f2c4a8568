"""Bias vulnerability (supplementary Table B-1): class influence, Top-k influential classes, IoU on ``I`` and ``I*``.

The influence of class ``j`` on class ``c`` is the drop of ``c``'s IoU when
``j``'s pixels are erased from the test images. Each class ``c`` gets the
``k`` (3 in the paper) classes of largest influence on a *reference* model
(the baseline's or DropClass's, the paper's two variants); ``c``'s IoU on the
unbiased images ``I*`` is measured on the test images with those classes
erased. ``Δ = IoU(I*) - IoU(I)``; ``mIoU*`` averages over the classes with the
largest drop on the reference model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import IntListLike, check_int_in
from ..data import SegmentationDataset
from ..metrics import mean_iou, subset_miou, vulnerability_order
from ._evaluation import DEFAULT_EVAL, EvalOptions, confusion_of
from .erase import ErasedDataset, Fill, check_class_ids, check_fill


def class_influence(
    model: nn.Module, dataset: SegmentationDataset, fill: Fill = "mean", options: EvalOptions = DEFAULT_EVAL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU on ``dataset`` and the influence matrix of ``model``.

    Returns:
        ``iou`` ``[K]`` float64 on the original images, and ``influence``
        ``[K, K]`` float64 with ``influence[c, j] = iou[c] - IoU_c(dataset with j erased)``
        (positive: erasing ``j`` hurts ``c``); NaN on the diagonal and where an IoU is undefined.
        ``K + 1`` evaluation passes.
    """
    k = dataset.num_classes
    iou = confusion_of(model, dataset, k, options).iou()
    influence = torch.full((k, k), float("nan"), dtype=torch.float64)
    for j in range(k):
        erased = confusion_of(model, ErasedDataset(dataset, [j], fill), k, options).iou()
        influence[:, j] = iou - erased
    influence.fill_diagonal_(float("nan"))
    return iou, influence


def top_influential(influence: torch.Tensor, count: int = 3) -> tuple[tuple[int, ...], ...]:
    """For each class ``c``, the ``count`` classes ``j != c`` of largest ``influence[c, j]``, largest first.

    ``influence``: ``[K, K]`` as from :func:`class_influence`; NaN entries rank
    last, ties keep the class order.
    """
    if not isinstance(influence, torch.Tensor) or influence.dim() != 2 or influence.shape[0] != influence.shape[1]:
        raise ValueError(f"influence must be a square [K, K] tensor, got {getattr(influence, 'shape', influence)!r}")
    k = influence.shape[0]
    count = check_int_in("count", count, 1, k - 1, "other classes")
    key = torch.nan_to_num(influence.double().cpu(), nan=float("-inf"))
    key.fill_diagonal_(float("nan"))  # sorts after -inf: a class never influences itself
    order = torch.sort(-key, dim=1, stable=True).indices
    return tuple(tuple(order[c, :count].tolist()) for c in range(k))


def unbiased_iou(
    model: nn.Module,
    dataset: SegmentationDataset,
    erase_sets: Sequence[IntListLike],
    fill: Fill = "mean",
    options: EvalOptions = DEFAULT_EVAL,
) -> torch.Tensor:
    """IoU on ``I*``, ``[K]`` float64: entry ``c`` is class ``c``'s IoU on ``dataset`` with ``erase_sets[c]`` erased.

    Each erase set is a sequence of train ids or a 1-D integer tensor or array; classes with the same erase set share
    one evaluation pass.
    """
    k = dataset.num_classes
    if len(erase_sets) != k:
        raise ValueError(f"erase_sets must have one set per class ({k}), got {len(erase_sets)}")
    result = torch.full((k,), float("nan"), dtype=torch.float64)
    groups: dict[tuple[int, ...], list[int]] = {}
    for c, classes in enumerate(erase_sets):
        key = check_class_ids(f"erase_sets[{c}]", classes, k)
        if c in key:
            raise ValueError(f"erase_sets[{c}] = {list(key)} contains class {c} itself")
        groups.setdefault(key, []).append(c)
    for key, members in groups.items():
        iou = confusion_of(model, ErasedDataset(dataset, key, fill), k, options).iou()
        result[members] = iou[members]
    return result


@dataclass(frozen=True)
class BiasReport:
    """Table B-1 for several models on one dataset.

    Attributes:
        class_names: ``K`` names.
        reference: the model (a key of ``iou``) whose influences chose the erased classes.
        top: per class, the erased Top-k classes (chosen on ``reference``).
        influence: ``[K, K]`` influence matrix of ``reference`` (see :func:`class_influence`).
        iou: model name -> per-class IoU ``[K]`` on ``I``.
        iou_star: model name -> per-class IoU ``[K]`` on ``I*``.
        vulnerable_count: how many classes ``mIoU*`` averages (9 in the paper).
    """

    class_names: tuple[str, ...]
    reference: str
    top: tuple[tuple[int, ...], ...]
    influence: torch.Tensor
    iou: dict[str, torch.Tensor]
    iou_star: dict[str, torch.Tensor]
    vulnerable_count: int

    @property
    def models(self) -> list[str]:
        """The names of the models evaluated, in order."""
        return list(self.iou)

    def delta(self, model: str) -> torch.Tensor:
        """``IoU(I*) - IoU(I)`` of ``model``, ``[K]`` float64."""
        return self.iou_star[model] - self.iou[model]

    @property
    def order(self) -> list[int]:
        """Class indices by the reference model's Δ, largest drop first (Table B-1's columns)."""
        return vulnerability_order(self.delta(self.reference))

    @property
    def vulnerable(self) -> list[int]:
        """The ``vulnerable_count`` classes of largest drop on the reference model: the ``mIoU*`` set."""
        return self.order[: self.vulnerable_count]

    def summary(self, model: str) -> dict[str, float]:
        """``mIoU`` and ``mIoU*`` of ``model`` on ``I`` and ``I*`` and their Δ (fractions, not %)."""
        iou, star = self.iou[model], self.iou_star[model]
        result = {
            "miou": mean_iou(iou),
            "miou_unbiased": mean_iou(star),
            "miou_star": subset_miou(iou, self.vulnerable),
            "miou_star_unbiased": subset_miou(star, self.vulnerable),
        }
        result["delta_miou"] = result["miou_unbiased"] - result["miou"]
        result["delta_miou_star"] = result["miou_star_unbiased"] - result["miou_star"]
        return result


def check_protocol(num_classes: int, top_count: int, vulnerable_count: int, fill: Fill) -> tuple[int, int]:
    """``(top_count, vulnerable_count)`` as Python ints; ValueError naming the argument unless ``top_count`` is in
    ``[1, K - 1]`` (other classes), ``vulnerable_count`` in ``[1, K]`` and ``fill`` a valid colour: checked before
    any evaluation pass."""
    check_fill(fill)
    return (
        check_int_in("top_count", top_count, 1, num_classes - 1, "other classes"),
        check_int_in("vulnerable_count", vulnerable_count, 1, num_classes),
    )


def bias_vulnerability(
    models: Mapping[str, nn.Module],
    dataset: SegmentationDataset,
    reference: str,
    top_count: int = 3,
    vulnerable_count: int = 9,
    fill: Fill = "mean",
    options: EvalOptions = DEFAULT_EVAL,
) -> BiasReport:
    """Runs the Table B-1 protocol for ``models`` (name -> model in eval mode or not; evaluation switches it).

    The influences of ``models[reference]`` choose each class's ``top_count``
    erased classes; every model is then evaluated on ``I`` and on ``I*``.
    Evaluation passes: ``K + 1`` for the reference influences, and per model
    one for ``I`` (the reference's is reused) and one per distinct erase set.
    """
    if reference not in models:
        raise ValueError(f"reference must be one of the models {list(models)}, got {reference!r}")
    k = dataset.num_classes
    top_count, vulnerable_count = check_protocol(k, top_count, vulnerable_count, fill)
    reference_iou, influence = class_influence(models[reference], dataset, fill, options)
    top = top_influential(influence, top_count)
    iou, iou_star = {}, {}
    for name, model in models.items():
        iou[name] = reference_iou if name == reference else confusion_of(model, dataset, k, options).iou()
        iou_star[name] = unbiased_iou(model, dataset, top, fill, options)
    return BiasReport(tuple(dataset.class_names), reference, top, influence, iou, iou_star, vulnerable_count)
