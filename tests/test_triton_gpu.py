"""The Triton kernels on a GPU at the paper's Cityscapes per-GPU shape (B=12, K=19, logits 128x256, labels
512x1024): values and gradients against the eager reference, and bit-identical results in deterministic mode."""

from __future__ import annotations

import pytest
import torch

import dropclass_fast
from dropclass_fast import functional as dcf
from dropclass_fast import reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BATCH, CLASSES, LOW, HIGH = 12, 19, (128, 256), (512, 1024)
GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _triton_on_cuda():
    pytest.importorskip("triton")
    if _triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set: the kernels are defined for the interpreter")
    with dropclass_fast.set_backend("triton"):
        yield


def _triton_interpreted() -> bool:
    from dropclass_fast import triton as triton_backend

    return triton_backend.INTERPRET


def make_inputs(dtype: torch.dtype, keep_mode: str):
    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(BATCH, CLASSES, *LOW, device="cuda", generator=generator) * 3).to(dtype)
    drop_logits = (torch.randn(BATCH, CLASSES, *LOW, device="cuda", generator=generator) * 3).to(dtype)
    target = torch.randint(0, CLASSES, (BATCH, *HIGH), device="cuda", generator=generator)
    target[torch.rand(BATCH, *HIGH, device="cuda", generator=generator) < 0.1] = 255
    if keep_mode == "batch":
        keep = torch.ones(CLASSES, device="cuda")
        keep[3] = 0
    else:
        keep = (torch.rand(BATCH, CLASSES, device="cuda", generator=generator) > 0.1).float()
        keep[:, 0] = 1
    return logits, drop_logits, target, keep


def loss_and_grads(fn, logits, drop_logits, target, keep, align_corners):
    leaves = [logits.clone().requires_grad_(), drop_logits.clone().requires_grad_()]
    total, parts = fn(*leaves, target, keep, 0.3, align_corners=align_corners)
    total.backward()
    return total, parts, [x.grad for x in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_dropclass_loss_full_size(dtype, keep_mode, align_corners):
    logits, drop_logits, target, keep = make_inputs(dtype, keep_mode)
    got, got_parts, got_grads = loss_and_grads(dcf.dropclass_loss, logits, drop_logits, target, keep, align_corners)

    def eager(a, b, *args, **kwargs):
        return reference.dropclass_loss(a.float(), b.float(), *args, **kwargs)

    want, want_parts, want_grads = loss_and_grads(eager, logits, drop_logits, target, keep, align_corners)
    for name in ("ce", "ce_drop", "sup"):
        torch.testing.assert_close(got_parts[name], want_parts[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    rtol = GRAD_RTOL[dtype]
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == dtype
        scale = w.abs().max().item()
        torch.testing.assert_close(g.float(), w.to(dtype).float(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_and_int32_labels_full_size(dtype):
    logits, _, target, keep = make_inputs(dtype, "sample")
    got = dcf.seg_cross_entropy(logits.contiguous(memory_format=torch.channels_last), target.int(), keep)
    want = reference.seg_cross_entropy(logits.float(), target, keep)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_mask_full_size(dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    features = torch.randn(BATCH, 270, *LOW, device="cuda", generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(CLASSES, 270, 1, 1, device="cuda", generator=generator).requires_grad_()
    keep = torch.ones(CLASSES, device="cuda")
    keep[5] = 0
    grad_out = torch.randn(features.shape, device="cuda", generator=generator).to(dtype)
    got = dcf.channel_mask(features, weight, keep)
    got.backward(grad_out)
    leaves = [features.detach().float().requires_grad_(), weight.detach().clone().requires_grad_()]
    want = reference.channel_mask(*leaves, keep)
    want.backward(grad_out.float())
    rtol = GRAD_RTOL[dtype]
    torch.testing.assert_close(got.float(), want, rtol=rtol, atol=rtol)
    torch.testing.assert_close(features.grad.float(), leaves[0].grad, rtol=rtol, atol=rtol)
    scale = leaves[1].grad.abs().max().item()
    torch.testing.assert_close(weight.grad, leaves[1].grad, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_mode_is_bit_identical_full_size(dtype):
    logits, drop_logits, target, keep = make_inputs(dtype, "sample")
    runs = []
    with dropclass_fast.set_backend("triton", deterministic=True):
        for _ in range(2):
            total, _, grads = loss_and_grads(dcf.dropclass_loss, logits, drop_logits, target, keep, False)
            runs.append([total, *grads])
    for first, second in zip(*runs):
        assert torch.equal(first, second)
