"""Where the C++ sources are and how to compile them; shared by setup.py and the JIT loader.

This module must not import torch: setup.py reads it in build environments
that have none.
"""

from __future__ import annotations

from pathlib import Path

EXTENSION_NAME = "dropclass_fast_C"
CXX_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=fast"]


def source_root() -> Path:
    """The ``csrc`` folder: shipped in the wheel as ``dropclass_fast/_csrc``, or the repository's ``csrc``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"C++ sources not found in {package / '_csrc'} or {package.parent / 'csrc'}")


def cpu_sources(root: Path) -> list[str]:
    """The C++ files of the CPU extension: the torch bindings and the torch-free kernels."""
    return [str(root / "ops.cpp"), *sorted(str(p) for p in (root / "kernels").glob("*.cpp"))]
