"""The training engine behind ``examples/train_cityscapes.py`` and ``examples/train_voc.py``.

``train(TrainConfig(...))`` runs one job: single process, or one rank under
``torchrun`` (DDP; NCCL on GPU, gloo on CPU), with mixed precision, atomic
checkpoints, exact resume, a CSV log and per-class IoU at the end.
"""

from .batchnorm import recalibrate_batchnorm
from .checkpoint import load_checkpoint, save_atomic
from .cli import main
from .config import RECIPES, Recipe, TrainConfig, build_parser, check_learning_rate, config_from_args
from .engine import TrainResult, evaluate, poly_lr, train
from .sampler import ResumableSampler

__all__ = [
    "RECIPES",
    "Recipe",
    "ResumableSampler",
    "TrainConfig",
    "TrainResult",
    "build_parser",
    "check_learning_rate",
    "config_from_args",
    "evaluate",
    "load_checkpoint",
    "main",
    "poly_lr",
    "recalibrate_batchnorm",
    "save_atomic",
    "train",
]
