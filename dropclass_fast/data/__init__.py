"""Segmentation datasets and joint image/label transforms.

>>> from dropclass_fast.data import build_dataset, TrainTransform
>>> ds = build_dataset("synthetic", "train", length=512, size=(128, 256))
>>> ds.transform = TrainTransform((96, 192), mean=ds.mean, std=ds.std)
>>> ds.set_epoch(3)
>>> image, label = ds[0]      # float32 [3, 96, 192] normalised, int64 [96, 192] (255 = ignore)

Every dataset has ``__len__``, ``__getitem__``, ``load_raw`` (uint8 arrays
before any transform), ``num_classes``, ``class_names``, ``palette``,
``ignore_index``, ``mean``/``std`` and ``set_epoch``; item ``i`` of epoch ``e``
is augmented from ``numpy.random.default_rng([seed, e, i])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._checks import check_choice
from .base import SegmentationDataset, Transform
from .cityscapes import Cityscapes
from .synthetic import SceneConfig, SyntheticStreets, make_scene
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, Normalize, TrainTransform
from .voc import VOC

DATASET_NAMES: tuple[str, ...] = ("cityscapes", "voc", "synthetic")


def build_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    transform: Transform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """The dataset ``name`` (one of :data:`DATASET_NAMES`), split ``split``.

    ``root`` is the dataset directory for ``"cityscapes"`` and ``"voc"`` (required)
    and must be ``None`` for ``"synthetic"``. ``kwargs`` go to the dataset class:
    ``seed`` for all; ``no_background`` and ``sbd`` for VOC; ``length``, ``size``
    and the :class:`SceneConfig` options for the synthetic scenes.
    """
    check_choice("name", name, DATASET_NAMES)
    if name == "synthetic":
        if root is not None:
            raise ValueError(f"the synthetic dataset is generated, it reads no files: root must be None, got {root!r}")
        return SyntheticStreets(split, transform=transform, **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<dataset directory>, got None")
    dataset_class = Cityscapes if name == "cityscapes" else VOC
    return dataset_class(root, split, transform=transform, **kwargs)


__all__ = [
    "DATASET_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC",
    "Cityscapes",
    "EvalTransform",
    "Normalize",
    "SceneConfig",
    "SegmentationDataset",
    "SyntheticStreets",
    "TrainTransform",
    "Transform",
    "build_dataset",
    "make_scene",
]
