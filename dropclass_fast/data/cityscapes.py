"""Cityscapes fine annotations: ``leftImg8bit`` images, ``gtFine`` labelIds mapped to the 19 train ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FilePairDataset, Transform, check_split

# The official table (cityscapesScripts, helpers/labels.py): label id -> train id, 255 = ignored in training.
# License plate has id -1 and is never written to the labelIds images, so every stored id is in 0..33.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# official colours of the 19 train classes
PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

_LOOKUP = np.full(256, 255, dtype=np.uint8)
_VALID = np.zeros(256, dtype=bool)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _LOOKUP[_label_id] = _train_id
    _VALID[_label_id] = True

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def expected_layout(root: Path, split: str) -> str:
    return (
        f"expected {root}/leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX} and "
        f"{root}/gtFine/{split}/<city>/*{LABEL_SUFFIX}"
    )


class Cityscapes(FilePairDataset):
    """Cityscapes with fine annotations: 19 classes, 255 = ignore.

    Layout under ``root``: ``leftImg8bit/{split}/{city}/{name}_leftImg8bit.png``
    and ``gtFine/{split}/{city}/{name}_gtFine_labelIds.png``. Items are sorted
    by city and file name. Every image must have its label file (checked when
    the dataset is built); label ids are mapped to train ids with the official
    table (:data:`LABEL_ID_TO_TRAIN_ID`) and an id outside 0..33 raises. Real
    images are ``[1024, 2048, 3]``.

    Args:
        root: the Cityscapes directory.
        split: ``"train"``, ``"val"`` or ``"test"`` (test labels are all "unlabeled").
        transform: ``(image, label, rng) -> (image, label)``; default: normalisation only.
        seed: seeds the per-item augmentation generators.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    palette = PALETTE
    splits = ("train", "val", "test")
    label_lookup = _LOOKUP
    label_valid = _VALID

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None, seed: int = 0):
        super().__init__(transform, seed)
        self.split = check_split(split, self.splits, "cityscapes")
        self.root = Path(root)
        self.items = self._find_items()

    def _find_items(self) -> list[tuple[Path, Path]]:
        layout = expected_layout(self.root, self.split)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Cityscapes root {self.root} is not a directory; {layout}")
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / "gtFine" / self.split
        for directory in (image_dir, label_dir):
            if not directory.is_dir():
                raise FileNotFoundError(f"Cityscapes directory {directory} not found; {layout}")
        items = []
        for image_path in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            name = image_path.name[: -len(IMAGE_SUFFIX)]
            label_path = label_dir / image_path.parent.name / f"{name}{LABEL_SUFFIX}"
            if not label_path.is_file():
                raise FileNotFoundError(f"Cityscapes image {image_path} has no label file {label_path}; {layout}")
            items.append((image_path, label_path))
        if not items:
            raise FileNotFoundError(f"no Cityscapes images found under {image_dir}; {layout}")
        return items
