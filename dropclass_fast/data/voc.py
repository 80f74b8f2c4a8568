"""Pascal VOC 2012 segmentation, optionally with the SBD augmented training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._checks import check_bool
from .base import FilePairDataset, Transform, check_split

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_STORED_CLASSES = len(CLASS_NAMES)  # palette indices 0..20 in the label files, 255 = border / difficult


def voc_palette(num_colours: int = 256) -> np.ndarray:
    """The VOC colour map, uint8 ``[num_colours, 3]``: the bits of the index spread over R, G, B."""
    index = np.arange(num_colours)
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def expected_layout(root: Path, list_name: str, label_dir: str) -> str:
    return (
        f"expected {root}/ImageSets/Segmentation/{list_name}.txt (one image id per line), "
        f"{root}/JPEGImages/<id>.jpg and {root}/{label_dir}/<id>.png (label PNG of class indices)"
    )


def _read_ids(list_path: Path) -> list[str]:
    """Image ids of a list file: the first token of each line, reduced to a file stem
    (accepts both ``2007_000032`` and ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``)."""
    ids = []
    for line in list_path.read_text().splitlines():
        if line.strip():
            ids.append(Path(line.split()[0]).stem)
    return ids


class VOC(FilePairDataset):
    """Pascal VOC 2012 segmentation: 21 classes, or 20 with ``no_background`` (the paper's setting).

    Layout under ``root`` (the ``VOCdevkit/VOC2012`` directory):
    ``ImageSets/Segmentation/{split}.txt``, ``JPEGImages/{id}.jpg`` and
    ``SegmentationClass/{id}.png`` (palette PNGs, read as palette indices:
    0 background, 1..20 objects, 255 borders and difficult regions).
    With ``sbd=True`` the ``"train"`` split is the SBD augmented set:
    ``ImageSets/Segmentation/train_aug.txt`` and labels from
    ``SegmentationClassAug/{id}.png``; ``"val"`` and ``"trainval"`` keep the
    official lists and labels, so evaluation is always on VOC 2012 val.
    Every listed id must have both files (checked when the dataset is built);
    a label index outside 0..20 and 255 raises.

    Args:
        root: the VOC2012 directory.
        split: ``"train"``, ``"val"`` or ``"trainval"``.
        transform: ``(image, label, rng) -> (image, label)``; default: normalisation only.
        seed: seeds the per-item augmentation generators.
        no_background: background pixels become ``ignore_index`` and the
            object classes are renumbered 0..19 (aeroplane = 0).
        sbd: train on the SBD augmented set (see above).
    """

    splits = ("train", "val", "trainval")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        seed: int = 0,
        no_background: bool = False,
        sbd: bool = False,
    ) -> None:
        super().__init__(transform, seed)
        self.split = check_split(split, self.splits, "voc")
        no_background, sbd = check_bool("no_background", no_background), check_bool("sbd", sbd)
        self.root = Path(root)
        self.no_background = no_background
        self.sbd = sbd
        first = 1 if no_background else 0
        self.class_names = CLASS_NAMES[first:]
        self.num_classes = len(self.class_names)
        self.palette = voc_palette(NUM_STORED_CLASSES)[first:]
        self.label_lookup = np.full(256, self.ignore_index, dtype=np.uint8)
        self.label_lookup[first:NUM_STORED_CLASSES] = np.arange(NUM_STORED_CLASSES - first)
        self.label_valid = np.zeros(256, dtype=bool)
        self.label_valid[:NUM_STORED_CLASSES] = True
        self.label_valid[255] = True
        self.items = self._find_items()

    def _find_items(self) -> list[tuple[Path, Path]]:
        use_sbd = self.sbd and self.split == "train"
        list_name, label_dir = ("train_aug", "SegmentationClassAug") if use_sbd else (self.split, "SegmentationClass")
        layout = expected_layout(self.root, list_name, label_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root} is not a directory; {layout}")
        list_path = self.root / "ImageSets" / "Segmentation" / f"{list_name}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"VOC list file {list_path} not found; {layout}")
        ids = _read_ids(list_path)
        if not ids:
            raise ValueError(f"VOC list file {list_path} lists no image ids; {layout}")
        items = []
        for image_id in ids:
            image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
            label_path = self.root / label_dir / f"{image_id}.png"
            for path in (image_path, label_path):
                if not path.is_file():
                    raise FileNotFoundError(f"VOC file {path} (listed in {list_path}) not found; {layout}")
            items.append((image_path, label_path))
        return items
