"""Joint image/label transforms: random scale, random crop with ignore padding, random flip, normalisation.

A transform is called as ``transform(image, label, rng)`` with ``image`` uint8
``[H, W, 3]`` (RGB), ``label`` uint8 ``[H, W]`` (train ids, ``ignore_index``
for unlabelled pixels) and ``rng`` a ``numpy.random.Generator``, the only
source of randomness. It returns ``(image, label)``: float32 ``[3, h, w]``
normalised as ``(x / 255 - mean) / std`` and int64 ``[h, w]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .._checks import check_bool, check_int_in, check_size, is_number

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_rgb_constants(name: str, value: Sequence[float], positive: bool) -> tuple[float, float, float]:
    """Three numbers in ``[0, 1]`` (``(0, 1]`` if ``positive``): the units of ``x / 255``."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be three numbers (R, G, B), got {value!r}") from None
    low_ok = (lambda v: v > 0) if positive else (lambda v: v >= 0)
    if len(values) != 3 or not all(low_ok(v) and v <= 1 for v in values):
        interval = "(0, 1]" if positive else "[0, 1]"
        raise ValueError(
            f"{name} must be three numbers in {interval} (R, G, B; the units of pixel / 255, so divide 0-255 "
            f"constants by 255), got {value!r}"
        )
    return values  # type: ignore[return-value]


def check_pair(image: object, label: object) -> None:
    """``TypeError``/``ValueError`` unless ``image`` is uint8 ``[H, W, 3]`` and ``label`` uint8 ``[H, W]``."""
    for name, value, dims in (("image", image, "[H, W, 3]"), ("label", label, "[H, W]")):
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
            got = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise TypeError(f"{name} must be a uint8 numpy array {dims}, got {got}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label must be [H, W] = {image.shape[:2]} like the image, got shape {label.shape}")


class Normalize:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` tensor ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = _check_rgb_constants("mean", mean, positive=False)
        self.std = _check_rgb_constants("std", std, positive=True)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> normalised float32 ``[3, H, W]``."""
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.div_(255.0).sub_(mean).div_(std)


class EvalTransform:
    """Normalisation only: ``(image uint8 [H, W, 3], label uint8 [H, W], rng)`` -> float32 ``[3, H, W]``,
    int64 ``[H, W]``.

    ``rng`` is accepted for the common transform signature and not used.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.normalize = Normalize(mean, std)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        check_pair(image, label)
        return self.normalize(image), torch.from_numpy(label.astype(np.int64))


class TrainTransform:
    """Random scale, random crop with padding, random horizontal flip, normalisation.

    In this order, every draw from ``rng``:

    1. scale ``s ~ U(scale_range)``: the image is resized bilinearly and the
       label by nearest neighbour to ``(round(H s), round(W s))`` (pixel-centre
       aligned, so image and label stay registered);
    2. crop: a window of ``crop_size`` at a uniform random offset; where the
       scaled image is smaller than the crop, it is placed at the top left and
       the rest is padding: label ``ignore_index``, image the mean colour (0
       after normalisation). Only the window is resampled (Pillow's ``box``),
       which gives the pixels of resizing the whole image and then cropping
       (up to a label pixel exactly halfway between two source pixels, which
       may take the other one), at the cost of the crop alone;
    3. flip left-right with probability 1/2 (when ``flip``).

    Call: ``(image uint8 [H, W, 3], label uint8 [H, W], rng)`` -> image float32
    ``[3, ch, cw]`` and label int64 ``[ch, cw]`` with ``(ch, cw) = crop_size``.

    Args:
        crop_size: ``(height, width)`` of the output.
        scale_range: ``(low, high)`` of the random scale factor, ``0 < low <= high``.
        flip: random horizontal flip.
        mean, std: RGB normalisation constants in [0, 1] units.
        ignore_index: label value of the padding, in ``[0, 255]``.
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ) -> None:
        crop_size = check_size("crop_size", crop_size)
        if (
            not isinstance(scale_range, Sequence)
            or len(scale_range) != 2
            or not all(is_number(v) and np.isfinite(v) for v in scale_range)
            or not 0 < scale_range[0] <= scale_range[1]
        ):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        ignore_index = check_int_in("ignore_index", ignore_index, 0, 255, "labels are uint8")
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = check_bool("flip", flip)
        self.ignore_index = ignore_index
        self.normalize = Normalize(mean, std)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The steps of the class docstring, drawn from ``rng``."""
        check_pair(image, label)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        height, width = label.shape
        crop_h, crop_w = self.crop_size

        scale = rng.uniform(*self.scale_range)
        scaled_h, scaled_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
        top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
        left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
        flip = self.flip and rng.random() < 0.5

        # the window [top, top + out_h) x [left, left + out_w) of the scaled image, in source pixels
        out_h, out_w = min(crop_h, scaled_h - top), min(crop_w, scaled_w - left)
        step_y, step_x = height / scaled_h, width / scaled_w
        box = (left * step_x, top * step_y, (left + out_w) * step_x, (top + out_h) * step_y)
        window = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR, box=box))
        window_label = np.asarray(Image.fromarray(label).resize((out_w, out_h), Image.NEAREST, box=box))
        if flip:
            window, window_label = window[:, ::-1], window_label[:, ::-1]

        out_image = torch.zeros(3, crop_h, crop_w, dtype=torch.float32)
        out_label = torch.full((crop_h, crop_w), self.ignore_index, dtype=torch.int64)
        out_image[:, :out_h, :out_w] = self.normalize(window)
        out_label[:out_h, :out_w] = torch.from_numpy(window_label.astype(np.int64))
        return out_image, out_label
