"""Reference segmentation models with DropClass, their checkpoint loaders, and DropClass for any model.

>>> from dropclass_fast.models import attach_dropclass, build_model, load_official_checkpoint, predict
>>> model = build_model("hrnet_v2", num_classes=19, dropclass=True, seed=0)
>>> out = model.train()(images, progress=t)        # DropClassOutput at 1/4 resolution
>>> logits = predict(model.eval(), images)          # [B, K, H, W]
>>> wrapped = attach_dropclass(my_model, classifier="head.cls")   # any model
"""

from __future__ import annotations

from .attach import DropClassModel, attach_dropclass
from .base import SegmentationModel, predict
from .build import MODEL_NAMES, build_model
from .checkpoints import (
    LoadReport,
    check_backbone_loaded,
    load_official_checkpoint,
    load_torchvision_checkpoint,
    read_state_dict,
    to_official_state_dict,
)
from .deeplabv3 import DeepLabV3, deeplabv3_mobilenet_v3_large
from .hrnet import HRNET_CONFIGS, HRNet, StageConfig, hrnet_w18_small

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "predict",
    "attach_dropclass",
    "DropClassModel",
    "SegmentationModel",
    "HRNet",
    "HRNET_CONFIGS",
    "StageConfig",
    "hrnet_w18_small",
    "DeepLabV3",
    "deeplabv3_mobilenet_v3_large",
    "LoadReport",
    "check_backbone_loaded",
    "load_official_checkpoint",
    "load_torchvision_checkpoint",
    "read_state_dict",
    "to_official_state_dict",
]
