"""DropClass training for segmentation models, with fused kernels.

>>> from dropclass_fast import DropClass, DropClassLoss
>>> dc = DropClass(classifier)                 # wraps the model's final nn.Conv2d
>>> out = dc(features, progress=t)             # training: logits, drop_logits, keep
>>> total, parts = DropClassLoss()(out, target, progress=t)
"""

from __future__ import annotations

from . import functional, reference
from ._backend import get_backend, set_backend
from .loss import DropClassLoss
from .module import DropClass, DropClassOutput

__version__ = "0.1.0"

__all__ = [
    "DropClass",
    "DropClassLoss",
    "DropClassOutput",
    "functional",
    "reference",
    "set_backend",
    "get_backend",
    "__version__",
]
