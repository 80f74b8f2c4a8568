"""Loading the compiled C++ kernels.

``pip install --no-build-isolation .`` builds ``dropclass_fast/_C*.so`` against
the installed torch (with the CUDA kernels when torch is a CUDA build and nvcc
is found). When the package was installed without it (a plain
``pip install .`` builds in an isolated environment that has no torch), the
kernels are JIT-compiled with ninja on first use and cached by torch in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); so are they
when the prebuilt binary does not load (built against another torch).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import re
import shlex
import shutil
import sys
import sysconfig
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch builds with the ``ninja`` on ``PATH``; the one pip installed beside this Python is not on it when
    the environment is used without being activated (``venv/bin/python script.py``): add it for the build."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is not None or not scripts or not shutil.which("ninja", path=scripts):
        yield
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = scripts + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path


def _jit_compile() -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which((shlex.split(compiler) or [""])[0]) is None:  # CXX may be a command line: "ccache g++"
        raise RuntimeError(f"no C++ compiler to build the kernels with: {compiler!r} is not on PATH (set CXX)")
    root = _build.source_root()
    sources = _build.cpu_sources(root)
    cuda_flags: dict[str, list[str]] = {}
    if torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None:
        sources += _build.cuda_sources(root)
        cuda_flags["extra_cuda_cflags"] = _build.nvcc_flags(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    print(
        "dropclass_fast: loading the C++ kernels from torch's extension cache, or compiling them there "
        "(about a minute, once)...",
        file=sys.stderr,
        flush=True,
    )
    with _ninja_on_path():
        cpp_extension.load(
            # torch's cache keys a build by its name, sources and flags, not by torch: the version in the name keeps a
            # build against one torch from being loaded under another
            name=f"{_build.EXTENSION_NAME}_torch_{re.sub(r'[^0-9A-Za-z]', '_', torch.__version__)}",
            sources=sources,
            extra_cflags=_build.CXX_FLAGS,
            is_python_module=False,
            verbose=os.environ.get("DROPCLASS_FAST_VERBOSE_BUILD") == "1",
            **cuda_flags,
        )


def _load_library() -> None:
    """The prebuilt binary; JIT-compiled sources where there is none or it does not load (built against
    another torch, say)."""
    library = _prebuilt_library()
    if library is None:
        _jit_compile()
        return
    try:
        torch.ops.load_library(str(library))
    except Exception as prebuilt:  # noqa: BLE001 - any load failure: build from the sources instead
        try:
            _jit_compile()
        except Exception as jit:  # noqa: BLE001
            raise RuntimeError(
                f"the prebuilt {library.name} does not load ({type(prebuilt).__name__}: {prebuilt}) and the JIT "
                f"build failed ({type(jit).__name__}: {jit})"
            ) from jit


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
            _load_library()
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
