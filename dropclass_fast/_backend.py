"""Choosing the implementation behind :mod:`dropclass_fast.functional`."""

from __future__ import annotations

import warnings

import torch

from . import _extension

BACKENDS = ("auto", "triton", "cuda", "cpp", "eager")
_UNAVAILABLE = ("triton", "cuda")  # GPU backends: not part of this build yet

_current = "auto"
_warned: set[str] = set()


def get_backend() -> str:
    """The backend name last chosen with :class:`set_backend` (``"auto"`` by default)."""
    return _current


class set_backend:  # noqa: N801 - used as a function, like torch.set_grad_enabled
    """Choose the implementation of the DropClass ops: ``"auto"``, ``"cpp"``, ``"eager"``, ...

    Works as a plain call (the choice stays until changed) and as a context
    manager (the previous choice comes back on exit)::

        dropclass_fast.set_backend("eager")
        with dropclass_fast.set_backend("cpp"):
            loss = dcf.seg_cross_entropy(logits, target)

    ``"auto"`` uses the C++ kernels for CPU tensors and falls back to the eager
    reference, with one warning, when they cannot be built or loaded.
    ``"eager"`` forces :mod:`dropclass_fast.reference`. ``"cpp"`` forces the
    C++ kernels and raises if they are unavailable. ``"triton"`` and
    ``"cuda"`` are reserved for the GPU backends and raise when used.
    Under ``torch.compile`` the backend is read once, when a function is traced.
    """

    def __init__(self, name: str) -> None:
        global _current
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        self._previous = _current
        _current = name

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _current
        _current = self._previous


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@torch.compiler.assume_constant_result
def resolve(device_type: str) -> str:
    """The implementation to run for tensors on ``device_type``: ``"cpp"`` or ``"eager"``."""
    name = _current
    if name == "eager":
        return "eager"
    if name in _UNAVAILABLE:
        raise RuntimeError(
            f"backend {name!r} is not available in this build of dropclass_fast; use 'auto', 'cpp' or 'eager'"
        )
    if name == "cpp":
        if device_type != "cpu":
            raise ValueError(f"backend 'cpp' runs on CPU tensors, got tensors on {device_type!r}")
        if not _extension.load():
            raise RuntimeError(f"backend 'cpp': the C++ extension is unavailable ({_extension.error()})")
        return "cpp"
    if device_type == "cpu":
        if _extension.load():
            return "cpp"
        _warn_once(
            "cpu",
            f"dropclass_fast: C++ kernels unavailable ({_extension.error()}); using the eager reference",
        )
        return "eager"
    _warn_once(device_type, f"dropclass_fast: no fused kernels for {device_type!r} tensors; using the eager reference")
    return "eager"
