"""Build of dropclass_fast.

With torch importable at build time (``pip install --no-build-isolation .``),
the C++ kernels are compiled into ``dropclass_fast/_C`` against that torch:
a ``CUDAExtension`` with the CUDA kernels as well when torch is a CUDA build
and nvcc is found (sm_80 and sm_90 unless ``TORCH_CUDA_ARCH_LIST`` is set), a
``CppExtension`` otherwise. Without it (a plain ``pip install .`` builds in an isolated environment), the
package installs without the binary and JIT-compiles the kernels with ninja on
first use. Either way ``csrc/`` ships inside the package as ``_csrc``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_build_module():
    spec = importlib.util.spec_from_file_location("_dropclass_build", ROOT / "dropclass_fast" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_module()


class BuildPyWithSources(build_py):
    """Copies ``csrc/`` into the built package as ``dropclass_fast/_csrc`` for the JIT fallback."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "dropclass_fast" / "_csrc"
        shutil.copytree(ROOT / "csrc", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tests"))


def _relative(paths: list[str]) -> list[str]:
    return [str(Path(p).relative_to(ROOT)) for p in paths]


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("dropclass_fast: torch is not importable here; the C++ kernels will be JIT-compiled on first use")
        return [], {}
    sources = _relative(_build.cpu_sources(ROOT / "csrc"))
    if torch.version.cuda is not None and CUDA_HOME is not None:
        extension = CUDAExtension(
            "dropclass_fast._C",
            sources=sources + _relative(_build.cuda_sources(ROOT / "csrc")),
            extra_compile_args={
                "cxx": _build.CXX_FLAGS,
                "nvcc": _build.nvcc_flags(os.environ.get("TORCH_CUDA_ARCH_LIST")),
            },
        )
    else:
        extension = CppExtension("dropclass_fast._C", sources=sources, extra_compile_args={"cxx": _build.CXX_FLAGS})
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, build_commands = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **build_commands})
