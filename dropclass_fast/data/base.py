"""What every dataset shares: the item protocol, per-item random generators and the epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int, is_int
from .io import check_same_size, map_label_ids, read_image, read_label
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


def check_split(split: object, splits: tuple[str, ...], dataset: str) -> str:
    """``ValueError`` naming the value and the choices unless ``split`` is one of ``splits``."""
    if split not in splits:
        raise ValueError(f"split must be one of {splits} for {dataset}, got {split!r}")
    return split  # type: ignore[return-value]


def check_seed(seed: object) -> int:
    """``seed`` as an int in ``[0, 2**32)``: NumPy seeds cannot be negative, and NumPy splits a larger one into
    32-bit words, so ``[2**32, epoch, 0]`` would seed what ``[0, 1, epoch]`` does."""
    if not is_int(seed) or not 0 <= seed < 2**32:  # type: ignore[operator]
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class: subclasses set the class table and implement ``__len__`` and ``load_raw``.

    ``dataset[i]`` is ``transform(*load_raw(i), rng)`` with
    ``rng = numpy.random.default_rng([seed, epoch, i])``: an item's
    augmentation depends only on (seed, epoch, index), not on the worker
    process or on global random state, so a resumed run sees the same crops.
    The epoch lives in a shared-memory tensor: ``set_epoch`` in the main
    process reaches DataLoader workers, persistent ones included, as long as
    it is called before the epoch's iterator is created.

    Attributes (class table, set by subclasses):
        num_classes: ``K``; train ids are ``0 .. K-1``.
        class_names: ``K`` names.
        palette: uint8 ``[K, 3]`` RGB colour of each class, for visualisation.
        ignore_index: label value of unlabelled pixels (255).
        mean, std: RGB normalisation constants in [0, 1] units.
    """

    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int = 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, transform: Transform | None = None, seed: int = 0) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (image, label, rng) or None, got {type(transform).__name__}")
        self.transform: Transform = transform if transform is not None else EvalTransform(self.mean, self.std)
        self.seed = check_seed(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        raise NotImplementedError

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` before any transform: image uint8 ``[H, W, 3]`` (RGB), label uint8 ``[H, W]`` (train ids)."""
        raise NotImplementedError

    def use_training_augmentation(self, crop_size: tuple[int, int]) -> None:
        """Sets ``transform`` to the training augmentation: :class:`TrainTransform` at ``crop_size``
        ``(height, width)`` with this dataset's ``mean``, ``std`` and ``ignore_index``."""
        self.transform = TrainTransform(crop_size, mean=self.mean, std=self.std, ignore_index=self.ignore_index)

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation ``__getitem__`` draws (see :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation of epoch ``epoch`` (a non-negative int)."""
        self._epoch.fill_(check_int("epoch", epoch, minimum=0))

    def check_index(self, index: object) -> int:
        """``index`` in ``[-len, len)`` as a non-negative int; ``IndexError`` outside, ``TypeError`` for a non-int."""
        if not is_int(index):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {length}")
        return int(index) % length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image float32 ``[3, H, W]`` (normalised) and label int64 ``[H, W]`` (train ids, ``ignore_index``)."""
        index = self.check_index(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.load_raw(index)
        return self.transform(image, label, rng)


class FilePairDataset(SegmentationDataset):
    """A dataset of image and label files whose stored label ids a lookup table maps to train ids.

    Subclasses set ``items`` (``(image_path, label_path)`` pairs), ``label_lookup``
    (uint8 ``[256]``: stored id -> train id) and ``label_valid`` (bool ``[256]``:
    the ids a label file may hold).
    """

    items: list[tuple[Path, Path]]
    label_lookup: np.ndarray
    label_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 ``[H, W, 3]`` and label uint8 ``[H, W]`` in train ids (``ignore_index`` where ignored)."""
        image_path, label_path = self.items[self.check_index(index)]
        image, stored = read_image(image_path), read_label(label_path)
        check_same_size(image, stored, image_path, label_path)
        return image, map_label_ids(stored, self.label_lookup, self.label_valid, label_path)
