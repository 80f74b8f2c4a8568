"""``python -m dropclass_fast.train --dataset cityscapes|voc|synthetic ...``: the training examples' command line
for every dataset, where the repository's ``examples/`` are not at hand (an installed package)."""

import sys

from .cli import main

main(sys.argv[1:], datasets=("cityscapes", "voc", "synthetic"),
     description="Train a segmentation model, baseline or with DropClass, on Cityscapes, VOC or the synthetic dataset.",
     prog="python -m dropclass_fast.train")
