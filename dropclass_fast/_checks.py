"""Argument checks for numbers, counts and choices, shared across the package; each error names the argument and its
value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

#: What :func:`int_list` takes: a sequence of integers (Python or NumPy), or a 1-D integer tensor or NumPy array.
IntListLike = Sequence[int] | torch.Tensor | np.ndarray


def is_number(value: object) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """An integer (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_list(name: str, values: object, kind: str) -> list[int]:
    """``values`` as a list of Python ints; TypeError naming ``name`` and ``kind`` (what the ints are) unless it is
    a sequence of integers (Python or NumPy) or a 1-D integer tensor or NumPy array. Bools and floats are refused:
    ``int()`` would truncate ``1.7`` and read ``True`` as ``1``."""
    if isinstance(values, torch.Tensor):
        integral = values.dim() == 1 and not (values.is_floating_point() or values.is_complex())
        accepted = integral and values.dtype != torch.bool
    elif isinstance(values, np.ndarray):
        accepted = values.ndim == 1 and np.issubdtype(values.dtype, np.integer)
    else:
        accepted = isinstance(values, Sequence) and not isinstance(values, str) and all(is_int(v) for v in values)
    if not accepted:
        raise TypeError(f"{name} must be a sequence of integer {kind}, got {values!r}")
    return [int(v) for v in (values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else values)]


def require_tensor(name: str, value: object) -> torch.Tensor:
    """``value`` itself; TypeError naming ``name`` unless it is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(name: str, value: object, dims: tuple[int, ...], layout: str) -> torch.Tensor:
    """``value`` itself; TypeError naming ``name`` unless it is a floating tensor, ValueError naming ``layout``
    unless it has one of the dimension counts ``dims``."""
    tensor = require_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
    if tensor.dim() not in dims:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")
    return tensor


def check_bool(name: str, value: object) -> bool:
    """``value`` as a Python bool; TypeError naming ``name`` unless it is a bool (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _refused(name: str, requirement: str, value: object) -> str:
    """The message for a refused scalar. While ``torch.compile`` traces, a NumPy scalar is a tensor, whose value
    tracing cannot show: the message says to pass a Python number instead."""
    if torch.compiler.is_compiling() and not isinstance(value, (int, float)):
        return f"{name} must be {requirement}; under torch.compile pass a Python number (NumPy ones trace as tensors)"
    if isinstance(value, torch.Tensor):
        return f"{name} must be {requirement}, a Python or NumPy number, not a tensor (.item() gives one): {value!r}"
    return f"{name} must be {requirement}, got {value!r}"


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` itself; ValueError naming ``name``, the value and ``choices`` unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


def check_ignore_index(ignore_index: object) -> int:
    """``ignore_index`` as an int; TypeError unless it is an integer (not a bool or a float), ValueError unless it
    fits in int64 (the kernels' label type)."""
    if not is_int(ignore_index):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not -(2**63) <= ignore_index < 2**63:  # type: ignore[operator]
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index!r}")
    return int(ignore_index)  # type: ignore[call-overload]


def check_finite(name: str, value: object, positive: bool = False) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite number (Python or NumPy, not a bool)
    at least 0, or above 0 when ``positive``. Traces under ``torch.compile`` (comparisons, which NaN fails)."""
    if not is_number(value) or not (0 < value if positive else 0 <= value) or not value < math.inf:  # type: ignore[operator]
        raise ValueError(_refused(name, f"a finite {'positive' if positive else 'non-negative'} number", value))
    return float(value)  # type: ignore[arg-type]


def check_fraction(name: str, value: object, requirement: str = "a number in [0, 1]") -> float:
    """``value`` as a float; ValueError naming ``name`` (and ``requirement``) unless it is a number (Python or
    NumPy, not a bool) in ``[0, 1]``. Traces under ``torch.compile``."""
    if not is_number(value) or not 0.0 <= value <= 1.0:  # type: ignore[operator]
        raise ValueError(_refused(name, requirement, value))
    return float(value)  # type: ignore[arg-type]


def check_int_in(name: str, value: object, low: int, high: int, meaning: str = "") -> int:
    """``value`` as a Python int; ValueError naming ``name`` (and what the range is, ``meaning``) unless it is an
    integer (Python or NumPy, not a bool) in ``[low, high]``."""
    if not is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int in [{low}, {high}]{f' ({meaning})' if meaning else ''}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _is_count(value: object, minimum: int) -> bool:
    return is_int(value) and value >= minimum  # type: ignore[operator]


def _count_kind(minimum: int) -> str:
    return {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int of at least {minimum}")


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as a Python int; ValueError naming ``name`` unless it is an integer (Python or NumPy, not a bool
    or a float) of at least ``minimum``."""
    if not _is_count(value, minimum):
        raise ValueError(f"{name} must be {_count_kind(minimum)}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_optional_int(name: str, value: object, minimum: int = 1) -> int | None:
    """:func:`check_int` that also lets ``None`` through."""
    if value is None:
        return None
    if not _is_count(value, minimum):
        raise ValueError(f"{name} must be {_count_kind(minimum)} or None, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_size(name: str, value: object) -> tuple[int, int]:
    """``value`` as ``(height, width)``; ValueError naming ``name`` unless it is a sequence (tuple or list, not an
    array) of two positive integers."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2 or not all(
        is_int(v) and v > 0 for v in value
    ):
        raise ValueError(f"{name} must be two positive ints (height, width), got {value!r}")
    return int(value[0]), int(value[1])
