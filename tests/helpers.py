"""Helpers several test modules share: a free port for process groups, and confusion matrices and IoU computed
with NumPy (independent of ``ConfusionMatrix`` and the evaluation loop)."""

from __future__ import annotations

import socket

import numpy as np


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
