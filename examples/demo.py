"""The main job on the embedded synthetic dataset: HRNet-W18-small trained as a baseline and with DropClass.

    python examples/demo.py                 # a few minutes on a CPU
    python examples/demo.py --quick         # seconds: a smoke run

Both runs use the training engine of ``examples/train_cityscapes.py`` (same
recipe, poly LR, SGD); DropClass trains twice the baseline's iterations, as in
the paper. The script prints the per-class IoU of both models side by side and
writes ``iou.png`` (per-class IoU bars) and ``loss.png`` (training curves)
into ``--output``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dropclass_fast.metrics import format_iou_table
from dropclass_fast.train import TrainConfig, train
from dropclass_fast.viz import plot_iou_bars, plot_training_curves


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("hrnet_v1", "hrnet_v2"), default="hrnet_v1")
    parser.add_argument("--iters", type=int, default=200, help="baseline iterations (DropClass trains twice as many)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, nargs=2, default=(96, 192), metavar=("H", "W"))
    parser.add_argument("--length", type=int, default=512, help="images per synthetic split")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--bn-batches", type=int, default=50, help="re-estimate BatchNorm statistics over N batches before evaluating"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few iterations on a few images")
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.batch_size, args.crop_size, args.length, args.bn_batches = 3, 2, (48, 96), 8, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    baseline = TrainConfig(
        dataset="synthetic", model=args.model, method="baseline", iters=args.iters, batch_size=args.batch_size,
        crop_size=tuple(args.crop_size), workers=args.workers, seed=args.seed, checkpoint_every=0,
        eval_batch_size=16, bn_recalibration=args.bn_batches, progress_bar=args.progress_bar,
        output=str(output / "baseline"),
        dataset_options={"length": args.length},
    )
    dropclass = dataclasses.replace(
        baseline, method="dropclass", iters=2 * args.iters, output=str(output / "dropclass")
    )
    started = time.perf_counter()
    results = {config.method: train(config) for config in (baseline, dropclass)}
    minutes = (time.perf_counter() - started) / 60
    class_names = results["baseline"].class_names
    ious = {"baseline": results["baseline"].iou, "DropClass": results["dropclass"].iou}
    print(f"\nper-class IoU (%) on the synthetic validation split, {args.model}, {minutes:.1f} min in all:")
    print(format_iou_table(class_names, ious))
    bars = plot_iou_bars(class_names, ious, output / "iou.png", title=f"{args.model} on synthetic streets")
    curves = plot_training_curves(
        {name: output / method / "log.csv" for name, method in (("baseline", "baseline"), ("DropClass", "dropclass"))},
        output / "loss.png",
    )
    print(f"figures: {bars}, {curves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
