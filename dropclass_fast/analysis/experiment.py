"""The synthetic debiasing experiment: baseline vs DropClass on the embedded street scenes, several seeds, CPU.

For each seed both models are trained with the training engine (DropClass
for twice the baseline's iterations, as in the paper), then the bias
vulnerability protocol (Table B-1), the class-frequency table (Table C-2's
layout) and the reconstruction probe run on one fixed validation set. The
runner then has :mod:`~dropclass_fast.analysis.experiment_report` write the
Markdown report, with the tables, the figures, the timings and the command
that produced it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .._checks import check_choice, check_int, check_optional_int
from ..data import SyntheticStreets
from ..data.base import check_seed
from ..metrics import mean_iou
from ..train import TrainConfig, check_learning_rate, train
from ..train.batchnorm import recalibrate_batchnorm
from ..train.config import METHODS
from ._evaluation import EvalOptions, confusion_of
from .bias import BiasReport, bias_vulnerability, check_protocol
from .frequency import class_frequency
from .probe import ProbeResult, reconstruction_probe

LABELS = {"baseline": "Baseline", "dropclass": "DropClass"}
#: seed of the validation scenes every run is analysed on (independent of the training seeds' streams)
VALIDATION_SEED = 1000


@dataclass(frozen=True)
class ExperimentConfig:
    """The experiment's size and settings (the defaults take about 25 minutes on a quiet 2-core CPU).

    Attributes:
        model: ``"hrnet_v1"`` or ``"hrnet_v2"``.
        iters: baseline training iterations (DropClass trains ``2 * iters``).
        seeds: one baseline/DropClass pair per seed (model init, data order, training scenes).
        batch_size, crop_size, lr: training batch, random-crop size, learning rate (``None``: the recipe's
            0.02; 0.05 learns the small classes sooner in a few hundred iterations).
        image_size: ``(height, width)`` of every synthetic scene.
        train_length, val_length: scenes in the training split and in the analysed validation set.
        reference: ``"baseline"`` or ``"dropclass"``: whose influences choose the erased classes.
        top_count: erased classes per class (Top-3 in the paper).
        vulnerable_count: classes in ``mIoU*`` (9 of 19 in the paper; 4 of the 8 synthetic classes).
        fill: colour of erased pixels (``"mean"`` or an RGB triple).
        probe_classes: class names dropped in the reconstruction probe of each DropClass model.
        probe_iters, probe_lr: SGD steps and learning rate of the probe classifiers.
        bn_batches: training batches over which every BatchNorm's running statistics are re-estimated after
            training (0: keep the trained ones); see :func:`~dropclass_fast.train.recalibrate_batchnorm`.
        workers, eval_batch_size: data-loading processes, evaluation batch.
        threads: ``torch.set_num_threads`` for the run (``None``: torch's default). On a CPU shared with other
            jobs one thread can be much faster than two.
        output: folder for the runs (checkpoints, logs, per-seed results).
        doc: the Markdown report; its figures and CSV tables go to the folder named like it without ``.md``.
    """

    model: str = "hrnet_v1"
    iters: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 8
    crop_size: tuple[int, int] = (96, 192)
    image_size: tuple[int, int] = (96, 192)
    lr: float | None = 0.05
    train_length: int = 512
    val_length: int = 128
    reference: str = "baseline"
    top_count: int = 3
    vulnerable_count: int = 4
    fill: str | tuple[int, int, int] = "mean"
    probe_classes: tuple[str, ...] = ("person", "bicycle")
    probe_iters: int = 150
    probe_lr: float = 0.01
    bn_batches: int = 50
    workers: int = 1
    eval_batch_size: int = 16
    threads: int | None = None
    output: str = "runs/synthetic_experiment"
    doc: str = "docs/synthetic_experiment.md"

    def __post_init__(self) -> None:
        if self.model not in ("hrnet_v1", "hrnet_v2"):
            raise ValueError(f"model must be 'hrnet_v1' or 'hrnet_v2', got {self.model!r}")
        check_choice("reference", self.reference, METHODS)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct ints, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(check_seed(seed) for seed in self.seeds))  # NumPy ints as ints
        for name in ("iters", "batch_size", "train_length", "val_length", "probe_iters", "eval_batch_size"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        unknown = sorted(set(self.probe_classes) - set(SyntheticStreets.class_names))
        if unknown:
            raise ValueError(f"probe_classes must be synthetic class names {SyntheticStreets.class_names}, "
                             f"got {unknown}")
        object.__setattr__(self, "threads", check_optional_int("threads", self.threads))
        object.__setattr__(self, "bn_batches", check_int("bn_batches", self.bn_batches, minimum=0))
        counts = check_protocol(len(SyntheticStreets.class_names), self.top_count, self.vulnerable_count, self.fill)
        object.__setattr__(self, "top_count", counts[0])
        object.__setattr__(self, "vulnerable_count", counts[1])
        object.__setattr__(self, "probe_lr", check_learning_rate("probe_lr", self.probe_lr))
        if self.lr is not None:
            object.__setattr__(self, "lr", check_learning_rate("lr", self.lr))
        if not self.doc.endswith(".md"):
            raise ValueError(f"doc must be a Markdown file name ending in .md, got {self.doc!r}")

    @property
    def figures(self) -> Path:
        """The folder of the report's figures and CSV tables."""
        return Path(self.doc).with_suffix("")


@dataclass
class SeedResult:
    """One seed: the bias report, the probe results, the training logs and the seconds each phase took."""

    seed: int
    report: BiasReport
    probes: list[ProbeResult]
    logs: dict[str, Path]
    seconds: dict[str, float]
    trained_miou: dict[str, float]


def _train_config(config: ExperimentConfig, seed: int, method: str) -> TrainConfig:
    return TrainConfig(
        dataset="synthetic", model=config.model, method=method,
        iters=config.iters * (2 if method == "dropclass" else 1), batch_size=config.batch_size,
        crop_size=tuple(config.crop_size), lr=config.lr, workers=config.workers, seed=seed, checkpoint_every=0,
        eval_batch_size=config.eval_batch_size, eval_limit=config.val_length, progress_bar=False, log_every=10,
        output=str(Path(config.output) / f"seed{seed}" / method),
        dataset_options={"length": config.train_length, "size": tuple(config.image_size)},
    )


def validation_set(config: ExperimentConfig) -> SyntheticStreets:
    """The fixed validation scenes every run is analysed on."""
    return SyntheticStreets("val", length=config.val_length, size=tuple(config.image_size), seed=VALIDATION_SEED)


def training_set(config: ExperimentConfig, seed: int) -> SyntheticStreets:
    """Seed ``seed``'s training scenes with the training engine's augmentation (the probe trains on them)."""
    dataset = SyntheticStreets("train", length=config.train_length, size=tuple(config.image_size), seed=seed)
    dataset.use_training_augmentation(tuple(config.crop_size))
    return dataset


def run_seed(
    config: ExperimentConfig, seed: int, val_set: SyntheticStreets
) -> tuple[SeedResult, dict[str, nn.Module]]:
    """Trains the baseline and DropClass for ``seed``, runs the bias analysis and the probe on ``val_set``;
    returns the results (also saved as ``OUTPUT/seed<seed>/analysis.json``) and the two trained models."""
    seconds: dict[str, float] = {}
    trained_miou: dict[str, float] = {}
    models = {}
    options = EvalOptions(batch_size=config.eval_batch_size)
    for method in METHODS:
        started = time.perf_counter()
        models[method] = train(_train_config(config, seed, method)).model.eval()
        trained_miou[method] = mean_iou(confusion_of(models[method], val_set, val_set.num_classes, options).iou())
        if config.bn_batches:
            recalibrate_batchnorm(models[method], training_set(config, seed), config.bn_batches, config.batch_size,
                                  seed)
        seconds[f"train {method}"] = time.perf_counter() - started
    started = time.perf_counter()
    report = bias_vulnerability(
        models, val_set, reference=config.reference, top_count=config.top_count,
        vulnerable_count=config.vulnerable_count, fill=config.fill, options=options,
    )
    seconds["bias analysis"] = time.perf_counter() - started
    started = time.perf_counter()
    probes = [
        reconstruction_probe(
            models["dropclass"], training_set(config, seed), val_set, val_set.class_names.index(name),
            iters=config.probe_iters, batch_size=config.batch_size, lr=config.probe_lr, seed=seed, options=options,
        )
        for name in config.probe_classes
    ]
    seconds["probe"] = time.perf_counter() - started
    logs = {LABELS[m]: Path(_train_config(config, seed, m).output) / "log.csv" for m in METHODS}
    result = SeedResult(seed, report, probes, logs, seconds, trained_miou)
    _save_seed(result, Path(config.output) / f"seed{seed}" / "analysis.json")
    return result, models


def _json_values(value: object) -> object:
    """``value`` with tensors as (nested) lists and every NaN as ``None``: strict JSON has no NaN."""
    if isinstance(value, torch.Tensor):
        value = value.double().tolist()
    if isinstance(value, dict):
        return {key: _json_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_values(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _save_seed(result: SeedResult, path: Path) -> None:
    report = result.report
    content = {
        "seed": result.seed,
        "class_names": list(report.class_names),
        "reference": report.reference,
        "top": report.top,
        "influence": report.influence,
        "iou": report.iou,
        "iou_star": report.iou_star,
        "summary": {m: report.summary(m) for m in report.models},
        "probes": [{k: v for k, v in asdict(p).items() if k != "losses"} for p in result.probes],
        "seconds": result.seconds,
        "miou_trained_batchnorm_statistics": result.trained_miou,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_values(content), indent=2, allow_nan=False) + "\n")


def run_experiment(config: ExperimentConfig, command: str) -> Path:
    """Runs every seed and writes the report ``config.doc`` (with figures and CSVs); returns its path.

    ``command`` is the command line that ran the experiment, quoted in the report.
    """
    started = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    val_set = validation_set(config)
    frequency = class_frequency(training_set(config, config.seeds[0]), mode="pixel")
    results: list[SeedResult] = []
    first_models: dict[str, nn.Module] = {}
    for seed in config.seeds:
        result, models = run_seed(config, seed, val_set)
        results.append(result)
        first_models = first_models or models
        print(f"seed {seed} done: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()), flush=True)
    from .experiment_report import write_figures, write_report  # here: experiment_report imports this module

    figures = write_figures(config, results, first_models, val_set)
    return write_report(config, results, frequency, figures, command, time.perf_counter() - started)
