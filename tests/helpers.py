"""Helpers several test modules share: a free port for process groups, confusion matrices and IoU computed with
NumPy (independent of ``ConfusionMatrix`` and the evaluation loop), and where a CUDA toolkit program is."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np

#: Where :func:`find_cuda_tool` looks, in this order (for skip reasons).
CUDA_TOOL_PLACES = "CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH"


def find_cuda_tool(name: str) -> Path | None:
    """The CUDA toolkit program ``name`` (``nvcc``, ``compute-sanitizer``) in the ``bin`` folder of ``$CUDA_HOME``,
    ``$CUDA_PATH`` or ``/usr/local/cuda``, else on ``PATH``; None where none has it."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).is_file():
            return Path(home) / "bin" / name
    found = shutil.which(name)
    return Path(found) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a ``tcp://`` process-group init)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def numpy_confusion(target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """int64 ``[K, K]`` counts (rows: label, columns: prediction) of the pixels whose label is not ignored."""
    valid = target != ignore_index
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (target[valid], pred[valid]), 1)
    return matrix


def numpy_iou(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` of a ``[K, K]`` confusion matrix; NaN for a class in neither."""
    tp = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return tp / (matrix.sum(0) + matrix.sum(1) - tp)
