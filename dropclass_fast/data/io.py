"""Reading dataset files with Pillow: RGB images and single-channel label maps.

Every failure names the file: a missing file is a ``FileNotFoundError``, an
unreadable or corrupt one an ``OSError``, a label file that is not a
single-channel 8-bit map a ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow modes that hold one 8-bit value per pixel: "L" (grey levels, e.g. Cityscapes labelIds,
# SBD SegmentationClassAug) and "P" (palette indices, e.g. VOC SegmentationClass).
LABEL_MODES = ("L", "P")


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        image = Image.open(path)
        image.load()  # decode now, so that a truncated file fails here and not later
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise OSError(f"cannot read {what} file {path}: {exc}") from exc
    return image


def read_image(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, ...) as RGB: uint8 ``[H, W, 3]``."""
    image = _open(Path(path), "image")
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """A label map as stored: uint8 ``[H, W]`` (palette PNGs give palette indices, not colours).

    Raises ``ValueError`` when the file is not a single-channel 8-bit image
    (Pillow mode "L" or "P"): an RGB rendering of a label map would otherwise
    be read as wrong class ids.
    """
    path = Path(path)
    image = _open(path, "label")
    if image.mode not in LABEL_MODES:
        raise ValueError(
            f"label file {path} has Pillow mode {image.mode!r}; expected a single-channel 8-bit map "
            f"(mode 'L' grey levels or 'P' palette indices)"
        )
    return np.array(image, dtype=np.uint8)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """``ValueError`` naming both files when an image ``[H, W, 3]`` and its label ``[H, W]`` differ in size."""
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"image {image_path} is {image.shape[0]}x{image.shape[1]} but its label {label_path} is "
            f"{label.shape[0]}x{label.shape[1]}"
        )


def map_label_ids(label: np.ndarray, lookup: np.ndarray, valid: np.ndarray, path: Path) -> np.ndarray:
    """Maps stored label ids to train ids through ``lookup`` (uint8 ``[256]``).

    ``valid`` (bool ``[256]``) marks the ids of the dataset's table; any other
    id in ``label`` raises ``ValueError`` naming ``path`` and the bad values.
    Returns uint8 ``[H, W]``.
    """
    counts = np.bincount(label.ravel(), minlength=256)
    bad = np.flatnonzero((counts > 0) & ~valid)
    if bad.size:
        raise ValueError(
            f"label file {path} contains ids {bad.tolist()} that are not in the dataset's label table "
            f"(valid ids: {_describe_ids(np.flatnonzero(valid))})"
        )
    return lookup[label]


def _describe_ids(ids: np.ndarray) -> str:
    """``[0, 1, 2, 3, 255]`` -> ``"0..3, 255"``."""
    parts = []
    start = prev = int(ids[0])
    for value in [int(v) for v in ids[1:]] + [None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)
