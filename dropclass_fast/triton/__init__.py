"""Triton kernels of the DropClass ops (one module per op: its kernels and launcher) and their torch.library glue.

GPU tensors run the compiled kernels; with ``TRITON_INTERPRET=1`` in the environment *before this package is
first imported*, the kernels are defined in Triton's interpreter mode and run on CPU tensors (how CI tests them).
Import it through :func:`dropclass_fast.set_backend` (``"triton"`` / ``"auto"``); it needs the ``triton`` package.
"""

from __future__ import annotations

from ._common import INTERPRET
from .ops import channel_mask, dropclass_loss_terms, dropped_class_prob, seg_cross_entropy

__all__ = ["INTERPRET", "channel_mask", "seg_cross_entropy", "dropped_class_prob", "dropclass_loss_terms"]
