"""Train HRNet-W18-small v1/v2 or DeepLabV3-MobileNetV3 on Cityscapes (or synthetic data), baseline or DropClass.

    python examples/train_cityscapes.py --model hrnet_v2 --method dropclass --data-root /data/cityscapes
    torchrun --nproc_per_node 4 examples/train_cityscapes.py --device cuda --amp bf16 --data-root ...
    python examples/train_cityscapes.py --dataset synthetic --iters 200 --batch-size 4   # no data needed

Defaults follow the paper (Table E-3, 484 / 968 epochs); see ``--help``.
"""

import sys

from dropclass_fast.train import main

if __name__ == "__main__":
    main(sys.argv[1:], datasets=("cityscapes", "synthetic"), description=__doc__.splitlines()[0])
