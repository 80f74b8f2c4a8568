"""Train HRNet-W18-small v1/v2 or DeepLabV3-MobileNetV3 on Pascal VOC 2012 (or synthetic data), baseline or DropClass.

    python examples/train_voc.py --model deeplabv3 --method dropclass --data-root /data/VOCdevkit/VOC2012 --sbd
    python examples/train_voc.py --no-background ...   # the paper's 20-class setting, background ignored

Defaults follow the paper (Table E-3, 200 / 400 epochs); see ``--help``.
"""

import sys

from dropclass_fast.train import main

if __name__ == "__main__":
    main(sys.argv[1:], datasets=("voc", "synthetic"), description=__doc__.splitlines()[0])
