"""``python -m dropclass_fast.analysis {frequency,bias,probe,synthetic}``: the analyses from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import DATASET_NAMES, SegmentationDataset, build_dataset
from ..models import MODEL_NAMES, SegmentationModel, build_model, read_state_dict
from ..train.batchnorm import recalibrate_batchnorm
from ..train.config import METHODS
from ._evaluation import EvalOptions
from .bias import bias_vulnerability
from .experiment import ExperimentConfig, run_experiment
from .frequency import FREQUENCY_MODES, class_frequency, paper_frequency_mode
from .probe import reconstruction_probe
from .tables import Table, bias_table, frequency_table, probe_table


def _dataset_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    add = parser.add_argument
    add("--dataset", choices=DATASET_NAMES, default="synthetic")
    add("--data-root", help="dataset folder (cityscapes, voc)")
    add("--split", default=split)
    add("--no-background", action="store_true", help="VOC without the background class (the paper's setting)")
    add("--synthetic-length", type=int, default=128, help="scenes of --dataset synthetic")
    add("--synthetic-size", type=int, nargs=2, default=(96, 192), metavar=("H", "W"))
    add("--synthetic-seed", type=int, default=1000)
    add("--workers", type=int, default=0)
    add("--limit", type=int, help="use the first N images only")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default="hrnet_v1")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch (1 for --dataset voc)")
    parser.add_argument("--output", help="folder for the Markdown and CSV tables")
    parser.add_argument("--crop-size", type=int, nargs=2, default=(96, 192), metavar=("H", "W"),
                        help="random crops of the training split (probe training, --bn-batches)")
    parser.add_argument("--bn-batches", type=int, default=0,
                        help="re-estimate BatchNorm statistics over N training batches first (for short runs)")
    parser.add_argument("--bn-batch-size", type=int, default=8, help="training crops per --bn-batches batch")


def _eval_options(args: argparse.Namespace) -> EvalOptions:
    if args.dataset == "voc" and args.batch_size != 1:
        raise ValueError(f"--batch-size must be 1 for --dataset voc (its images differ in size), got {args.batch_size}")
    return EvalOptions(batch_size=args.batch_size, workers=args.workers, limit=args.limit)


def _training_split(args: argparse.Namespace) -> SegmentationDataset:
    dataset = _dataset(args, "train")
    dataset.use_training_augmentation(tuple(args.crop_size))
    return dataset


def _load(args: argparse.Namespace, num_classes: int, dropclass: bool, path: str) -> SegmentationModel:
    model = load_model(args.model, num_classes, dropclass, path)
    if args.bn_batches:
        recalibrate_batchnorm(model, _training_split(args), args.bn_batches, args.bn_batch_size)
    return model


def _dataset(args: argparse.Namespace, split: str | None = None) -> SegmentationDataset:
    options: dict[str, Any] = {}
    if args.dataset == "voc":
        options["no_background"] = args.no_background
    if args.dataset == "synthetic":
        options = {"length": args.synthetic_length, "size": tuple(args.synthetic_size), "seed": args.synthetic_seed}
    return build_dataset(args.dataset, split or args.split, root=args.data_root, **options)


def _fill(text: str) -> str | tuple[int, ...]:
    if text == "mean":
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--fill must be 'mean' or 'R,G,B' integers, got {text!r}") from None


def load_model(name: str, num_classes: int, dropclass: bool, path: str) -> SegmentationModel:
    """A reference model with the weights in ``path`` (a state dict or a training checkpoint), in eval mode."""
    model = build_model(name, num_classes, dropclass)
    model.load_state_dict(read_state_dict(path))
    return model.eval()


def _write(tables: dict[str, Table], output: str | None) -> None:
    for name, table in tables.items():
        print(f"\n{name}:\n{table.to_markdown()}")
        if output:
            folder = Path(output)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.md").write_text(table.to_markdown() + "\n")
            (folder / f"{name}.csv").write_text(table.to_csv())


def _frequency(args: argparse.Namespace) -> None:
    dataset = _dataset(args)
    mode = args.mode or paper_frequency_mode(args.dataset)
    frequency = class_frequency(dataset, mode, workers=args.workers, limit=args.limit)
    order = torch.sort(frequency, stable=True).indices.tolist()
    label = "pixel %" if mode == "pixel" else "image %"
    rows = tuple((dataset.class_names[c], (frequency[c : c + 1].numpy() * 100,)) for c in order)
    _write({f"frequency_{mode}": Table((label,), rows, corner="class", decimals=2)}, args.output)


def _bias(args: argparse.Namespace) -> None:
    options = _eval_options(args)
    dataset = _dataset(args)
    k = dataset.num_classes
    vulnerable_count = min(9, k // 2) if args.vulnerable_count is None else args.vulnerable_count
    fill = _fill(args.fill)
    models = {"baseline": _load(args, k, False, args.baseline), "dropclass": _load(args, k, True, args.dropclass)}
    report = bias_vulnerability(models, dataset, args.reference, args.top_count, vulnerable_count, fill, options)
    labels = {"baseline": "Baseline", "dropclass": "Ours"}
    tables = {"table_b1": bias_table([report], labels)}
    if args.frequency:
        frequency = class_frequency(_dataset(args, "train"), args.frequency, workers=args.workers)
        tables["table_c2"] = frequency_table(
            dataset.class_names, frequency, report.iou["baseline"], report.iou["dropclass"],
            frequency_label="Pixel %" if args.frequency == "pixel" else "Instance %",
        )
    _write(tables, args.output)


def _probe(args: argparse.Namespace) -> None:
    options = _eval_options(args)
    val_set = _dataset(args)
    unknown = [name for name in args.classes if name not in val_set.class_names]
    if unknown:
        raise ValueError(f"--classes must name classes of {args.dataset} {val_set.class_names}, got {unknown}")
    train_set = _training_split(args)
    model = _load(args, val_set.num_classes, True, args.checkpoint)
    results = []
    for name in args.classes:
        results.append(reconstruction_probe(
            model, train_set, val_set, val_set.class_names.index(name), iters=args.iters,
            batch_size=args.train_batch_size, lr=args.lr, options=options,
        ))
    _write({"probe": probe_table(results)}, args.output)


def _synthetic(args: argparse.Namespace, argv: Sequence[str]) -> None:
    config = ExperimentConfig(
        model=args.model, iters=args.iters, seeds=tuple(args.seeds), batch_size=args.batch_size,
        crop_size=tuple(args.crop_size), image_size=tuple(args.image_size), lr=args.lr,
        train_length=args.train_length, val_length=args.val_length, reference=args.reference,
        top_count=args.top_count, vulnerable_count=args.vulnerable_count, fill=_fill(args.fill),
        probe_classes=tuple(args.probe_classes), probe_iters=args.probe_iters, probe_lr=args.probe_lr,
        bn_batches=args.bn_batches,
        workers=args.workers,
        eval_batch_size=args.eval_batch_size, threads=args.threads, output=args.output, doc=args.doc,
    )
    command = shlex.join(["python", "-m", "dropclass_fast.analysis", *argv])
    print(f"report written to {run_experiment(config, command)}")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per analysis."""
    parser = argparse.ArgumentParser(prog="python -m dropclass_fast.analysis", description=__doc__.replace("``", ""))
    verbs = parser.add_subparsers(dest="verb", required=True)

    frequency = verbs.add_parser("frequency", help="class frequency of a dataset split (one pass)")
    _dataset_arguments(frequency, "train")
    frequency.add_argument("--mode", choices=FREQUENCY_MODES,
                           help="default: image (instance) frequency on voc, pixel frequency otherwise (the paper's)")
    frequency.add_argument("--output", help="folder for the Markdown and CSV tables")

    bias = verbs.add_parser("bias", help="Table B-1: bias vulnerability of a baseline and a DropClass model")
    _dataset_arguments(bias, "val")
    _eval_arguments(bias)
    bias.add_argument("--baseline", required=True, help="baseline weights (model.pt or checkpoint.pt)")
    bias.add_argument("--dropclass", required=True, help="DropClass weights (model.pt or checkpoint.pt)")
    bias.add_argument("--reference", choices=METHODS, default="baseline", help="whose influences pick the Top-k")
    bias.add_argument("--fill", default="mean", help="erased pixels' colour: 'mean' or 'R,G,B'")
    bias.add_argument("--top-count", type=int, default=3)
    bias.add_argument("--vulnerable-count", type=int,
                      help="classes in mIoU* (default: the paper's 9, or K // 2 where K < 18)")
    bias.add_argument("--frequency", choices=FREQUENCY_MODES, help="also Table C-2's layout by this frequency")

    probe = verbs.add_parser("probe", help="section A: reconstruct dropped classes from A_drop")
    _dataset_arguments(probe, "val")
    _eval_arguments(probe)
    probe.add_argument("--checkpoint", required=True, help="DropClass weights (model.pt or checkpoint.pt)")
    probe.add_argument("--classes", nargs="+", required=True, help="class names to drop, one probe each")
    probe.add_argument("--iters", type=int, default=200)
    probe.add_argument("--train-batch-size", type=int, default=8)
    probe.add_argument("--lr", type=float, default=0.01)

    defaults = ExperimentConfig()
    synthetic = verbs.add_parser("synthetic", help="the synthetic debiasing experiment (trains, analyses, reports)")
    add = synthetic.add_argument
    add("--model", choices=("hrnet_v1", "hrnet_v2"), default=defaults.model)
    add("--iters", type=int, default=defaults.iters, help="baseline iterations (DropClass: twice)")
    add("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--crop-size", type=int, nargs=2, default=defaults.crop_size, metavar=("H", "W"))
    add("--image-size", type=int, nargs=2, default=defaults.image_size, metavar=("H", "W"))
    add("--lr", type=float, default=defaults.lr)
    add("--train-length", type=int, default=defaults.train_length)
    add("--val-length", type=int, default=defaults.val_length)
    add("--reference", choices=METHODS, default=defaults.reference)
    add("--top-count", type=int, default=defaults.top_count)
    add("--vulnerable-count", type=int, default=defaults.vulnerable_count)
    add("--fill", default="mean", help="erased pixels' colour: 'mean' or 'R,G,B'")
    add("--probe-classes", nargs="*", default=list(defaults.probe_classes))
    add("--probe-iters", type=int, default=defaults.probe_iters)
    add("--probe-lr", type=float, default=defaults.probe_lr)
    add("--bn-batches", type=int, default=defaults.bn_batches,
        help="re-estimate BatchNorm statistics over N training batches after training (0: off)")
    add("--workers", type=int, default=defaults.workers)
    add("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    add("--threads", type=int, default=defaults.threads, help="torch threads (default: torch's choice)")
    add("--output", default=defaults.output)
    add("--doc", default=defaults.doc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one sub-command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.verb == "synthetic":
        _synthetic(args, argv)
    else:
        {"frequency": _frequency, "bias": _bias, "probe": _probe}[args.verb](args)
    return 0
