"""``python -m dropclass_fast.train --dataset cityscapes|voc|synthetic ...``: the training examples' command line
for every dataset, where the repository's ``examples/`` are not at hand (an installed package)."""

import sys

from .cli import main

main(sys.argv[1:], datasets=("cityscapes", "voc", "synthetic"), description=__doc__.splitlines()[0],
     prog="python -m dropclass_fast.train")
