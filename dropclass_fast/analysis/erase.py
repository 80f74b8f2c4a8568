"""Unbiased test images ``I*``: chosen classes' pixels erased (filled with one colour) and their labels ignored."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._checks import IntListLike, int_list, is_int
from ..data import SegmentationDataset
from ..data.transforms import check_pair

Fill = str | Sequence[int]


def check_fill(fill: object) -> Fill:
    """``fill`` itself; ValueError unless it is ``"mean"`` or three integers in ``[0, 255]``."""
    if isinstance(fill, str):
        if fill == "mean":
            return fill
    elif isinstance(fill, (Sequence, np.ndarray)):
        values = list(fill)
        if len(values) == 3 and all(
            is_int(v) and 0 <= v <= 255 for v in values
        ):
            return fill
    raise ValueError(f"fill must be 'mean' or an RGB triple of ints in [0, 255], got {fill!r}")


def fill_colour(dataset: SegmentationDataset, fill: Fill = "mean") -> np.ndarray:
    """The RGB colour that replaces erased pixels, uint8 ``[3]``.

    ``fill`` is ``"mean"`` (the dataset's mean colour, which normalises to 0)
    or three integers in ``[0, 255]``.
    """
    if isinstance(check_fill(fill), str):
        return np.array([round(255 * m) for m in dataset.mean], dtype=np.uint8)
    return np.array(list(fill), dtype=np.uint8)


def erase_classes(
    image: np.ndarray, label: np.ndarray, classes: Sequence[int], fill: np.ndarray, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``image`` (uint8 ``[H, W, 3]``) and ``label`` (uint8 ``[H, W]``) with every pixel of
    ``classes`` set to ``fill`` (uint8 ``[3]``) in the image and to ``ignore_index`` in the label.

    Nothing else changes.
    """
    check_pair(image, label)
    fill = np.asarray(fill)
    if fill.shape != (3,) or fill.dtype != np.uint8:
        raise ValueError(f"fill must be a uint8 array [3], got dtype {fill.dtype}, shape {fill.shape}")
    erased = np.isin(label, np.asarray(list(classes), dtype=np.int64))
    image, label = image.copy(), label.copy()
    image[erased] = fill
    label[erased] = ignore_index
    return image, label


def check_class_ids(name: str, classes: object, num_classes: int) -> tuple[int, ...]:
    """``classes`` as sorted distinct ints; TypeError naming ``name`` unless it is a sequence of integers or a 1-D
    integer tensor or array (:func:`~dropclass_fast._checks.int_list`), ValueError unless each is a train id in
    ``[0, num_classes)``."""
    ids = int_list(name, classes, "train ids")
    if any(not 0 <= c < num_classes for c in ids):
        raise ValueError(f"{name} must be train ids in [0, {num_classes}), got {ids}")
    return tuple(sorted(set(ids)))


class ErasedDataset(SegmentationDataset):
    """``dataset`` with the pixels of ``classes`` erased: the unbiased images ``I*`` of Table B-1.

    A thin wrapper: item ``i`` is ``dataset.load_raw(i)`` passed through
    :func:`erase_classes` and then ``dataset.transform`` (with the same
    per-item generator as ``dataset[i]``), so ``ErasedDataset(ds, [])[i]`` equals
    ``ds[i]``. The class table, seed and transform are the wrapped dataset's, and so is the epoch
    at construction (``set_epoch`` on the wrapper sets its own).

    Args:
        dataset: any :class:`~dropclass_fast.data.SegmentationDataset`.
        classes: train ids to erase (may be empty): a sequence of ints or a 1-D integer tensor or array.
        fill: ``"mean"`` (the dataset's mean colour) or an RGB triple of ints in ``[0, 255]``.
    """

    def __init__(self, dataset: SegmentationDataset, classes: IntListLike, fill: Fill = "mean") -> None:
        if not isinstance(dataset, SegmentationDataset):
            raise TypeError(f"dataset must be a SegmentationDataset, got {type(dataset).__name__}")
        classes = check_class_ids("classes", classes, dataset.num_classes)
        super().__init__(dataset.transform, dataset.seed)
        self.dataset = dataset
        self.classes = classes
        self.fill = fill_colour(dataset, fill)
        self.num_classes = dataset.num_classes
        self.class_names = dataset.class_names
        self.palette = dataset.palette
        self.ignore_index = dataset.ignore_index
        self.mean, self.std = dataset.mean, dataset.std
        self.set_epoch(dataset.epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` of the wrapped dataset, erased: image uint8 ``[H, W, 3]``, label uint8 ``[H, W]``."""
        image, label = self.dataset.load_raw(self.check_index(index))
        return erase_classes(image, label, self.classes, self.fill, self.ignore_index)
