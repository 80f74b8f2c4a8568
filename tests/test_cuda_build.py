"""The CUDA sources without a GPU: ``nvcc -c`` of every kernel for sm_80 and sm_90, warnings as errors, and the
kernels run on the CPU under emulation against the CPU kernels.

Also a syntax check of the CUDA torch bindings against the installed torch's
headers (a CPU build of torch ships the ``c10/cuda`` headers, not their
generated config, which the check stands in for). The nvcc tests are skipped,
with the reason, where nvcc is not installed. The compilations run in
parallel, once per session.

Emulation (``csrc/tests/cuda_emulation.h``): each ``.cu`` file is rewritten
(kernel launches into calls, dynamic shared memory into a buffer), compiled by
the host C++ compiler with stand-in CUDA headers, and
``csrc/tests/test_cuda_emulated.cpp`` compares every kernel with the CPU
kernels (values, gradients, error reporting), once under AddressSanitizer and
UBSan and once under ThreadSanitizer. It checks the kernels' logic (tiling,
ownership, halo, reductions), out-of-bounds accesses and missing block
barriers, not GPU timing or memory-model effects; those are the GPU tests' job
(tests/test_cuda_ops.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import CUDA_TOOL_PLACES, find_cuda_tool

from dropclass_fast import _build

CSRC = Path(__file__).resolve().parents[1] / "csrc"
KERNELS = [Path(p) for p in _build.cuda_kernel_sources(CSRC)]
BINDINGS = sorted((CSRC / "cuda").glob("*.cpp"))
# The kernels compile without a warning, nvcc's own or the host compiler's (the build itself does not stop on one).
NVCC_WARNING_FLAGS = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]


NVCC = find_cuda_tool("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason=f"nvcc not found ({CUDA_TOOL_PLACES})")


CPP_TESTS = CSRC / "tests"
STAND_IN_HEADERS = ("cuda_runtime.h", "cuda_runtime_api.h", "cuda_fp16.h", "cuda_bf16.h")
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)<<<(.*?)>>>\(", re.S)
_DYNAMIC_SHARED = "extern __shared__ float smem[];"


def emulated_source(cuda_source: str) -> tuple[str, int]:
    """``cuda_source`` with its kernel launches turned into ``emu::launch`` calls; also the number of launches."""
    text = cuda_source.replace(_DYNAMIC_SHARED, "float* smem = emu::dyn_smem.data();")
    return _LAUNCH.subn(lambda m: f"emu::launch({m.group(2)}, {m.group(1)}, ", text)


def _kernel_command(source: Path, arch: str, out_dir: Path) -> list[str]:
    obj = out_dir / f"{source.stem}.sm{arch}.o"
    flags = [*_build.NVCC_FLAGS, *NVCC_WARNING_FLAGS, *_build.gencode_flags(arch)]
    return [str(NVCC), "-c", *flags, str(source), "-o", str(obj)]


# The bindings build with the C++ standard torch picks (C++20 in torch 2.13, C++17 in older releases): check both.
BINDING_STANDARDS = ("c++17", "c++20")


def _binding_command(source: Path, standard: str) -> list[str]:
    import torch.utils.cpp_extension as cpp_extension

    cuda_include = NVCC.parent.parent / "include"
    includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return [
        *compiler.split()[:1],
        f"-std={standard}",
        "-fsyntax-only",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        *includes,
        "-isystem",
        str(cuda_include),
        "-isystem",
        sysconfig.get_paths()["include"],
        str(source),
    ]


def _run_parallel(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Runs ``commands`` (label -> argv) in a thread pool, started in their order: ``{label: result}``."""

    def run(label: str) -> subprocess.CompletedProcess:
        return subprocess.run(commands[label], capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(commands, pool.map(run, commands)))


def _compile_objects(compiler: str, flags: list[str], sources: list[Path], out_dir: Path) -> list[Path]:
    """Compiles each of ``sources`` to ``out_dir/<stem>.o`` in parallel, asserting that each compiles."""
    objects = {str(source): out_dir / f"{source.stem}.o" for source in sources}
    commands = {source: [compiler, *flags, "-c", source, "-o", str(obj)] for source, obj in objects.items()}
    results = _run_parallel(commands)
    for source, result in results.items():
        assert result.returncode == 0, f"{Path(source).name}: {result.stderr[-4000:]}"
    return list(objects.values())


@pytest.fixture(scope="session")
def compile_results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every compilation of this module, run in parallel: ``{label: result}``."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    commands = {
        f"{src.name}:sm_{arch}": _kernel_command(src, arch, out_dir) for src in KERNELS for arch in _build.CUDA_ARCHES
    }
    commands.update(
        {f"{src.name}:bindings:{std}": _binding_command(src, std) for src in BINDINGS for std in BINDING_STANDARDS}
    )
    # The slowest (seg_cross_entropy) first, so the pool finishes together.
    order = sorted(commands, key=lambda label: "seg_cross_entropy" not in label)
    return _run_parallel({label: commands[label] for label in order})


def test_every_cuda_source_is_compiled():
    """No .cu / .cuh / binding file lies where the build and this test would skip it."""
    everywhere = {p.resolve() for p in CSRC.rglob("*.cu")}
    assert everywhere == {p.resolve() for p in KERNELS}, "a .cu file outside csrc/kernels is not built"
    ops = {"channel_mask_cuda.cu", "seg_cross_entropy_cuda.cu", "dropped_class_prob_cuda.cu"}
    assert ops <= {p.name for p in KERNELS}, f"CUDA kernels missing from {CSRC / 'kernels'}: {KERNELS}"
    listed = {Path(p).resolve() for p in _build.cuda_sources(CSRC)}
    assert listed == {p.resolve() for p in [*KERNELS, *BINDINGS]}
    headers = {p.name for p in CSRC.rglob("*.cuh")}
    included = "".join(p.read_text() for p in [*KERNELS, *BINDINGS, *(CSRC / "kernels").glob("*.cuh")])
    assert all(f'{name}"' in included for name in headers), f"a header is included by no compiled file: {headers}"


@needs_nvcc
@pytest.mark.parametrize("arch", _build.CUDA_ARCHES)
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles_without_warnings(compile_results, source, arch):
    result = compile_results[f"{source.name}:sm_{arch}"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert "warning" not in result.stderr.lower(), result.stderr[-4000:]


@needs_nvcc
@pytest.mark.skipif(sys.platform != "linux", reason="the binding syntax check uses the Linux toolchain")
@pytest.mark.parametrize("standard", BINDING_STANDARDS)
@pytest.mark.parametrize("source", BINDINGS, ids=lambda p: p.name)
def test_cuda_bindings_compile(compile_results, source, standard):
    result = compile_results[f"{source.name}:bindings:{standard}"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_nvcc_flags_follow_torch_cuda_arch_list():
    default = _build.nvcc_flags(None)
    assert "-gencode=arch=compute_80,code=sm_80" in default
    assert "-gencode=arch=compute_90,code=sm_90" in default
    assert not any("gencode" in flag for flag in _build.nvcc_flags("8.0;9.0+PTX"))


def test_emulation_rewrites_every_launch():
    for source in KERNELS:
        text = source.read_text()
        rewritten, launches = emulated_source(text)
        assert launches == text.count("<<<"), source.name
        assert "<<<" not in rewritten and "extern __shared__" not in rewritten, source.name


def _host_compiler() -> str | None:
    compiler = os.environ.get("CXX") or "g++"
    return shutil.which(compiler)


# The host sanitizers stand in for compute-sanitizer's tools on the emulated
# kernels: AddressSanitizer and UBSan for memcheck (reads and writes outside
# the buffers, undefined arithmetic), ThreadSanitizer for racecheck (shared
# memory or global memory touched by two threads of a block with no
# __syncthreads between them, since the emulation runs each thread of a block
# on its own std::thread). Racecheck runs the float32 cases ("quick"): the
# races do not depend on the dtype, and ThreadSanitizer is slow.
SANITIZERS = {
    "memcheck": (["-fsanitize=address,undefined", "-fno-sanitize-recover=all"], []),
    "racecheck": (["-fsanitize=thread"], ["quick"]),
}
SANITIZER_ENV = {"TSAN_OPTIONS": "halt_on_error=1", "ASAN_OPTIONS": "detect_leaks=0"}


def _sanitizer_runs(compiler: str, flags: list[str], tmp_path: Path) -> str | None:
    """None when ``compiler`` builds and runs a threaded program with ``flags``, else why not."""
    probe = tmp_path / "probe.cpp"
    probe.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n")
    binary = tmp_path / "probe"
    command = [compiler, "-pthread", *flags, str(probe), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        return f"{compiler} cannot build with {' '.join(flags)}: {built.stderr.strip()[-300:]}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, env={**os.environ, **SANITIZER_ENV})
    if ran.returncode != 0:
        return f"a program built with {' '.join(flags)} does not run here: {ran.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def cpu_kernel_objects(tmp_path_factory) -> list[Path]:
    """The CPU kernels the emulated CUDA kernels are compared with, compiled once and without a sanitizer (they
    are the reference here, and instrumenting their many instantiations would take minutes)."""
    compiler = _host_compiler()
    if compiler is None:
        pytest.skip("no host C++ compiler (CXX or g++) to build the emulated kernels")
    sources = sorted((CSRC / "kernels").glob("*.cpp"))
    return _compile_objects(compiler, ["-std=c++20", "-O1", "-w"], sources, tmp_path_factory.mktemp("cpu_kernels"))


@pytest.mark.parametrize("tool", sorted(SANITIZERS))
def test_cuda_kernels_match_cpu_kernels_under_emulation(tmp_path, cpu_kernel_objects, tool):
    """Every CUDA kernel, emulated on the host, against the CPU kernels, with the sanitizer ``tool`` watching."""
    compiler = _host_compiler()
    sanitizer_flags, arguments = SANITIZERS[tool]
    unavailable = _sanitizer_runs(compiler, sanitizer_flags, tmp_path)
    if unavailable is not None:
        pytest.skip(unavailable)
    stand_ins = tmp_path / "include"
    stand_ins.mkdir()
    for header in STAND_IN_HEADERS:
        (stand_ins / header).write_text('#pragma once\n#include "cuda_emulation.h"\n')
    flags = ["-std=c++20", "-O1", "-g", "-pthread", "-w", *sanitizer_flags]
    flags += [f"-I{stand_ins}", f"-I{CPP_TESTS}", f"-I{CSRC / 'kernels'}"]
    units = []
    for source in KERNELS:
        unit = tmp_path / f"{source.stem}_emulated.cpp"
        unit.write_text(emulated_source(source.read_text())[0])
        units.append(unit)
    units.append(CPP_TESTS / "test_cuda_emulated.cpp")
    objects = _compile_objects(compiler, flags, units, tmp_path) + cpu_kernel_objects
    binary = tmp_path / "test_cuda_emulated"
    link = [compiler, "-pthread", *sanitizer_flags, *map(str, objects), "-o", str(binary)]
    subprocess.run(link, check=True, capture_output=True, timeout=600)
    env = {**os.environ, **SANITIZER_ENV}
    result = subprocess.run([str(binary), *arguments], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip().endswith(" passed, 0 failed"), result.stdout[-2000:]
