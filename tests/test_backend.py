"""Backend selection and torch.compile."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from op_runs import OPS, tiny_op_calls

import dropclass_fast
from dropclass_fast import _backend, _extension, reference
from dropclass_fast import functional as dcf


def test_set_backend_as_call_and_context_manager():
    dropclass_fast.set_backend("eager")
    assert dropclass_fast.get_backend() == "eager"
    with dropclass_fast.set_backend("cpp"):
        assert dropclass_fast.get_backend() == "cpp"
    assert dropclass_fast.get_backend() == "eager"
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        dropclass_fast.set_backend("fast")


def test_auto_uses_cpp_on_cpu(cpp_backend):
    assert _backend.resolve("cpu") == "cpp"
    with dropclass_fast.set_backend("eager"):
        assert _backend.resolve("cpu") == "eager"


def test_cuda_backend_needs_cuda_tensors():
    with dropclass_fast.set_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' is not available: the"):
        dcf.dropped_class_prob(torch.randn(1, 3, 2, 2), torch.tensor([1.0, 0.0, 1.0]))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    triton_backend = pytest.importorskip("dropclass_fast.triton")
    monkeypatch.setattr(triton_backend, "INTERPRET", True)
    with dropclass_fast.set_backend("triton"):
        assert _backend.resolve("cpu") == "triton"
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    with dropclass_fast.set_backend("triton"), pytest.raises(RuntimeError, match="need TRITON_INTERPRET=1"):
        dcf.dropped_class_prob(torch.randn(1, 3, 2, 2), torch.tensor([1.0, 0.0, 1.0]))


def test_set_backend_deterministic_flag():
    assert not _backend.deterministic()
    with dropclass_fast.set_backend("triton", deterministic=True):
        assert _backend.deterministic()
        with dropclass_fast.set_backend("auto"):
            assert _backend.deterministic()  # None keeps the setting
    assert not _backend.deterministic()
    with pytest.raises(TypeError, match="deterministic must be a bool or None, got 1"):
        dropclass_fast.set_backend("triton", deterministic=1)


@pytest.mark.parametrize(
    "table, triton_ok, cuda_ok, want",
    [
        ({"GPU X": {"seg_cross_entropy": "cuda"}}, True, True, "cuda"),  # measured fastest
        ({"GPU X": {"channel_mask": "cuda"}}, True, True, "triton"),  # no entry for this op
        ({"GPU X": {"seg_cross_entropy": "cuda"}}, True, False, "triton"),  # measured one unavailable
        ({}, False, True, "cuda"),
    ],
)
def test_auto_on_cuda_follows_the_measured_table(monkeypatch, table, triton_ok, cuda_ok, want):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "GPU X")
    monkeypatch.setattr(_backend, "measured_table", lambda: table)
    monkeypatch.setattr(_backend, "_triton_unavailable", lambda device: None if triton_ok else "no triton")
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: None if cuda_ok else "no CUDA kernels")
    assert _backend.resolve("cuda", "seg_cross_entropy") == want


def test_auto_on_cuda_without_kernels_warns_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "GPU X")
    monkeypatch.setattr(_backend, "_triton_unavailable", lambda device: "no triton")
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: "no CUDA kernels")
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"no fused kernels for CUDA tensors \(Triton: no triton; CUDA: no CUDA"):
        assert _backend.resolve("cuda", "seg_cross_entropy") == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve("cuda", "seg_cross_entropy") == "eager"


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cuda_reads_the_table_entry_of_its_own_op(monkeypatch, op):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "GPU X")
    monkeypatch.setattr(_backend, "measured_table", lambda: {"GPU X": {op: "cuda"}})
    monkeypatch.setattr(_backend, "_triton_unavailable", lambda device: None)
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: None)
    assert _backend.resolve("cuda", op) == "cuda"
    for other in OPS:
        if other != op:
            assert _backend.resolve("cuda", other) == "triton", other


def test_each_function_resolves_its_backend_under_its_own_op_name(monkeypatch):
    seen = []
    monkeypatch.setattr(_backend, "resolve", lambda device_type, op="": seen.append(op) or "eager")
    for name, call in tiny_op_calls().items():
        seen.clear()
        call()
        assert seen[0] == name, (name, seen)


def test_torch_deterministic_algorithms_make_the_backend_deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    assert not _backend.deterministic()
    torch.use_deterministic_algorithms(True)
    try:
        assert _backend.deterministic()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_a_triton_refusal_under_auto_goes_to_the_cuda_kernels_when_they_are_built(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: None)
    assert _backend.without_triton("cuda", "too wide") == "cuda"
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: "not built")
    assert _backend.without_triton("cuda", "too wide") == "eager"


def test_a_prebuilt_binary_that_does_not_load_is_replaced_by_a_jit_build(monkeypatch, tmp_path):
    broken = tmp_path / "_C.cpython-3x.so"
    broken.write_bytes(b"not a shared library")  # as a binary built against another torch fails to load
    monkeypatch.setattr(_extension, "_prebuilt_library", lambda: broken)
    builds = []
    monkeypatch.setattr(_extension, "_jit_compile", lambda: builds.append("jit"))
    _extension._load_library()
    assert builds == ["jit"]

    def failing_build():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(_extension, "_jit_compile", failing_build)
    with pytest.raises(RuntimeError, match=r"prebuilt _C.cpython-3x.so does not load \(OSError: .*JIT build failed "
                                           r"\(RuntimeError: no compiler\)"):
        _extension._load_library()


def test_jit_build_says_when_there_is_no_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler -m64")  # CXX may carry arguments, or be "ccache g++"
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler .* 'no-such-c\\+\\+-compiler -m64' is not on PATH"):
        _extension._jit_compile()


def test_jit_build_finds_the_ninja_installed_beside_python(monkeypatch):
    scripts = sysconfig.get_path("scripts")
    if not shutil.which("ninja", path=scripts):
        pytest.skip(f"no ninja in {scripts}")
    monkeypatch.setenv("PATH", "/nonexistent")
    with _extension._ninja_on_path():
        assert shutil.which("ninja") == str(Path(scripts) / "ninja")
    assert os.environ["PATH"] == "/nonexistent"  # only for the build


def test_shipped_backend_table_is_valid():
    """The shipped table has the fields benchmarks/backend_table.py writes; each GPU's entries name an op and a GPU
    backend (none until a GPU run fills it)."""
    shipped = json.loads(_backend.TABLE_PATH.read_text())
    assert set(shipped) == {"about", "measured", "command", "devices"} and isinstance(shipped["devices"], dict)
    assert _backend.measured_table() == shipped["devices"]
    for ops in shipped["devices"].values():
        assert set(ops) <= set(OPS)
        assert set(ops.values()) <= {"triton", "cuda"}


def test_auto_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setattr(_extension, "_loaded", False)
    monkeypatch.setattr(_extension, "_error", "OSError: no compiler")
    monkeypatch.setattr(_backend, "_warned", set())
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 8, 8))
    with pytest.warns(RuntimeWarning, match=r"C\+\+ kernels unavailable \(OSError: no compiler\)"):
        got = dcf.seg_cross_entropy(logits, target)
    torch.testing.assert_close(got, reference.seg_cross_entropy(logits, target))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dcf.seg_cross_entropy(logits, target)
    with dropclass_fast.set_backend("cpp"), pytest.raises(RuntimeError, match="C\\+\\+ extension is unavailable"):
        dcf.seg_cross_entropy(logits, target)


COMPILE_CASES = [
    pytest.param("cpp", "cpu", id="cpp"),
    pytest.param(
        "triton",
        "cuda" if torch.cuda.is_available() else "cpu",
        id="triton",
        marks=[pytest.mark.gpu] if torch.cuda.is_available() else [],
    ),
    pytest.param(
        "cuda",
        "cuda",
        id="cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


@pytest.mark.parametrize(("backend", "device"), COMPILE_CASES)
def test_torch_compile_fullgraph_matches_eager(cpp_backend, backend, device):
    """Every op of every backend traces into one graph (fake implementations) and matches the uncompiled call."""

    def step(features, weight, logits, target, keep):
        masked = dcf.channel_mask(features, weight, keep)
        total, _ = dcf.dropclass_loss(logits, logits * 0.5, target, keep, progress=0.4)
        return total + dcf.seg_cross_entropy(logits, target) + masked.square().mean()

    with dropclass_fast.set_backend(backend):
        try:
            _backend.resolve(device)
        except RuntimeError as exc:
            pytest.skip(str(exc))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    features = torch.randn(2, 6, 5, 7, device=device)
    weight = torch.randn(4, 6, 1, 1, device=device)
    logits = torch.randn(2, 4, 5, 7, device=device)
    target = torch.randint(0, 4, (2, 19, 27), device=device)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], device=device)
    results = []
    for fn in (step, compiled):
        inputs = [t.clone().requires_grad_() for t in (features, weight, logits)]
        with dropclass_fast.set_backend(backend):
            out = fn(*inputs, target, keep)
        out.backward()
        results.append((out, [t.grad for t in inputs]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_a_compiled_function_follows_set_backend(cpp_backend):
    """The backend is a guard of the graph: a compiled call under another backend runs that backend (it ran the one
    it was first compiled for), and one that cannot run raises as the uncompiled call does."""
    torch._dynamo.reset()
    compiled = torch.compile(dcf.seg_cross_entropy, fullgraph=True)
    logits, target = torch.randn(2, 5, 8, 16), torch.randint(0, 5, (2, 32, 64))
    with dropclass_fast.set_backend("cpp"):
        compiled(logits, target)
    for backend, op in (("eager", "aten::nll_loss2d_forward"), ("cpp", "dropclass_fast::seg_cross_entropy")):
        with dropclass_fast.set_backend(backend), torch.profiler.profile() as profile:
            compiled(logits, target)
        names = {event.name for event in profile.events()}
        assert op in names and ("dropclass_fast::seg_cross_entropy" in names) == (backend == "cpp"), backend
    with dropclass_fast.set_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        compiled(logits, target)


def test_a_numpy_progress_under_fullgraph_compile_says_what_to_pass(cpp_backend):
    """Dynamo traces a NumPy scalar as a tensor, whose value the check cannot compare while tracing: the error says
    to pass a Python number (it said "repr() on tensor")."""
    torch._dynamo.reset()
    compiled = torch.compile(dcf.dropclass_loss, fullgraph=True)
    logits, target = torch.randn(2, 4, 5, 7), torch.randint(0, 4, (2, 19, 27))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"progress must be a number in \[0, 1\]; under torch.compile pass a Python"):
        compiled(logits, logits * 0.5, target, keep, np.float64(0.3))
    with pytest.raises(RuntimeError, match=r"progress must be a number in \[0, 1\], got 1.5"):  # its value
        compiled(logits, logits * 0.5, target, keep, 1.5)
    torch.testing.assert_close(compiled(logits, logits * 0.5, target, keep, 0.3)[0],
                               dcf.dropclass_loss(logits, logits * 0.5, target, keep, np.float64(0.3))[0])


def test_torch_compile_fullgraph_with_scalar_arguments_that_vary(cpp_backend):
    """progress, alpha and ignore_index that change between calls become symbolic (dynamic=True): their checks
    must trace (comparisons, not math.isfinite)."""
    torch._dynamo.reset()
    compiled = torch.compile(dcf.dropclass_loss, fullgraph=True, dynamic=True)
    logits = torch.randn(2, 4, 5, 7)
    target = torch.randint(0, 4, (2, 19, 27))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with dropclass_fast.set_backend("cpp"):
        for progress, alpha in ((0.2, 10.0), (0.6, 3.5)):
            got, _ = compiled(logits, logits * 0.5, target, keep, progress, alpha)
            want, _ = dcf.dropclass_loss(logits, logits * 0.5, target, keep, progress, alpha)
            torch.testing.assert_close(got, want)
