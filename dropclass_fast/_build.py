"""Where the C++ sources are and how to compile them; shared by setup.py and the JIT loader.

This module must not import torch: setup.py reads it in build environments
that have none.
"""

from __future__ import annotations

from pathlib import Path

EXTENSION_NAME = "dropclass_fast_C"
# The C++ standard is torch's (its headers need theirs); -g0 drops the debug information that Python's own
# CFLAGS ask for (it made the binary eight times larger).
CXX_FLAGS = ["-O3", "-g0", "-fno-math-errno", "-ffp-contract=fast"]
NVCC_FLAGS = ["-O3", "-std=c++17"]
# GPU architectures the CUDA kernels are compiled for (A100, H100) unless
# TORCH_CUDA_ARCH_LIST says otherwise; PTX of the newest one for later GPUs.
CUDA_ARCHES = ("80", "90")


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


def cuda_kernel_sources(root: Path) -> list[str]:
    """The torch-free CUDA kernels, ``csrc/kernels/*.cu``."""
    return sorted(str(p) for p in (root / "kernels").glob("*.cu"))


def cuda_sources(root: Path) -> list[str]:
    """The files a CUDA build adds to :func:`cpu_sources`: the CUDA torch bindings and the CUDA kernels."""
    return [*sorted(str(p) for p in (root / "cuda").glob("*.cpp")), *cuda_kernel_sources(root)]


def gencode_flags(arch: str) -> list[str]:
    """nvcc flags that compile for one architecture, ``arch`` as in ``"90"`` (SASS only)."""
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def nvcc_flags(torch_cuda_arch_list: str | None) -> list[str]:
    """nvcc flags of the extension build.

    With ``TORCH_CUDA_ARCH_LIST`` set (its value is passed here), torch's build
    chooses the architectures; otherwise SASS for :data:`CUDA_ARCHES` and PTX of
    the newest.
    """
    if torch_cuda_arch_list:
        return list(NVCC_FLAGS)
    newest = CUDA_ARCHES[-1]
    arches = [flag for arch in CUDA_ARCHES for flag in gencode_flags(arch)]
    return [*NVCC_FLAGS, *arches, f"-gencode=arch=compute_{newest},code=compute_{newest}"]
