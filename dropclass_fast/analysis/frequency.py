"""Class frequency of a dataset in one streaming pass: pixel frequency (Cityscapes) or image frequency (VOC)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._checks import check_choice, check_optional_int
from ..data import SegmentationDataset

FREQUENCY_MODES = ("pixel", "image")


class _LabelCounts(Dataset):
    """Item ``i``: per-class pixel counts ``[K]`` int64 of ``dataset.load_raw(i)``'s label (ignore not counted)."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        label = self.dataset.load_raw(index)[1].reshape(-1)
        k = self.dataset.num_classes
        label = label[label != self.dataset.ignore_index].astype(np.int64)
        if label.size and int(label.max()) >= k:
            raise ValueError(f"item {index} has label values {sorted(set(label[label >= k].tolist()))} >= K = {k}")
        return torch.from_numpy(np.bincount(label, minlength=k))


def paper_frequency_mode(dataset: str) -> str:
    """The frequency the paper sorts ``dataset``'s classes by: image (instance) frequency on VOC, pixel otherwise."""
    return "image" if dataset == "voc" else "pixel"


def class_frequency(
    dataset: SegmentationDataset, mode: str = "pixel", workers: int = 0, limit: int | None = None
) -> torch.Tensor:
    """Normalised class frequency ``[K]`` float64 (sums to 1) over the labels of ``dataset``.

    One pass over ``dataset.load_raw`` (labels before any transform), in
    ``workers`` DataLoader processes, over the first ``limit`` items (default: all).

    Args:
        mode: ``"pixel"``: each class's share of all labelled pixels (Cityscapes,
            Table B-1); ``"image"``: the number of images each class appears in,
            normalised over the classes (VOC's "instance frequency", Table C-2).
    """
    check_choice("mode", mode, FREQUENCY_MODES)
    if not isinstance(dataset, SegmentationDataset):
        raise TypeError(f"dataset must be a SegmentationDataset, got {type(dataset).__name__}")
    limit = check_optional_int("limit", limit)
    counts: Dataset = _LabelCounts(dataset)
    if limit is not None:
        counts = torch.utils.data.Subset(counts, range(min(limit, len(dataset))))
    total = torch.zeros(dataset.num_classes, dtype=torch.float64)
    for batch in DataLoader(counts, batch_size=8, num_workers=workers):
        total += (batch if mode == "pixel" else batch > 0).double().sum(0)
    if float(total.sum()) == 0:
        raise ValueError(f"dataset {type(dataset).__name__} has no labelled pixel in the items counted")
    return total / total.sum()
