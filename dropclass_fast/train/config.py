"""Training configuration: the paper's recipes (Table E-3) and the command line of the examples."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .._checks import check_bool, check_choice, check_finite, check_int, check_optional_int, check_size
from ..data.base import check_seed
from ..models import MODEL_NAMES

METHODS = ("baseline", "dropclass")
AMP_MODES = ("none", "bf16", "fp16")


def check_learning_rate(name: str, value: object) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite positive number (Python or NumPy, not
    a bool)."""
    return check_finite(name, value, positive=True)


@dataclass(frozen=True)
class Recipe:
    """A dataset/model recipe: ``batch_size`` and ``lr`` over ``reference_world`` processes (Table E-3)."""

    batch_size: int
    lr: float
    reference_world: int
    crop_size: tuple[int, int]
    epochs: tuple[int, int]  # (baseline, DropClass): DropClass trains twice as long


_CITYSCAPES_CROP, _VOC_CROP, _SYNTHETIC_CROP = (512, 1024), (480, 480), (128, 256)
# Table E-3 of the supplementary (four GPUs); epochs from its section E.
RECIPES: dict[tuple[str, str], Recipe] = {
    ("cityscapes", "hrnet_v1"): Recipe(48, 0.04, 4, _CITYSCAPES_CROP, (484, 968)),
    ("cityscapes", "hrnet_v2"): Recipe(48, 0.04, 4, _CITYSCAPES_CROP, (484, 968)),
    ("cityscapes", "deeplabv3"): Recipe(12, 0.01, 4, _CITYSCAPES_CROP, (484, 968)),
    ("voc", "hrnet_v1"): Recipe(64, 0.016, 4, _VOC_CROP, (200, 400)),
    ("voc", "hrnet_v2"): Recipe(64, 0.016, 4, _VOC_CROP, (200, 400)),
    ("voc", "deeplabv3"): Recipe(48, 0.012, 4, _VOC_CROP, (200, 400)),
}
# The embedded synthetic dataset: one CPU process, minutes not days.
for _model in MODEL_NAMES:
    RECIPES[("synthetic", _model)] = Recipe(8, 0.02, 1, _SYNTHETIC_CROP, (10, 20))


@dataclass
class TrainConfig:
    """Everything one training run needs; the examples build it from their command line.

    ``batch_size`` is per process; ``lr`` is the learning rate of the whole
    run (``None``: the recipe's, scaled linearly by the global batch).
    ``bn_recalibration`` > 0 re-estimates the BatchNorm running statistics
    over that many training batches before the final evaluation (HRNet's
    official momentum 0.01 leaves them hundreds of iterations behind the
    weights, which a short run does not outlast). ``iters`` replaces the epoch count: the run, its poly schedule and the
    DropClass progress span ``iters`` iterations. ``stop_after`` ends this
    process after that many iterations (counted from the start of training)
    without changing the schedule, as a pre-empted job would.
    """

    dataset: str = "synthetic"
    model: str = "hrnet_v2"
    method: str = "dropclass"
    data_root: str | None = None
    output: str = "runs/train"
    batch_size: int | None = None
    lr: float | None = None
    epochs: int | None = None
    iters: int | None = None
    stop_after: int | None = None
    crop_size: tuple[int, int] | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    alpha: float = 10.0
    per_sample: bool = False
    workers: int = 2
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    seed: int = 0
    pretrained: str | None = None
    resume: str | None = None
    checkpoint_every: int = 1000
    eval_every: int = 0
    eval_batch_size: int = 1
    eval_limit: int | None = None
    bn_recalibration: int = 0
    log_every: int = 1
    progress_bar: bool = True
    dataset_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.dataset, self.model) not in RECIPES:
            datasets = sorted({d for d, _ in RECIPES})
            raise ValueError(f"no recipe for dataset {self.dataset!r} and model {self.model!r}; "
                             f"datasets: {datasets}, models: {list(MODEL_NAMES)}")
        check_choice("method", self.method, METHODS)
        check_choice("amp", self.amp, AMP_MODES)
        for name in ("batch_size", "epochs", "iters", "stop_after", "eval_limit"):
            setattr(self, name, check_optional_int(name, getattr(self, name)))
        for name in ("eval_batch_size", "log_every"):
            setattr(self, name, check_int(name, getattr(self, name)))
        for name in ("checkpoint_every", "eval_every", "workers", "bn_recalibration"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=0))
        if self.lr is not None:
            self.lr = check_learning_rate("lr", self.lr)
        for name in ("momentum", "weight_decay", "poly_power", "alpha"):
            setattr(self, name, check_finite(name, getattr(self, name)))
        for name in ("per_sample", "channels_last", "progress_bar"):
            setattr(self, name, check_bool(name, getattr(self, name)))
        self.seed = check_seed(self.seed)
        if self.crop_size is not None:
            self.crop_size = check_size("crop_size", self.crop_size)
        if self.iters is not None and self.epochs is not None:
            raise ValueError(f"give iters or epochs, not both (iters replaces the epoch count): "
                             f"got iters={self.iters}, epochs={self.epochs}")
        if self.dataset == "voc" and self.eval_batch_size != 1:
            raise ValueError(
                f"eval_batch_size must be 1 for dataset 'voc' (its validation images differ in size), "
                f"got {self.eval_batch_size}"
            )

    @property
    def recipe(self) -> Recipe:
        """The Table E-3 recipe of this dataset and model."""
        return RECIPES[(self.dataset, self.model)]

    @classmethod
    def saved(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of a saved run (``to_dict``), fields it lacks at their defaults, without the checks of
        ``__post_init__``: an older version may have allowed what this one refuses."""
        config = cls.__new__(cls)
        for spec in fields(cls):
            default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
            setattr(config, spec.name, values.get(spec.name, default))
        return config

    def resume_settings(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint to continue it exactly (with the
        same processes and batch, which are checked apart): the given learning rate (None: the recipe's) and the
        effective crop."""
        settings = {
            "dataset": self.dataset, "dataset_options": self.dataset_options, "model": self.model,
            "method": self.method, "seed": self.seed, "per_sample": self.per_sample, "lr": self.lr,
            "crop_size": self.crop(), "momentum": self.momentum, "weight_decay": self.weight_decay,
            "poly_power": self.poly_power, "amp": self.amp, "channels_last": self.channels_last,
        }
        if self.method == "dropclass":
            settings["alpha"] = self.alpha  # the baseline has no L_sup
        return settings

    def per_process_batch(self) -> int:
        """The batch per process: ``batch_size``, else the recipe's global batch over its process count."""
        return self.batch_size or max(1, self.recipe.batch_size // self.recipe.reference_world)

    def learning_rate(self, world_size: int) -> float:
        """``lr``, else the recipe's scaled by the linear rule to the global batch ``per_process_batch * world``."""
        if self.lr is not None:
            return self.lr
        return self.recipe.lr * self.per_process_batch() * world_size / self.recipe.batch_size

    def num_epochs(self) -> int:
        """``epochs``, else the recipe's for this method (DropClass trains twice as long)."""
        return self.epochs or self.recipe.epochs[self.method == "dropclass"]

    def crop(self) -> tuple[int, int]:
        """The training crop ``(height, width)``: ``crop_size``, else the recipe's."""
        return tuple(self.crop_size) if self.crop_size else self.recipe.crop_size

    def to_dict(self) -> dict[str, Any]:
        """The fields, NumPy numbers as Python ones (``__post_init__`` converts those given at construction; this
        covers fields set later): the trainer writes this as JSON."""
        return {name: _python_numbers(value) for name, value in asdict(self).items()}


def _python_numbers(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_python_numbers(item) for item in value)
    return value


def build_parser(datasets: tuple[str, ...], description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line shared by the training examples; ``datasets[0]`` is the default dataset; ``prog`` the
    command's name in the usage line (default: the script's)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)

    def add(*names: str, **options: Any) -> None:
        """``parser.add_argument`` whose help names the default of an option that takes a value."""
        if options.get("default") is not None and "action" not in options:
            options["help"] = (options.get("help", "") + " (default: %(default)s)").lstrip()
        parser.add_argument(*names, **options)

    add("--model", choices=MODEL_NAMES, default="hrnet_v2")
    add("--method", choices=METHODS, default="dropclass")
    add("--dataset", choices=datasets, default=datasets[0])
    add("--data-root", help="dataset root folder (not needed for --dataset synthetic)")
    add("--output", default="runs/train", help="folder for checkpoints, logs and results")
    add("--batch-size", type=int, help="batch per process (default: Table E-3's batch over its 4 GPUs)")
    add("--lr", type=float, help="learning rate (default: Table E-3's, scaled linearly to the global batch)")
    add("--epochs", type=int, help="training epochs (default: Table E-3's baseline / DropClass epochs)")
    add("--iters", type=int, help="train for N iterations instead of the epoch count (schedule spans N)")
    add("--stop-after", type=int, help="stop this process after N iterations, as if pre-empted (schedule unchanged)")
    add("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="random-crop size")
    add("--alpha", type=float, default=10.0, help="weight of L_sup")
    add("--per-sample", action="store_true", help="one DropClass mask per sample instead of per step")
    add("--workers", type=int, default=2, help="data-loading worker processes per rank")
    add("--device", choices=("cpu", "cuda"), default="cpu")
    add("--amp", choices=AMP_MODES, default="none", help="mixed precision")
    add("--channels-last", action="store_true", help="train in channels_last memory format")
    add("--seed", type=int, default=0)
    add("--pretrained", help="ImageNet HRNet / official DropClass / torchvision checkpoint to start from")
    add("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: OUTPUT/checkpoint.pt)")
    add("--checkpoint-every", type=int, default=1000, help="iterations between checkpoints (0: only at the end)")
    add("--eval-every", type=int, default=0, help="epochs between evaluations (0: only at the end)")
    add("--eval-batch-size", type=int, default=1)
    add("--eval-limit", type=int, help="evaluate on the first N validation images only")
    add("--bn-recalibration", type=int, default=0, metavar="N",
        help="before the final evaluation, re-estimate BatchNorm statistics over N training batches (short runs)")
    add("--log-every", type=int, default=1, help="iterations between log rows")
    add("--no-progress-bar", dest="progress_bar", action="store_false")
    add("--synthetic-length", type=int, help="images in each split of --dataset synthetic")
    if "voc" in datasets:
        add("--no-background", action="store_true", help="the paper's 20-class VOC setting: background is ignored")
        add("--sbd", action="store_true", help="train on the SBD-augmented list (SegmentationClassAug)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from the namespace :func:`build_parser` parsed."""
    options: dict[str, Any] = {}
    if args.dataset == "voc":
        options = {"no_background": args.no_background, "sbd": args.sbd}
    else:
        for flag in ("no_background", "sbd"):
            if getattr(args, flag, False):
                raise ValueError(f"--{flag.replace('_', '-')} is for --dataset voc, got --dataset {args.dataset}")
    if args.dataset != "synthetic" and args.data_root is None:
        raise ValueError(f"--data-root is required for --dataset {args.dataset}")
    if args.synthetic_length is not None:
        if args.dataset != "synthetic":
            raise ValueError(f"--synthetic-length is for --dataset synthetic, got --dataset {args.dataset}")
        options = {"length": args.synthetic_length}
    return TrainConfig(
        dataset=args.dataset, model=args.model, method=args.method, data_root=args.data_root, output=args.output,
        batch_size=args.batch_size, lr=args.lr, epochs=args.epochs, iters=args.iters, stop_after=args.stop_after,
        crop_size=tuple(args.crop_size) if args.crop_size else None, alpha=args.alpha, per_sample=args.per_sample,
        workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last, seed=args.seed,
        pretrained=args.pretrained, resume=args.resume, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, eval_batch_size=args.eval_batch_size, eval_limit=args.eval_limit,
        bn_recalibration=args.bn_recalibration, log_every=args.log_every, progress_bar=args.progress_bar,
        dataset_options=options,
    )
