"""Triton kernels of the DropClass ops (one module per op: its kernels and launcher) and their torch.library glue.

GPU tensors run the compiled kernels; with ``TRITON_INTERPRET=1`` in the environment *before this package is
first imported*, the kernels are defined in Triton's interpreter mode and run on CPU tensors (how CI tests them).
The entry points are in :mod:`.ops`; reach them through :func:`dropclass_fast.set_backend` (``"triton"`` or
``"auto"``). Needs the ``triton`` package.
"""

from __future__ import annotations

from . import ops
from ._common import INTERPRET

__all__ = ["INTERPRET", "ops"]
