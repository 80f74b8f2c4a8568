"""DropClass in one minute on a CPU: baseline versus DropClass on toy street scenes.

What this script does (``make demo`` runs it with the defaults):

1. Builds a small procedural segmentation dataset, deterministic from ``--seed``
   (numpy only, nothing downloaded): 64x128 street-like scenes with eight
   classes -- sky, road, building, vegetation, car, person, bicycle, rider.
   Labels are at full image resolution; a one-pixel band around every object
   and, in some images, an "ego-vehicle hood" strip at the bottom are labelled
   255 (ignore), as in Cityscapes. Colours are jittered per object and per
   image, and every pixel gets texture noise, so colour alone does not decide
   the class.

   The co-occurrence bias is planted on purpose: a *rider* is drawn exactly
   like a *person* (same body shape, same clothing colours) but always sits on
   a *bicycle*, and most bicycles in the training split carry a rider. The
   rider class is also rare. A model can therefore learn "person-looking
   pixels above a bicycle are rider", i.e. it leans on the context class
   instead of the pixels' own evidence -- the bias DropClass targets.

2. Trains the same small conv net (three stride-2/dilated conv stages, output
   stride 4, a Conv-BN-ReLU producing the features ``A``, then a 1x1
   classifier) twice from the same initialisation and data order, AdamW with
   a poly schedule, the same number of iterations:

   * baseline -- ``dcf.seg_cross_entropy(logits, target)`` (bilinear upsample
     to label size + cross-entropy, ignore 255);
   * DropClass -- ``DropClass(classifier)`` on the features and
     ``DropClassLoss`` with ``progress = it / iters``; evaluation uses the
     drop path, as the paper does.

   Two settings differ from the paper because this run is ~500 iterations
   from scratch instead of hundreds of epochs from ImageNet weights:
   ``--alpha`` (weight of ``L_sup``) defaults to 0.3, not 10 -- with 10 the
   suppression term dominates the rare classes' gradients in so short a run
   and both paths lose them (try ``--alpha 10``); ``--bn-momentum`` of the
   ``select`` BatchNorm defaults to 0.1, not the official 0.01, whose running
   statistics would still lag behind at the end of the run. The paper also
   trains DropClass for twice the baseline's epochs; here both get the same.

3. Evaluates both on a held-out split (fresh scenes from another seed, "I")
   and on the same scenes with every bicycle erased ("I*", riders keep their
   pixels): the per-image context-removal probe of the paper's Table B-1. A
   model that finds riders through their bicycles loses them on I*. Prints
   per-class IoU side by side with the difference, and the mIoU.

4. Times the fused loss ``dcf.seg_cross_entropy`` forward+backward with the
   C++ backend against the eager PyTorch reference (``F.interpolate`` +
   ``F.cross_entropy``) at a small realistic shape.

The toy task is small and a single run is noisy (a different ``--seed``
moves per-class IoUs by several points): the differences it prints illustrate
the API and the bias probe, they are not a reproduction of the paper.

Usage::

    python examples/demo.py                 # full demo, about a minute on 2 cores
    python examples/demo.py --quick         # a few iterations (smoke test)
    python examples/demo.py --iters 600 --seed 1 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:  # the demo also runs from a source checkout without installing the package
    import dropclass_fast
except ImportError:  # pragma: no cover - depends on how the demo is started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dropclass_fast

from dropclass_fast import DropClass, DropClassLoss
from dropclass_fast import functional as dcf

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # tqdm is optional: plain progress lines without it
    _tqdm = None

T = TypeVar("T")

IGNORE = 255
CLASSES: tuple[str, ...] = (
    "sky",
    "road",
    "building",
    "vegetation",
    "car",
    "person",
    "bicycle",
    "rider",
)
SKY, ROAD, BUILDING, VEGETATION, CAR, PERSON, BICYCLE, RIDER = range(len(CLASSES))
NUM_CLASSES = len(CLASSES)
THING_CLASSES = (CAR, PERSON, BICYCLE, RIDER)

# Base colours (RGB in [0, 1]); every object jitters around its class colour.
_BASE_COLOUR = {
    SKY: (0.55, 0.70, 0.90),
    ROAD: (0.42, 0.42, 0.45),
    BUILDING: (0.60, 0.50, 0.42),
    VEGETATION: (0.25, 0.55, 0.22),
    BICYCLE: (0.15, 0.15, 0.18),
}
_CAR_COLOURS = ((0.75, 0.12, 0.10), (0.15, 0.25, 0.70), (0.85, 0.85, 0.85), (0.10, 0.10, 0.12))
_CLOTHES = ((0.80, 0.20, 0.25), (0.20, 0.30, 0.65), (0.85, 0.75, 0.20), (0.30, 0.30, 0.30), (0.55, 0.25, 0.60))
_SKIN = (0.85, 0.65, 0.50)
_HELMETS = ((0.95, 0.95, 0.95), (0.95, 0.85, 0.10), (0.10, 0.80, 0.30))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the procedural street scenes."""

    height: int = 64
    width: int = 128
    p_person: float = 0.55  # images with at least one pedestrian
    p_bicycle: float = 0.35  # images with at least one bicycle
    p_rider_on_bicycle: float = 0.9  # a bicycle carries a rider (the planted bias)
    p_hood: float = 0.3  # images with an ignored ego-vehicle strip at the bottom
    noise: float = 0.07  # per-pixel texture noise (std)
    erase_bicycles: bool = False  # riders float without their bicycle (bias probe, "I*")


def _paint(img: np.ndarray, lab: np.ndarray, mask: np.ndarray, colour: np.ndarray, cls: int) -> None:
    img[mask] = colour
    lab[mask] = cls


def _draw_human(
    img: np.ndarray,
    lab: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    feet_y: float,
    cx: float,
    height: float,
    cls: int,
) -> None:
    """A person or a rider: the same body, legs, head and clothing colours; riders wear a helmet."""
    torso = np.asarray(_CLOTHES[rng.integers(len(_CLOTHES))]) + rng.normal(0, 0.05, 3)
    legs = np.asarray(_CLOTHES[rng.integers(len(_CLOTHES))]) * 0.6 + rng.normal(0, 0.04, 3)
    skin = np.asarray(_SKIN) + rng.normal(0, 0.05, 3)
    half_w = max(1.2, height * 0.14)
    head_r = max(1.2, height * 0.11)
    top = feet_y - height
    leg_top = feet_y - 0.45 * height
    body = (np.abs(xx - cx) <= half_w) & (yy >= top + 2 * head_r) & (yy < leg_top)
    leg_l = (np.abs(xx - (cx - 0.5 * half_w)) <= 0.45 * half_w + 0.3) & (yy >= leg_top) & (yy <= feet_y)
    leg_r = (np.abs(xx - (cx + 0.5 * half_w)) <= 0.45 * half_w + 0.3) & (yy >= leg_top) & (yy <= feet_y)
    head = (yy - (top + head_r)) ** 2 + (xx - cx) ** 2 <= head_r**2
    _paint(img, lab, body, torso, cls)
    _paint(img, lab, leg_l | leg_r, legs, cls)
    _paint(img, lab, head, skin, cls)
    if cls == RIDER:  # the rider's own evidence: a bright helmet on the upper half of the head
        helmet = head & (yy <= top + head_r)
        colour = np.asarray(_HELMETS[rng.integers(len(_HELMETS))]) + rng.normal(0, 0.04, 3)
        _paint(img, lab, helmet, colour, cls)


def _draw_bicycle(
    img: np.ndarray,
    lab: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    ground_y: float,
    cx: float,
    size: float,
    erase: bool = False,
) -> tuple[float, float]:
    """Two wheels and a frame; returns (saddle_y, saddle_x) for a rider.

    With ``erase`` the bicycle is not painted (the road shows through): the
    context-free "I*" images of the bias analysis.
    """
    colour = np.asarray(_BASE_COLOUR[BICYCLE]) + rng.normal(0, 0.05, 3)
    r = size * 0.28
    wy = ground_y - r
    mask = np.zeros_like(yy, dtype=bool)
    for wx in (cx - 0.55 * size, cx + 0.55 * size):
        d = np.sqrt((yy - wy) ** 2 + (xx - wx) ** 2)
        mask |= np.abs(d - r) <= 1.0
        mask |= d <= 0.7  # hub
    frame_y = wy - 0.5 * r
    mask |= (np.abs(yy - frame_y) <= 0.8) & (np.abs(xx - cx) <= 0.55 * size)
    mask |= (np.abs(xx - cx) <= 0.8) & (yy >= frame_y - 0.4 * r) & (yy <= wy)
    if not erase:
        _paint(img, lab, mask, colour, BICYCLE)
    return frame_y - 0.4 * r, cx


def make_scene(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[3, H, W]`` float32 in [0, 1] and its labels ``[H, W]`` uint8."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), dtype=np.float32)
    lab = np.zeros((h, w), dtype=np.uint8)

    horizon = int(rng.integers(int(0.32 * h), int(0.45 * h)))
    sky_col = np.asarray(_BASE_COLOUR[SKY]) + rng.normal(0, 0.05, 3)
    img[:horizon] = sky_col * (0.85 + 0.3 * yy[:horizon, :, None] / max(horizon, 1))
    lab[:horizon] = SKY
    road_col = np.asarray(_BASE_COLOUR[ROAD]) + rng.normal(0, 0.04, 3)
    img[horizon:] = road_col
    lab[horizon:] = ROAD
    # lane markings are road too
    lane = (np.abs(yy - (horizon + 0.6 * (h - horizon))) <= 0.6) & ((xx.astype(int) // 8) % 2 == 0)
    img[lane] = 0.9

    # buildings and trees along the horizon
    x = -int(rng.integers(0, 10))
    while x < w:
        bw = int(rng.integers(10, 30))
        if rng.random() < 0.7:
            top = int(rng.integers(2, max(3, horizon - 4)))
            m = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 2)
            col = np.asarray(_BASE_COLOUR[BUILDING]) + rng.normal(0, 0.08, 3)
            windows = m & ((yy.astype(int) - top) % 5 < 2) & ((xx.astype(int) - x) % 4 < 2)
            _paint(img, lab, m, col, BUILDING)
            img[windows] = col * 0.55
        else:
            r = bw / 2.2
            cy = horizon - r * 0.6
            m = ((yy - cy) ** 2 / (r * 1.1) ** 2 + (xx - (x + bw / 2)) ** 2 / r**2) <= 1.0
            m &= yy < horizon + 2
            col = np.asarray(_BASE_COLOUR[VEGETATION]) + rng.normal(0, 0.05, 3)
            _paint(img, lab, m, col, VEGETATION)
            img[m] *= 0.8 + 0.4 * rng.random((int(m.sum()), 1)).astype(np.float32)
        x += bw

    # objects on the road, far to near so nearer ones occlude farther ones
    objects: list[tuple[float, str]] = []
    for _ in range(int(rng.integers(0, 3))):
        objects.append((float(rng.uniform(horizon + 6, h - 2)), "car"))
    if rng.random() < cfg.p_person:
        for _ in range(int(rng.integers(1, 3))):
            objects.append((float(rng.uniform(horizon + 8, h - 1)), "person"))
    if rng.random() < cfg.p_bicycle:
        objects.append((float(rng.uniform(horizon + 10, h - 1)), "bicycle"))
    objects.sort()
    for ground, kind in objects:
        depth = (ground - horizon) / max(h - horizon, 1)  # 0 far .. 1 near
        cx = float(rng.uniform(0.08 * w, 0.92 * w))
        if kind == "car":
            cw, ch = 18 + 22 * depth, 8 + 10 * depth
            col = np.asarray(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]) + rng.normal(0, 0.05, 3)
            body = (np.abs(xx - cx) <= cw / 2) & (yy <= ground - 2) & (yy >= ground - ch * 0.6)
            roof = (np.abs(xx - cx) <= cw * 0.3) & (yy < ground - ch * 0.6) & (yy >= ground - ch)
            wheels = (
                (np.minimum(np.abs(xx - (cx - cw * 0.3)), np.abs(xx - (cx + cw * 0.3))) <= 2)
                & (yy > ground - 3)
                & (yy <= ground)
            )
            _paint(img, lab, body | roof, col, CAR)
            img[roof & (yy > ground - ch * 0.9)] = (0.3, 0.4, 0.5)  # windows
            _paint(img, lab, wheels, np.full(3, 0.08, dtype=np.float32), CAR)
        elif kind == "person":
            _draw_human(img, lab, yy, xx, rng, ground, cx, 12 + 16 * depth, PERSON)
        else:
            size = 12 + 12 * depth
            saddle_y, saddle_x = _draw_bicycle(img, lab, yy, xx, rng, ground, cx, size, cfg.erase_bicycles)
            if rng.random() < cfg.p_rider_on_bicycle:
                _draw_human(img, lab, yy, xx, rng, saddle_y + 0.35 * size, saddle_x, 11 + 12 * depth, RIDER)

    # photometric jitter and texture noise
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
    img = img + rng.normal(0, cfg.noise, img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0)

    # ignore: a one-pixel band of background around every object (objects keep their
    # own pixels, so thin bicycle frames survive), and sometimes the ego-vehicle hood
    thing = np.isin(lab, THING_CLASSES)
    near_thing = thing.copy()
    near_thing[1:] |= thing[:-1]
    near_thing[:-1] |= thing[1:]
    near_thing[:, 1:] |= thing[:, :-1]
    near_thing[:, :-1] |= thing[:, 1:]
    lab[near_thing & ~thing] = IGNORE
    if rng.random() < cfg.p_hood:
        lab[h - int(rng.integers(3, 7)) :] = IGNORE
    return img.transpose(2, 0, 1).copy(), lab


def make_split(n: int, seed: int, cfg: SceneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes as tensors ``[n, 3, H, W]`` float32 and ``[n, H, W]`` int64."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, cfg.height, cfg.width), dtype=np.float32)
    labels = np.empty((n, cfg.height, cfg.width), dtype=np.uint8)
    for i in range(n):
        images[i], labels[i] = make_scene(rng, cfg)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


# -------------------------------------------------------------------------- model


def _cbr(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinySegNet(nn.Module):
    """Output stride 4: ``features(x)`` is ``A`` ``[B, C, H/4, W/4]``; ``classifier`` is a 1x1 conv."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 48) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            _cbr(3, width // 2, stride=2),
            _cbr(width // 2, width, stride=2),
            _cbr(width, width),
            _cbr(width, width, dilation=2),
            _cbr(width, width, dilation=4),
        )
        self.last_layer = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------- training


def progress_bar(it: Iterable[T], total: int, desc: str, enabled: bool) -> Iterator[T]:
    """tqdm when installed and writing to a terminal, else a few plain progress lines."""
    if enabled and _tqdm is not None and sys.stderr.isatty():
        yield from _tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    milestones = {max(1, round(total * q)) for q in (0.25, 0.5, 0.75, 1.0)}
    for i, x in enumerate(it):
        yield x
        if enabled and i + 1 in milestones:
            print(f"  {desc}: {i + 1}/{total}", flush=True)


def _batches(n: int, batch_size: int, iters: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``iters`` index batches: reshuffled epochs, drop last."""
    produced = 0
    while produced < iters:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            if produced == iters:
                return
            yield perm[start : start + batch_size]
            produced += 1


def _augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None], y.flip(-1), y)
    return x, y


@dataclass
class TrainResult:
    predict: Callable[[torch.Tensor], torch.Tensor]  # images -> low-res logits (eval mode)
    seconds: float
    final_loss: float


def train(
    mode: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    iters: int,
    batch_size: int,
    seed: int,
    lr: float,
    alpha: float,
    bn_momentum: float,
    show_progress: bool,
) -> TrainResult:
    """Train ``TinySegNet`` with ``mode`` in {"baseline", "dropclass"} from a fixed seed.

    AdamW with a poly learning-rate schedule (power 0.9) for both modes: it
    converges far faster than the paper's SGD on this from-scratch toy.
    """
    torch.manual_seed(seed)  # same initialisation for both modes
    model = TinySegNet()
    dc = DropClass(model.classifier, seed=seed, bn_momentum=bn_momentum) if mode == "dropclass" else None
    loss_fn = DropClassLoss(alpha=alpha, ignore_index=IGNORE) if dc is not None else None
    modules: list[nn.Module] = [model] if dc is None else [model, dc]
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - it / iters) ** 0.9)
    data_gen = torch.Generator().manual_seed(seed + 1)  # same data order for both modes

    for m in modules:
        m.train()
    loss_val = float("nan")
    t0 = time.perf_counter()
    batches = _batches(images.shape[0], batch_size, iters, data_gen)
    for it, idx in enumerate(progress_bar(batches, iters, f"train {mode}", show_progress)):
        x, y = _augment(images[idx], labels[idx], data_gen)
        feats = model.features(x)
        if dc is None:
            loss = dcf.seg_cross_entropy(model.classifier(feats), y, ignore_index=IGNORE)
        else:
            assert loss_fn is not None
            progress = it / iters
            out = dc(feats, progress=progress)
            loss, _parts = loss_fn(out, y, progress=progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
    seconds = time.perf_counter() - t0

    for m in modules:
        m.eval()

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        feats = model.features(x)
        return model.classifier(feats) if dc is None else dc(feats)  # DropClass: the drop path

    return TrainResult(predict=predict, seconds=seconds, final_loss=loss_val)


# --------------------------------------------------------------------- evaluation


@torch.no_grad()
def confusion_matrix(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 32,
) -> torch.Tensor:
    """``[K, K]`` counts, rows = ground truth, columns = prediction; ignore pixels skipped."""
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = F.interpolate(predict(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        valid = y != IGNORE
        conf += torch.bincount(y[valid] * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES * NUM_CLASSES).view(
            NUM_CLASSES, NUM_CLASSES
        )
    return conf


def per_class_iou(conf: torch.Tensor) -> list[float]:
    """IoU per class; NaN for a class without ground-truth pixels (left out of the mIoU)."""
    tp = conf.diag().double()
    gt = conf.sum(1).double()
    union = conf.sum(0).double() + gt - tp
    return [float(t / u) if g > 0 else float("nan") for t, u, g in zip(tp, union, gt)]


def _mean(xs: list[float]) -> float:
    vals = [x for x in xs if x == x]
    return sum(vals) / len(vals) if vals else float("nan")


def print_iou_table(ious: dict[str, dict[str, list[float]]], freq: list[float]) -> None:
    """``ious[split][mode]``: per-class IoU; one (baseline, DropClass, delta) column group per split."""
    splits = list(ious)
    head = f"{'':<12}{'':>9}" + "".join(f"{split:^29}" for split in splits)
    sub = f"{'class':<12}{'pixels %':>9}" + f"{'baseline':>10}{'DropClass':>11}{'delta':>8}" * len(splits)
    print("\n" + head + "\n" + sub + "\n" + "-" * len(sub))
    for c, name in enumerate(CLASSES):
        row = f"{name:<12}{100 * freq[c]:>9.2f}"
        for split in splits:
            b, d = ious[split]["baseline"][c], ious[split]["dropclass"][c]
            if b != b and d != d:  # class absent from this split
                row += f"{'-':>10}{'-':>11}{'':>8}"
            else:
                row += f"{100 * b:>10.1f}{100 * d:>11.1f}{100 * (d - b):>+8.1f}"
        print(row)
    print("-" * len(sub))
    row = f"{'mIoU':<12}{'':>9}"
    for split in splits:
        mb, md = _mean(ious[split]["baseline"]), _mean(ious[split]["dropclass"])
        row += f"{100 * mb:>10.1f}{100 * md:>11.1f}{100 * (md - mb):>+8.1f}"
    print(row)


# ------------------------------------------------------------------------- timing


def loss_speedup(rounds: int, seed: int) -> None:
    """Fused (C++) versus eager ``seg_cross_entropy`` forward+backward, timed interleaved.

    Each round times both backends back to back (alternating which goes first),
    so that a CPU whose speed drifts (a shared machine) affects both alike; the
    speedup is the median of the per-round ratios.
    """
    b, k, h, w, up = 2, 19, 64, 128, 4
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, k, (b, h * up, w * up), generator=g)
    target[:, :8] = IGNORE

    def step(backend: str) -> float:
        logits.grad = None
        t0 = time.perf_counter()
        with dropclass_fast.set_backend(backend):
            dcf.seg_cross_entropy(logits, target, ignore_index=IGNORE).backward()
        return time.perf_counter() - t0

    print(
        f"\nFused loss: dcf.seg_cross_entropy forward+backward, float32, B={b}, K={k}, "
        f"logits {h}x{w} -> labels {h * up}x{w * up}, {torch.get_num_threads()} threads, "
        f"{rounds} interleaved rounds"
    )
    backends = ("eager", "cpp")
    values: dict[str, float] = {}
    for backend in backends:
        try:
            with dropclass_fast.set_backend(backend), torch.no_grad():
                values[backend] = float(dcf.seg_cross_entropy(logits, target, ignore_index=IGNORE))
            step(backend)  # warm-up
        except Exception as exc:  # noqa: BLE001 - report any backend failure and go on
            print(f"  {backend} backend unavailable: {type(exc).__name__}: {exc}")
            return
    times: dict[str, list[float]] = {name: [] for name in backends}
    for r in range(rounds):
        for backend in backends if r % 2 == 0 else backends[::-1]:
            times[backend].append(step(backend))
    for backend in backends:
        print(f"  {backend:<6} median {1e3 * statistics.median(times[backend]):8.2f} ms   (loss {values[backend]:.6f})")
    ratios = [e / c for e, c in zip(times["eager"], times["cpp"])]
    print(
        f"  speedup cpp vs eager: {statistics.median(ratios):.2f}x (median of per-round ratios; "
        f"range {min(ratios):.2f}-{max(ratios):.2f}), |loss difference| {abs(values['eager'] - values['cpp']):.2e}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=None, help="training iterations per run (default 450; --quick: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and DropClass sampling")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (poly schedule)")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.3,
        help="weight of the DropClass L_sup term (paper: 10, see the module docstring)",
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=0.1,
        help="momentum of the DropClass select BatchNorm (official: 0.01, for long schedules)",
    )
    p.add_argument("--train-size", type=int, default=None, help="training scenes (default 480; --quick: 32)")
    p.add_argument("--val-size", type=int, default=None, help="held-out scenes (default 160; --quick: 16)")
    p.add_argument("--quick", action="store_true", help="a few iterations on a few scenes, for tests")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--skip-timing", action="store_true", help="skip the fused-versus-eager loss timing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    iters = args.iters if args.iters is not None else (3 if args.quick else 450)
    n_train = args.train_size if args.train_size is not None else (32 if args.quick else 480)
    n_val = args.val_size if args.val_size is not None else (16 if args.quick else 160)
    batch_size = min(args.batch_size, n_train)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # tiny gradients late in training must not slow the CPU down
    show = not args.no_progress

    t_start = time.perf_counter()
    cfg = SceneConfig()
    train_x, train_y = make_split(n_train, seed=args.seed, cfg=cfg)
    val_x, val_y = make_split(n_val, seed=args.seed + 10_000, cfg=cfg)
    star_x, star_y = make_split(n_val, seed=args.seed + 10_000, cfg=replace(cfg, erase_bicycles=True))
    img_freq = [float((train_y == c).flatten(1).any(1).double().mean()) for c in range(NUM_CLASSES)]
    with_bike = (train_y == BICYCLE).flatten(1).any(1)
    with_rider = (train_y == RIDER).flatten(1).any(1)
    print(f"dropclass_fast demo: torch {torch.__version__}, {threads} threads, seed {args.seed}")
    print(
        f"data: {n_train} training / {n_val} held-out scenes of {cfg.height}x{cfg.width}, "
        f"{NUM_CLASSES} classes, made in {time.perf_counter() - t_start:.1f} s"
    )
    print(
        "images containing each class (train): " + ", ".join(f"{n} {100 * f:.0f}%" for n, f in zip(CLASSES, img_freq))
    )
    if int(with_bike.sum()) > 0:
        print(
            f"planted bias: {100 * float((with_bike & with_rider).sum() / with_bike.sum()):.0f}% of the "
            f"images with a bicycle have a rider; riders appear only on bicycles"
        )

    # build or load the C++ kernels now, so that neither training run is charged for it
    dcf.seg_cross_entropy(torch.zeros(1, NUM_CLASSES, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long))

    results = {}
    for mode in ("baseline", "dropclass"):
        res = train(mode, train_x, train_y, iters, batch_size, args.seed, args.lr, args.alpha, args.bn_momentum, show)
        results[mode] = res
        print(
            f"trained {mode:<9}: {iters} iterations, batch {batch_size}, {res.seconds:.1f} s, "
            f"final loss {res.final_loss:.4f}"
        )

    # I: held-out scenes; I*: the same scenes with every bicycle erased (riders keep their
    # pixels), the bias probe of the paper's Table B-1 for the planted rider-bicycle bias.
    ious: dict[str, dict[str, list[float]]] = {}
    for split, (x, y) in {"I: held-out": (val_x, val_y), "I*: bicycles erased": (star_x, star_y)}.items():
        ious[split] = {mode: per_class_iou(confusion_matrix(r.predict, x, y)) for mode, r in results.items()}
    val_counts = torch.bincount(val_y[val_y != IGNORE], minlength=NUM_CLASSES).double()
    print(
        "\nHeld-out IoU (%); DropClass predicts with its drop path (nothing dropped); "
        "pixels % = share of labelled held-out pixels (I)"
    )
    print_iou_table(ious, (val_counts / val_counts.sum()).tolist())

    if not args.skip_timing:
        loss_speedup(rounds=3 if args.quick else 9, seed=args.seed)
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
