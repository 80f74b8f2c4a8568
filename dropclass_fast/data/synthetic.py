"""Procedural street scenes with a planted co-occurrence bias and rare classes: a dataset that needs no files.

Eight classes -- sky, road, building, vegetation, car, person, bicycle, rider --
drawn with numpy at any size (the geometry is defined for a 64-pixel-high image
and scales with the height). Colours are jittered per object and per image and
every pixel gets texture noise, so colour alone does not decide the class. As
in Cityscapes, a one-pixel band around every object and, in some images, an
"ego-vehicle hood" strip at the bottom are labelled 255 (ignore).

The planted bias: a *rider* has exactly a *person*'s body, legs, head and
clothing colours (only a helmet is its own evidence) and appears only on a
*bicycle*, and most bicycles carry a rider (``p_rider_on_bicycle``). Bicycles
are rare (``p_bicycle`` of the images) and thin, riders rarer still. A model
can learn "person-looking pixels above a bicycle are rider", i.e. lean on the
context class rather than on the pixels' own evidence -- the bias DropClass
targets. ``erase_bicycles`` draws the same scenes without their bicycles
(riders keep their pixels), the context-free images ``I*`` of the paper's bias
analysis (Table B-1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .._checks import check_bool, check_finite, check_fraction, check_int, check_size
from .base import SegmentationDataset, Transform, check_split

IGNORE = 255
CLASS_NAMES: tuple[str, ...] = ("sky", "road", "building", "vegetation", "car", "person", "bicycle", "rider")
SKY, ROAD, BUILDING, VEGETATION, CAR, PERSON, BICYCLE, RIDER = range(len(CLASS_NAMES))
THING_CLASSES = (CAR, PERSON, BICYCLE, RIDER)
# visualisation colours (Cityscapes' colours of the same classes)
PALETTE = np.array(
    [
        (70, 130, 180),
        (128, 64, 128),
        (70, 70, 70),
        (107, 142, 35),
        (0, 0, 142),
        (220, 20, 60),
        (119, 11, 32),
        (255, 0, 0),
    ],
    dtype=np.uint8,
)

# Base colours (RGB in [0, 1]); every object jitters around its class colour.
_SKY = (0.55, 0.70, 0.90)
_ROAD = (0.42, 0.42, 0.45)
_BUILDING = (0.60, 0.50, 0.42)
_VEGETATION = (0.25, 0.55, 0.22)
_BICYCLE = (0.15, 0.15, 0.18)
_CAR_COLOURS = ((0.75, 0.12, 0.10), (0.15, 0.25, 0.70), (0.85, 0.85, 0.85), (0.10, 0.10, 0.12))
_CLOTHES = ((0.80, 0.20, 0.25), (0.20, 0.30, 0.65), (0.85, 0.75, 0.20), (0.30, 0.30, 0.30), (0.55, 0.25, 0.60))
_SKIN = (0.85, 0.65, 0.50)
_HELMETS = ((0.95, 0.95, 0.95), (0.95, 0.85, 0.10), (0.10, 0.80, 0.30))
_REFERENCE_HEIGHT = 64  # the geometry below is in pixels of a 64-pixel-high image

_PROBABILITIES = ("p_person", "p_bicycle", "p_rider_on_bicycle", "p_hood")


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the procedural street scenes.

    Attributes:
        height, width: image size in pixels (at least 16 each).
        p_person: probability that an image has pedestrians (one or two).
        p_bicycle: probability that an image has a bicycle (at most one): the rare class.
        p_rider_on_bicycle: probability that a bicycle carries a rider: the
            planted bias (riders never appear anywhere else).
        p_hood: probability of an ignored ego-vehicle strip at the bottom.
        noise: standard deviation of the per-pixel texture noise (image in [0, 1]).
        erase_bicycles: leave the bicycles out (the road shows through) but
            draw everything else, riders included, exactly as without it.
    """

    height: int = 64
    width: int = 128
    p_person: float = 0.55
    p_bicycle: float = 0.35
    p_rider_on_bicycle: float = 0.9
    p_hood: float = 0.3
    noise: float = 0.07
    erase_bicycles: bool = False

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=16))
        for name in _PROBABILITIES:
            object.__setattr__(self, name, check_fraction(name, getattr(self, name), "a probability in [0, 1]"))
        object.__setattr__(self, "noise", check_finite("noise", self.noise))
        object.__setattr__(self, "erase_bicycles", check_bool("erase_bicycles", self.erase_bicycles))


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], std: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.normal(0, std, 3).astype(np.float32)


def _paint(image: np.ndarray, label: np.ndarray, mask: np.ndarray, colour: np.ndarray, cls: int) -> None:
    image[mask] = colour
    label[mask] = cls


def _draw_human(
    image: np.ndarray,
    label: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    feet_y: float,
    cx: float,
    height: float,
    unit: float,
    cls: int,
) -> None:
    """A person or a rider: the same body, legs, head and clothing colours; riders wear a helmet."""
    torso = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.05)
    legs = _jitter(rng, tuple(0.6 * c for c in _CLOTHES[rng.integers(len(_CLOTHES))]), 0.04)
    skin = _jitter(rng, _SKIN, 0.05)
    half_w = max(1.2 * unit, height * 0.14)
    head_r = max(1.2 * unit, height * 0.11)
    top = feet_y - height
    leg_top = feet_y - 0.45 * height
    leg_half_w = 0.45 * half_w + 0.3 * unit
    body = (np.abs(xx - cx) <= half_w) & (yy >= top + 2 * head_r) & (yy < leg_top)
    leg_rows = (yy >= leg_top) & (yy <= feet_y)
    legs_mask = leg_rows & (
        (np.abs(xx - (cx - 0.5 * half_w)) <= leg_half_w) | (np.abs(xx - (cx + 0.5 * half_w)) <= leg_half_w)
    )
    head = (yy - (top + head_r)) ** 2 + (xx - cx) ** 2 <= head_r**2
    _paint(image, label, body, torso, cls)
    _paint(image, label, legs_mask, legs, cls)
    _paint(image, label, head, skin, cls)
    if cls == RIDER:  # the rider's own evidence: a bright helmet on the upper half of the head
        helmet = head & (yy <= top + head_r)
        _paint(image, label, helmet, _jitter(rng, _HELMETS[rng.integers(len(_HELMETS))], 0.04), cls)


def _draw_bicycle(
    image: np.ndarray,
    label: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    ground_y: float,
    cx: float,
    size: float,
    unit: float,
    erase: bool,
) -> tuple[float, float]:
    """Two wheels and a frame; returns the saddle position ``(y, x)`` for a rider.

    With ``erase`` the bicycle is not painted (the road shows through), but the
    random draws are the same, so the rest of the scene does not change.
    """
    colour = _jitter(rng, _BICYCLE, 0.05)
    radius = size * 0.28
    wheel_y = ground_y - radius
    mask = np.zeros(yy.shape, dtype=bool)
    for wheel_x in (cx - 0.55 * size, cx + 0.55 * size):
        distance = np.sqrt((yy - wheel_y) ** 2 + (xx - wheel_x) ** 2)
        mask |= np.abs(distance - radius) <= unit  # tyre
        mask |= distance <= 0.7 * unit  # hub
    frame_y = wheel_y - 0.5 * radius
    mask |= (np.abs(yy - frame_y) <= 0.8 * unit) & (np.abs(xx - cx) <= 0.55 * size)
    mask |= (np.abs(xx - cx) <= 0.8 * unit) & (yy >= frame_y - 0.4 * radius) & (yy <= wheel_y)
    if not erase:
        _paint(image, label, mask, colour, BICYCLE)
    return frame_y - 0.4 * radius, cx


def _draw_car(
    image: np.ndarray,
    label: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    ground_y: float,
    cx: float,
    depth: float,
    unit: float,
) -> None:
    """A body, a roof with windows and two dark wheels, larger when nearer (``depth`` 0 far .. 1 near)."""
    car_w, car_h = (18 + 22 * depth) * unit, (8 + 10 * depth) * unit
    colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.05)
    body = (np.abs(xx - cx) <= car_w / 2) & (yy <= ground_y - 2 * unit) & (yy >= ground_y - car_h * 0.6)
    roof = (np.abs(xx - cx) <= car_w * 0.3) & (yy < ground_y - car_h * 0.6) & (yy >= ground_y - car_h)
    wheel_distance = np.minimum(np.abs(xx - (cx - car_w * 0.3)), np.abs(xx - (cx + car_w * 0.3)))
    wheels = (wheel_distance <= 2 * unit) & (yy > ground_y - 3 * unit) & (yy <= ground_y)
    _paint(image, label, body | roof, colour, CAR)
    image[roof & (yy > ground_y - car_h * 0.9)] = (0.3, 0.4, 0.5)  # windows
    _paint(image, label, wheels, np.full(3, 0.08, dtype=np.float32), CAR)


def _draw_skyline(
    image: np.ndarray,
    label: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    texture_rng: np.random.Generator,
    horizon: int,
    unit: float,
) -> None:
    """Buildings (with windows) and trees side by side along the horizon; ``texture_rng`` shades the leaves.

    Each block covers the columns ``[x, x + block_w)`` and the rows above
    ``horizon + 2 unit``; it is drawn on that slice of the arrays only.
    """
    height, width = label.shape
    bottom = min(height, int(np.ceil(horizon + 2 * unit)))
    x = -float(rng.integers(0, 10)) * unit
    while x < width:
        block_w = float(rng.integers(10, 30)) * unit
        cols = slice(max(0, int(np.ceil(x))), min(width, int(np.ceil(x + block_w))))
        block_image, block_label = image[:bottom, cols], label[:bottom, cols]
        block_yy, block_xx = yy[:bottom, cols], xx[:bottom, cols]
        if rng.random() < 0.7:
            top = float(rng.uniform(2, max(3, horizon / unit - 4))) * unit
            mask = block_yy >= top
            colour = _jitter(rng, _BUILDING, 0.08)
            windows = mask & ((block_yy - top) % (5 * unit) < 2 * unit) & ((block_xx - x) % (4 * unit) < 2 * unit)
            _paint(block_image, block_label, mask, colour, BUILDING)
            block_image[windows] = colour * 0.55
        else:
            radius = block_w / 2.2
            cy = horizon - radius * 0.6
            mask = ((block_yy - cy) ** 2 / (radius * 1.1) ** 2 + (block_xx - (x + block_w / 2)) ** 2 / radius**2) <= 1.0
            _paint(block_image, block_label, mask, _jitter(rng, _VEGETATION, 0.05), VEGETATION)
            block_image[mask] *= 0.8 + 0.4 * texture_rng.random((int(mask.sum()), 1), dtype=np.float32)
        x += block_w


def make_scene(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """One scene drawn from ``rng``: image uint8 ``[H, W, 3]`` (RGB) and label uint8 ``[H, W]``.

    Labels are class indices of :data:`CLASS_NAMES` and 255 (ignore). The
    per-pixel draws (texture) come from a second generator seeded from ``rng``
    and every layout draw has a range that does not depend on the image size,
    so the same ``rng`` draws the same scene at any resolution.
    """
    texture_rng = np.random.default_rng(rng.integers(2**63))
    h, w = config.height, config.width
    unit = h / _REFERENCE_HEIGHT
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((h, w, 3), dtype=np.float32)
    label = np.zeros((h, w), dtype=np.uint8)

    horizon = int(rng.uniform(0.32, 0.45) * h)
    sky = _jitter(rng, _SKY, 0.05)
    image[:horizon] = sky * (0.85 + 0.3 * yy[:horizon, :, None] / max(horizon, 1))
    label[:horizon] = SKY
    image[horizon:] = _jitter(rng, _ROAD, 0.04)
    label[horizon:] = ROAD
    lane = (np.abs(yy - (horizon + 0.6 * (h - horizon))) <= 0.6 * unit) & ((xx // (8 * unit)) % 2 == 0)
    image[lane] = 0.9  # lane markings are road too
    _draw_skyline(image, label, yy, xx, rng, texture_rng, horizon, unit)

    # objects on the road, drawn far to near so that nearer ones occlude farther ones
    objects: list[tuple[float, int]] = []
    for _ in range(int(rng.integers(0, 3))):
        objects.append((float(rng.uniform(horizon + 6 * unit, h - 2 * unit)), CAR))
    if rng.random() < config.p_person:
        for _ in range(int(rng.integers(1, 3))):
            objects.append((float(rng.uniform(horizon + 8 * unit, h - unit)), PERSON))
    if rng.random() < config.p_bicycle:
        objects.append((float(rng.uniform(horizon + 10 * unit, h - unit)), BICYCLE))
    objects.sort()
    for ground_y, kind in objects:
        depth = (ground_y - horizon) / max(h - horizon, 1)  # 0 far .. 1 near
        cx = float(rng.uniform(0.08 * w, 0.92 * w))
        if kind == CAR:
            _draw_car(image, label, yy, xx, rng, ground_y, cx, depth, unit)
        elif kind == PERSON:
            _draw_human(image, label, yy, xx, rng, ground_y, cx, (12 + 16 * depth) * unit, unit, PERSON)
        else:
            size = (12 + 12 * depth) * unit
            saddle_y, saddle_x = _draw_bicycle(
                image, label, yy, xx, rng, ground_y, cx, size, unit, config.erase_bicycles
            )
            if rng.random() < config.p_rider_on_bicycle:
                rider_h = (11 + 12 * depth) * unit
                _draw_human(image, label, yy, xx, rng, saddle_y + 0.35 * size, saddle_x, rider_h, unit, RIDER)

    # photometric jitter and texture noise
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
    image += config.noise * texture_rng.standard_normal(image.shape, dtype=np.float32)
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    # ignore: a one-pixel band of background around every object (objects keep their own
    # pixels, so thin bicycle frames survive), and sometimes the ego-vehicle hood
    thing = np.isin(label, THING_CLASSES)
    near_thing = thing.copy()
    near_thing[1:] |= thing[:-1]
    near_thing[:-1] |= thing[1:]
    near_thing[:, 1:] |= thing[:, :-1]
    near_thing[:, :-1] |= thing[:, 1:]
    label[near_thing & ~thing] = IGNORE
    if rng.random() < config.p_hood:
        label[h - int(rng.integers(3, 7) * unit) :] = IGNORE
    return image, label


_SPLIT_STREAMS = {"train": 0, "val": 1}
_SCENE_OPTIONS = tuple(f.name for f in fields(SceneConfig) if f.name not in ("height", "width"))


class SyntheticStreets(SegmentationDataset):
    """The procedural street scenes as a dataset: 8 classes, 255 = ignore, nothing on disk.

    Item ``i`` of a split is drawn from a generator seeded by
    ``(seed, split, i)`` alone: any item can be generated on its own, in any
    order, in any worker process, with the same result. ``"train"`` and
    ``"val"`` are independent streams from the same distribution.

    Args:
        split: ``"train"`` or ``"val"``.
        length: number of scenes.
        size: ``(height, width)`` of the scenes.
        seed: seeds the scenes and the per-item augmentation generators.
        transform: ``(image, label, rng) -> (image, label)``; default: normalisation only.
        **scene_options: the other fields of :class:`SceneConfig` (``p_bicycle``,
            ``p_rider_on_bicycle``, ``erase_bicycles``, ...).
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    palette = PALETTE
    ignore_index = IGNORE
    # per-channel mean and standard deviation of 500 training scenes (seed 0; the same at 64x128 and 128x256)
    mean = (0.447, 0.471, 0.490)
    std = (0.160, 0.169, 0.219)
    splits = tuple(_SPLIT_STREAMS)

    def __init__(
        self,
        split: str = "train",
        length: int = 1000,
        size: tuple[int, int] = (128, 256),
        seed: int = 0,
        transform: Transform | None = None,
        **scene_options: float | bool,
    ) -> None:
        super().__init__(transform, seed)
        self.split = check_split(split, self.splits, "synthetic")
        length = check_int("length", length)
        size = check_size("size", size)
        unknown = sorted(set(scene_options) - set(_SCENE_OPTIONS))
        if unknown:
            raise TypeError(f"unknown scene options {unknown}; the options are {_SCENE_OPTIONS}")
        self.length = length
        self.config = SceneConfig(height=size[0], width=size[1], **scene_options)

    def __len__(self) -> int:
        return self.length

    def scene_rng(self, index: int) -> np.random.Generator:
        """The generator that draws scene ``index`` (also used with ``erase_bicycles`` for the same scene)."""
        stream = np.random.SeedSequence(self.seed, spawn_key=(_SPLIT_STREAMS[self.split], index))
        return np.random.default_rng(stream)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene ``index``: image uint8 ``[H, W, 3]`` and label uint8 ``[H, W]`` (class indices, 255 = ignore)."""
        return make_scene(self.scene_rng(self.check_index(index)), self.config)
