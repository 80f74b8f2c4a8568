"""Backend selection and torch.compile."""

from __future__ import annotations

import warnings

import pytest
import torch

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


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_gpu_backends_are_reported_unavailable(name):
    with dropclass_fast.set_backend(name), pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
        dcf.dropped_class_prob(torch.randn(1, 3, 2, 2), torch.tensor([1.0, 0.0, 1.0]))


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


def test_torch_compile_fullgraph_matches_eager(cpp_backend):
    def step(features, weight, logits, target, keep):
        masked = dcf.channel_mask(features, weight, keep)
        total, _ = dcf.dropclass_loss(logits, logits * 0.5, target, keep, progress=0.4)
        return total + masked.square().mean()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    features = torch.randn(2, 6, 5, 7)
    weight = torch.randn(4, 6, 1, 1)
    logits = torch.randn(2, 4, 5, 7)
    target = torch.randint(0, 4, (2, 19, 27))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    results = []
    for fn in (step, compiled):
        inputs = [t.clone().requires_grad_() for t in (features, weight, logits)]
        with dropclass_fast.set_backend("cpp"):
            out = fn(*inputs, target, keep)
        out.backward()
        results.append((out, [t.grad for t in inputs]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
