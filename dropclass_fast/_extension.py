"""Loading the compiled C++ kernels.

``pip install --no-build-isolation .`` builds ``dropclass_fast/_C*.so`` against
the installed torch (with the CUDA kernels when torch is a CUDA build and nvcc
is found). When the package was installed without it (a plain
``pip install .`` builds in an isolated environment that has no torch), the
kernels are JIT-compiled with ninja on first use and cached by torch in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import threading
from pathlib import Path

import torch

from . import _build

_lock = threading.Lock()
_loaded: bool | None = None
_error: str | None = None


def _prebuilt_library() -> Path | None:
    package = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package / f"_C{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _jit_compile() -> None:
    from torch.utils import cpp_extension

    root = _build.source_root()
    sources = _build.cpu_sources(root)
    cuda_flags: dict[str, list[str]] = {}
    if torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None:
        sources += _build.cuda_sources(root)
        cuda_flags["extra_cuda_cflags"] = _build.nvcc_flags(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    print(
        "dropclass_fast: compiling the C++ kernels (first use only, about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    cpp_extension.load(
        name=_build.EXTENSION_NAME,
        sources=sources,
        extra_cflags=_build.CXX_FLAGS,
        is_python_module=False,
        verbose=os.environ.get("DROPCLASS_FAST_VERBOSE_BUILD") == "1",
        **cuda_flags,
    )


def load() -> bool:
    """Load the C++ ops once (prebuilt, else JIT) and register their fake and autograd rules.

    Returns whether the ops are available; :func:`error` says why not.
    """
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        try:
            library = _prebuilt_library()
            if library is not None:
                torch.ops.load_library(str(library))
            else:
                _jit_compile()
            from . import _ops

            _ops.register()
            _loaded = True
        except Exception as exc:  # noqa: BLE001 - any build or load failure means "not available"
            _error = f"{type(exc).__name__}: {exc}"
            _loaded = False
    return _loaded


def error() -> str | None:
    """Why :func:`load` failed, or ``None``."""
    return _error
