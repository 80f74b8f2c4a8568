"""The glue between the public functions and the kernels: backend choice per op, the deterministic flag, upstream
gradient scaling, double-backward refusal, fake implementations, and the mask a training forward uses."""

from __future__ import annotations

import pytest
import torch
from backends import KERNEL_BACKENDS
from op_inputs import make_keep, make_target
from torch import nn

import dropclass_fast
from dropclass_fast import DropClass, _backend, reference
from dropclass_fast import functional as dcf

OPS = ("channel_mask", "seg_cross_entropy", "dropped_class_prob", "dropclass_loss")


# --- as in test_backend.py


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
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 6, 6))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    calls = {
        "channel_mask": lambda: dcf.channel_mask(torch.randn(2, 3, 4, 4), torch.randn(4, 3), keep),
        "seg_cross_entropy": lambda: dcf.seg_cross_entropy(logits, target, keep),
        "dropped_class_prob": lambda: dcf.dropped_class_prob(logits, keep),
        "dropclass_loss": lambda: dcf.dropclass_loss(logits, logits, target, keep, 0.5),
    }
    for name, call in calls.items():
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


# --- as in test_ops.py


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("op", ["seg_cross_entropy", "dropped_class_prob"])
def test_backward_scales_by_the_upstream_gradient(cpp_backend, backend, op):
    """run_op's backward passes an upstream gradient of 1, which cannot tell ``grad`` from ``grad * grad_loss``."""
    logits = torch.randn(2, 5, 4, 6) * 2
    target = make_target(2, 5, (9, 13))
    keep = make_keep("sample", 2, 5)
    args = (target, keep) if op == "seg_cross_entropy" else (keep,)
    grads = []
    for impl in (backend, "reference"):
        x = logits.clone().requires_grad_()
        if impl == "reference":
            loss = getattr(reference, op)(x, *args)
        else:
            with dropclass_fast.set_backend(impl):
                loss = getattr(dcf, op)(x, *args)
        grads.append(torch.autograd.grad(loss, x, torch.tensor(-2.5))[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_double_backward_is_refused(cpp_backend, backend, op):
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target, keep = torch.randint(0, 4, (2, 6, 6)), torch.tensor([1.0, 0.0, 1.0, 1.0])
    weight = torch.randn(4, 3, requires_grad=True)
    features = torch.randn(2, 3, 4, 4, requires_grad=True)
    with dropclass_fast.set_backend(backend):
        out, inputs = {
            "channel_mask": lambda: (dcf.channel_mask(features, weight, keep).square().sum(), (features, weight)),
            "seg_cross_entropy": lambda: (dcf.seg_cross_entropy(logits, target, keep), (logits,)),
            "dropped_class_prob": lambda: (dcf.dropped_class_prob(logits, keep), (logits,)),
            "dropclass_loss": lambda: (dcf.dropclass_loss(logits, logits * 2, target, keep, 0.5)[0], (logits,)),
        }[op]()
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out, inputs, create_graph=True)


def test_fake_implementations_match_the_cpp_kernels_in_bfloat16_and_channels_last(cpp_backend):
    """The one opcheck (test_dropclass_loss_op_registration) uses float32 contiguous inputs, where a fake that
    returns the logits' dtype or drops channels_last is not told apart."""
    logits = torch.randn(2, 5, 4, 6, dtype=torch.bfloat16)
    drop_logits = torch.randn(2, 5, 3, 3, dtype=torch.bfloat16)
    target = make_target(2, 5, (9, 13))
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    features = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    taps = torch.randn(5, 6, 1)
    ops = torch.ops.dropclass_fast
    cases = [
        (ops.seg_cross_entropy, (logits, target, keep, 255, False, True)),
        (ops.dropped_class_prob, (logits, keep, True)),
        (ops.dropclass_loss, (logits, drop_logits, target, keep, 255, False, True)),
        (ops.channel_mask, (features, taps, keep)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils="test_faketensor")


# --- as in test_triton.py


def _record_triton_picks(monkeypatch) -> list[bool]:
    from dropclass_fast.triton import _tuning

    seen: list[bool] = []
    pick = _tuning.pick

    def recording(key, candidates, run, deterministic):
        seen.append(deterministic)
        return pick(key, candidates, run, deterministic)

    monkeypatch.setattr(_tuning, "pick", recording)
    return seen


@pytest.mark.skipif(_backend._triton_unavailable("cpu") is not None, reason="Triton cannot run CPU tensors")
@pytest.mark.parametrize("how", ["set_backend", "torch"])
def test_every_triton_op_gets_the_deterministic_flag(monkeypatch, how):
    seen = _record_triton_picks(monkeypatch)
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 6, 6))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    calls = [
        lambda: dcf.channel_mask(torch.randn(2, 3, 4, 4), torch.randn(4, 3), keep),
        lambda: dcf.seg_cross_entropy(logits, target, keep),
        lambda: dcf.dropped_class_prob(logits, keep),
        lambda: dcf.dropclass_loss(logits, logits * 2, target, keep, 0.5),
    ]
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for flag in (True, False):
            for call in calls:
                seen.clear()
                if how == "set_backend":
                    with dropclass_fast.set_backend("triton", deterministic=flag):
                        call()
                else:
                    torch.use_deterministic_algorithms(flag)
                    with dropclass_fast.set_backend("triton"):
                        call()
                assert seen and all(s == flag for s in seen), (flag, seen)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.skipif(_backend._triton_unavailable("cpu") is not None, reason="Triton cannot run CPU tensors")
def test_a_compiled_function_follows_the_deterministic_flag(monkeypatch):
    seen = _record_triton_picks(monkeypatch)
    torch._dynamo.reset()
    compiled = torch.compile(dcf.dropped_class_prob, fullgraph=True, backend="eager")
    logits, keep = torch.randn(2, 4, 3, 3), torch.tensor([1.0, 0.0, 1.0, 1.0])
    for flag in (False, True, False):
        seen.clear()
        with dropclass_fast.set_backend("triton", deterministic=flag):
            compiled(logits, keep)
        assert seen == [flag]


@pytest.mark.skipif(_backend._triton_unavailable("cpu") is not None, reason="Triton cannot run CPU tensors")
def test_fake_implementations_match_the_triton_kernels_in_bfloat16_and_channels_last():
    logits = torch.randn(2, 5, 4, 6, dtype=torch.bfloat16)
    drop_logits = torch.randn(2, 5, 4, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    target = make_target(2, 5, (9, 13))
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    features = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    ops = torch.ops.dropclass_fast_triton
    cases = [
        (ops.seg_cross_entropy, (logits, target, keep, 255, False, True, True)),
        (ops.dropped_class_prob, (logits, keep, True, True)),
        (ops.dropclass_loss, (logits, drop_logits, target, keep, 255, False, True, True)),
        (ops.channel_mask, (features, torch.randn(5, 6, 1), keep, True)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils="test_faketensor")


@pytest.mark.skipif(_backend._triton_unavailable("cpu") is not None, reason="Triton cannot run CPU tensors")
def test_channel_mask_with_half_precision_weight_matches_reference():
    """A bfloat16 classifier weight (a model cast to half precision): s and the weight gradient are computed in
    float32 and rounded once, as the reference does. Float16 features: the interpreter truncates float32 -> bfloat16
    stores, so bfloat16 outputs are 1 ulp off there."""
    features = torch.randn(2, 6, 5, 7).to(torch.float16)
    weight = torch.randn(5, 6).to(torch.bfloat16)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    results = []
    for backend in ("triton", "reference"):
        f, w = features.clone().requires_grad_(), weight.clone().requires_grad_()
        if backend == "reference":
            out = reference.channel_mask(f, w, keep)
        else:
            with dropclass_fast.set_backend(backend):
                out = dcf.channel_mask(f, w, keep)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, f.grad, w.grad))
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(_backend._triton_unavailable("cpu") is not None, reason="Triton cannot run CPU tensors")
def test_a_triton_refusal_under_auto_without_cuda_kernels_runs_the_reference(monkeypatch):
    """Where auto picked Triton and Triton cannot take the upsampling, no CUDA kernels: the eager reference, not the
    compiled ``_ops`` (which on a GPU without the CUDA build raise). In ``dropclass_loss`` only the upsampled terms
    are refused: ``L_sup`` at the logits' resolution still runs on Triton."""
    narrow = torch.randn(2, 5, 3, 1)
    target = make_target(2, 5, (4, 600))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(_backend, "resolve", lambda device_type, op="": "triton")
    monkeypatch.setattr(_backend, "_cuda_unavailable", lambda device: "not built")

    def refuse(*args, **kwargs):
        raise AssertionError("ran the compiled kernels")

    for name in ("seg_cross_entropy", "dropclass_loss_terms"):
        monkeypatch.setattr(dropclass_fast._ops, name, refuse)
    want = reference.seg_cross_entropy(narrow, target, keep)
    torch.testing.assert_close(dcf.seg_cross_entropy(narrow, target, keep), want)
    drop_logits = narrow * 0.5
    got_terms = dcf.dropclass_loss(narrow, drop_logits, target, keep, progress=0.5)[1]
    want_terms = reference.dropclass_loss(narrow, drop_logits, target, keep, 0.5)[1]
    for name in want_terms:
        torch.testing.assert_close(got_terms[name], want_terms[name], msg=name)


# --- as in test_module.py


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_training_forward_uses_the_mask_of_its_step(per_sample):
    """Step n's forward draws sample_keep(step=n) (the documented mask of step n), then counts the step."""
    dc = DropClass(nn.Conv2d(4, 7, 1), per_sample=per_sample, seed=5).train()
    features = torch.randn(3, 4, 2, 2)
    for n in range(20):
        want = dc.sample_keep(0.9, 3, step=n)
        assert torch.equal(dc(features, progress=0.9).keep, want), n
    assert dc.step == 20
