"""Choosing the implementation behind :mod:`dropclass_fast.functional`."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import torch

from . import _extension
from ._checks import check_choice

BACKENDS = ("auto", "triton", "cuda", "cpp", "eager")
#: The ops of :mod:`dropclass_fast.functional` with kernels of their own on every backend: the ``op`` that
#: :func:`resolve` is asked about and the ops ``backend_table.json`` lists per GPU.
OPS = ("channel_mask", "seg_cross_entropy", "dropped_class_prob", "dropclass_loss")
TABLE_PATH = Path(__file__).resolve().parent / "backend_table.json"

_current = "auto"
_deterministic = False
_warned: set[str] = set()


def get_backend() -> str:
    """The backend name last chosen with :class:`set_backend` (``"auto"`` by default)."""
    return _current


class set_backend:  # noqa: N801 - used as a function, like torch.set_grad_enabled
    """Choose the implementation of the DropClass ops: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpp"``, ``"eager"``.

    Works as a plain call (the choice stays until changed) and as a context
    manager (the previous choice comes back on exit)::

        dropclass_fast.set_backend("eager")
        with dropclass_fast.set_backend("triton", deterministic=True):
            loss = dcf.seg_cross_entropy(logits, target)

    * ``"auto"``: C++ kernels for CPU tensors; for CUDA tensors the backend
      measured fastest on this GPU (``backend_table.json``), else Triton, else
      the CUDA kernels. Falls back to the eager reference, with one warning,
      when none of them is available.
    * ``"triton"``: the Triton kernels, for CUDA tensors, and for CPU tensors
      when ``TRITON_INTERPRET=1`` was set before first use (the interpreter:
      for tests, not speed). Float64 inputs run on the eager reference.
    * ``"cuda"``: the CUDA kernels of the compiled extension (CUDA tensors).
    * ``"cpp"``: the C++ CPU kernels (CPU tensors).
    * ``"eager"``: :mod:`dropclass_fast.reference`.

    A backend that cannot run raises when an op is called: ValueError for
    ``"cpp"`` with non-CPU tensors, RuntimeError otherwise (no GPU, no
    Triton, the extension not built, a device the backend does not run on).
    ``deterministic=True`` makes the Triton kernels use fixed block sizes
    instead of measured ones, so results are bit-identical run to run;
    ``torch.use_deterministic_algorithms(True)`` does the same. ``None``
    keeps the current setting. Under ``torch.compile`` both are guards of the
    compiled graph: a call under another setting compiles the function again.
    """

    def __init__(self, name: str, deterministic: bool | None = None) -> None:
        global _current, _deterministic
        check_choice("backend", name, BACKENDS)
        if deterministic is not None and not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be a bool or None, got {deterministic!r}")
        self._previous = (_current, _deterministic)
        _current = name
        if deterministic is not None:
            _deterministic = deterministic

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _current, _deterministic
        _current, _deterministic = self._previous


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def deterministic() -> bool:
    """Whether the Triton kernels must give bit-identical results run to run (fixed block sizes); traced by
    ``torch.compile``, a guard of the graph."""
    return _deterministic or torch.are_deterministic_algorithms_enabled()


def _triton_unavailable(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on ``device_type`` tensors, or None when they can."""
    try:
        from . import triton as triton_backend
    except ImportError as exc:
        return f"triton cannot be imported ({exc})"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if triton_backend.INTERPRET:
            return None
        return "CPU tensors need TRITON_INTERPRET=1 in the environment before dropclass_fast.triton is imported"
    return f"no Triton kernels for {device_type!r} tensors"


def _cuda_unavailable(device_type: str) -> str | None:
    """Why the CUDA kernels cannot run on ``device_type`` tensors, or None when they can."""
    if device_type != "cuda":
        return f"the CUDA kernels run on CUDA tensors, got tensors on {device_type!r}"
    if not _extension.load():
        return f"the compiled extension is unavailable ({_extension.error()})"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dropclass_fast::seg_cross_entropy", "CUDA"):
        return "the extension was built without CUDA kernels"
    return None


def without_triton(device_type: str, reason: str) -> str:
    """``"cuda"`` or ``"eager"``: where the Triton kernels cannot take a call (``reason``) that ``resolve`` gave
    them under ``"auto"``, the CUDA kernels, else the eager reference. ValueError when the backend is ``"triton"``."""
    if _current == "triton":
        raise ValueError(f"backend 'triton' cannot run this call: {reason}; set_backend('cuda') or 'eager' can")
    return "cuda" if _cuda_unavailable(device_type) is None else "eager"


@functools.lru_cache(maxsize=1)
def measured_table() -> dict[str, dict[str, str]]:
    """``backend_table.json``: GPU name -> op name -> fastest backend measured there (empty if absent)."""
    if not TABLE_PATH.is_file():
        return {}
    return json.loads(TABLE_PATH.read_text())["devices"]


def _resolve_cuda_auto(op: str) -> str:
    measured = measured_table().get(torch.cuda.get_device_name(), {}).get(op)
    unavailable = {"triton": _triton_unavailable, "cuda": _cuda_unavailable}
    if measured in unavailable and unavailable[measured]("cuda") is None:
        return measured
    for name in ("triton", "cuda"):
        if unavailable[name]("cuda") is None:
            return name
    _warn_once(
        "cuda",
        f"dropclass_fast: no fused kernels for CUDA tensors (Triton: {_triton_unavailable('cuda')}; "
        f"CUDA: {_cuda_unavailable('cuda')}); using the eager reference",
    )
    return "eager"


def resolve(device_type: str, op: str = "") -> str:
    """The implementation to run ``op`` with for tensors on ``device_type``: ``"triton"``, ``"cuda"``, ``"cpp"`` or
    ``"eager"``. Raises RuntimeError (ValueError for a device the backend never runs on) if the chosen one can't.

    Traced by ``torch.compile``, reading the backend here guards the graph on it: a compiled function called
    under another backend is compiled again for it."""
    return _resolve_backend(_current, device_type, op)


@torch.compiler.assume_constant_result
def _resolve_backend(name: str, device_type: str, op: str) -> str:
    """:func:`resolve` for the backend ``name``; a constant of the graph while tracing (it looks at the extension,
    Triton and the measured table, which tracing cannot)."""
    if name == "eager":
        return "eager"
    if name == "triton":
        reason = _triton_unavailable(device_type)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' is not available: {reason}")
        return "triton"
    if name == "cuda":
        reason = _cuda_unavailable(device_type)
        if reason is not None:
            raise RuntimeError(f"backend 'cuda' is not available: {reason}")
        return "cuda"
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
    if device_type == "cuda":
        return _resolve_cuda_auto(op)
    _warn_once(device_type, f"dropclass_fast: no fused kernels for {device_type!r} tensors; using the eager reference")
    return "eager"
