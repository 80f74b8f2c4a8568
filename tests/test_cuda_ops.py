"""The CUDA kernels (``set_backend("cuda")``) on a GPU against the eager reference: values and gradients.

Every op at the paper's Cityscapes per-GPU shape (B=12, K=19, logits 128x256,
labels 512x1024) and at small odd sizes (integer and non-integer factors,
downsampling, no resampling, a 1x1 source, a factor wider than one block pass,
K above the register-resident limit), float32 / float16 / bfloat16, both
``align_corners``, no / ``[K]`` / ``[B, K]`` keep, contiguous and channels_last
features; the error messages of bad labels and keep values; run-to-run
bit-identity; peak memory; the combined pass of ``dropclass_loss`` (CE and L_sup of
``drop_logits`` from one kernel) against the reference's three terms and each term's
gradient. The reference runs in float64 on the same device. ``compute-sanitizer``
runs over these kernels in ``test_cuda_sanitizer.py``.
"""

from __future__ import annotations

import pytest
import torch
from op_inputs import make_keep, make_target

import dropclass_fast
from dropclass_fast import _extension, reference
from dropclass_fast import functional as dcf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CITYSCAPES = (12, 19, (128, 256), (512, 1024))
# (B, K, logits h x w, labels H x W)
SEG_SHAPES = [
    (2, 19, (37, 53), (150, 211)),  # non-integer factors
    (2, 19, (9, 13), (36, 52)),  # integer factor 4
    (1, 2, (8, 8), (32, 32)),
    (2, 21, (16, 15), (16, 15)),  # no resampling
    (2, 7, (11, 9), (5, 4)),  # downsampling
    (2, 5, (1, 1), (6, 5)),  # 1x1 source
    (1, 3, (2, 3), (300, 700)),  # one source column spans several block passes
    (1, 40, (4, 30), (8, 90)),  # K > 32: shared-memory class storage
    (1, 150, (9, 13), (33, 41)),
]
HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _shape_id(shape) -> str:
    batch, classes, low, high = shape
    return f"B{batch}K{classes}_{low[0]}x{low[1]}to{high[0]}x{high[1]}"


@pytest.fixture(autouse=True)
def _cuda_backend():
    assert _extension.load(), f"C++ extension unavailable: {_extension.error()}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dropclass_fast::seg_cross_entropy", "CUDA"):
        pytest.fail("the extension was built without its CUDA kernels (CPU torch or no nvcc at build time)")
    with dropclass_fast.set_backend("cuda"):
        yield


def _generator() -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(0)


def loss_and_grad(fn, logits: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kwargs)
    loss.backward()
    return loss, leaf.grad


def reference_loss_and_grad(fn, logits: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager reference in float64 from the (rounded) input values."""
    return loss_and_grad(fn, logits.double(), *args, **kwargs)


def assert_grad_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """``got`` (in the logits' dtype) against the float64 ``want``, relative to the largest entry of ``want``.

    Also allows two steps of ``got``'s subnormal spacing: at the full Cityscapes size the gradient entries are
    ~1e-7, where float16 keeps only a few bits.
    """
    scale = want.abs().max().item()
    info = torch.finfo(got.dtype)
    subnormal_step = info.smallest_normal * info.eps
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * scale + 2 * subnormal_step)


# ---------------------------------------------------------------------------
# seg_cross_entropy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SEG_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("keep_mode", ["none", "batch", "sample"])
def test_seg_cross_entropy_float32(shape, align_corners, keep_mode):
    batch, classes, low, high = shape
    gen = _generator()
    logits = torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3
    target = make_target(batch, classes, high, gen)
    keep = make_keep(keep_mode, batch, classes, gen)
    got, got_grad = loss_and_grad(dcf.seg_cross_entropy, logits, target, keep, align_corners=align_corners)
    want, want_grad = reference_loss_and_grad(
        reference.seg_cross_entropy, logits, target, keep, align_corners=align_corners
    )
    assert got.dtype == torch.float32 and got_grad.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    assert_grad_close(got_grad, want_grad, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("keep_mode", ["none", "batch", "sample"])
def test_seg_cross_entropy_cityscapes(dtype, align_corners, keep_mode):
    batch, classes, low, high = CITYSCAPES
    gen = _generator()
    logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).to(dtype)
    target = make_target(batch, classes, high, gen)
    keep = make_keep(keep_mode, batch, classes, gen)
    got, got_grad = loss_and_grad(dcf.seg_cross_entropy, logits, target, keep, align_corners=align_corners)
    want, want_grad = reference_loss_and_grad(
        reference.seg_cross_entropy, logits, target, keep, align_corners=align_corners
    )
    assert got_grad.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    assert_grad_close(got_grad, want_grad, 2e-5 if dtype == torch.float32 else HALF_RTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SEG_SHAPES[:2] + SEG_SHAPES[-2:], ids=lambda s: f"K{s[1]}_{s[2][0]}x{s[2][1]}")
def test_seg_cross_entropy_half_precision(dtype, shape):
    batch, classes, low, high = shape
    gen = _generator()
    logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).to(dtype)
    target = make_target(batch, classes, high, gen)
    keep = make_keep("sample", batch, classes, gen)
    got, got_grad = loss_and_grad(dcf.seg_cross_entropy, logits, target, keep)
    want, want_grad = reference_loss_and_grad(reference.seg_cross_entropy, logits, target, keep)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    assert_grad_close(got_grad, want_grad, HALF_RTOL[dtype])


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
def test_seg_cross_entropy_label_dtypes(label_dtype):
    gen = _generator()
    logits = torch.randn(2, 5, 13, 17, device="cuda", generator=gen)
    target = torch.randint(0, 5, (2, 50, 67), device="cuda", generator=gen)
    ignore = 255 if label_dtype == torch.uint8 else -1
    target[:, :3] = ignore
    got, got_grad = loss_and_grad(dcf.seg_cross_entropy, logits, target.to(label_dtype), ignore_index=ignore)
    want, want_grad = reference_loss_and_grad(reference.seg_cross_entropy, logits, target, ignore_index=ignore)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    assert_grad_close(got_grad, want_grad, 2e-5)


def test_seg_cross_entropy_loss_only_matches_with_grad():
    gen = _generator()
    logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen)
    target = make_target(2, 19, (150, 211), gen)
    with torch.no_grad():
        loss_only = dcf.seg_cross_entropy(logits, target)
    with_grad, _ = loss_and_grad(dcf.seg_cross_entropy, logits, target)
    assert loss_only.item() == with_grad.item()


def test_seg_cross_entropy_all_ignored_is_zero():
    logits = torch.randn(2, 4, 5, 5, device="cuda")
    target = torch.full((2, 20, 20), 255, device="cuda")
    target[0, 0, 0] = 2
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0], device="cuda")  # the only labelled pixel's class is dropped
    loss, grad = loss_and_grad(dcf.seg_cross_entropy, logits, target, keep)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_seg_cross_entropy_matches_cpu_kernels():
    gen = _generator()
    logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen) * 3
    target = make_target(2, 19, (150, 211), gen)
    keep = make_keep("sample", 2, 19, gen)
    got, got_grad = loss_and_grad(dcf.seg_cross_entropy, logits, target, keep, align_corners=True)
    with dropclass_fast.set_backend("cpp"):
        want, want_grad = loss_and_grad(
            dcf.seg_cross_entropy, logits.cpu(), target.cpu(), keep.cpu(), align_corners=True
        )
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.cpu(), want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())


# ---------------------------------------------------------------------------
# dropped_class_prob
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize(
    "shape", [(3, 19, (11, 13)), (2, 2, (8, 16)), (2, 150, (9, 7)), (12, 19, (128, 256))], ids=str
)
def test_dropped_class_prob(dtype, keep_mode, shape):
    batch, classes, size = shape
    gen = _generator()
    logits = (torch.randn(batch, classes, *size, device="cuda", generator=gen) * 2).to(dtype)
    keep = make_keep(keep_mode, batch, classes, gen)
    got, got_grad = loss_and_grad(dcf.dropped_class_prob, logits, keep)
    want, want_grad = reference_loss_and_grad(reference.dropped_class_prob, logits, keep)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-7)
    assert_grad_close(got_grad, want_grad, 2e-5 if dtype == torch.float32 else HALF_RTOL[dtype])


def test_dropped_class_prob_nothing_dropped():
    logits = torch.randn(2, 5, 4, 4, device="cuda")
    loss, grad = loss_and_grad(dcf.dropped_class_prob, logits, torch.ones(5, dtype=torch.bool, device="cuda"))
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


# ---------------------------------------------------------------------------
# dropclass_loss: the combined pass over drop_logits (CE and L_sup in one kernel)
# ---------------------------------------------------------------------------
def _loss_terms_and_grads(logits, drop_logits, target, keep, align_corners, weights):
    """The three unweighted terms and the gradients of ``sum(weights * terms)`` w.r.t. both logits."""
    a = logits.detach().clone().requires_grad_()
    b = drop_logits.detach().clone().requires_grad_()
    _, parts = dcf.dropclass_loss(a, b, target, keep, progress=0.5, alpha=1.0, align_corners=align_corners)
    terms = (2 * parts["ce"], 2 * parts["ce_drop"], parts["sup"])
    sum(w * t for w, t in zip(weights, terms)).backward()
    return terms, a.grad, b.grad


def _reference_terms_and_grads(logits, drop_logits, target, keep, align_corners, weights):
    a = logits.detach().double().requires_grad_()
    b = drop_logits.detach().double().requires_grad_()
    terms = (
        reference.seg_cross_entropy(a, target, None, align_corners=align_corners),
        reference.seg_cross_entropy(b, target, keep, align_corners=align_corners),
        reference.dropped_class_prob(b, keep),
    )
    sum(w * t for w, t in zip(weights, terms)).backward()
    return terms, a.grad, b.grad


@pytest.mark.parametrize("shape", [*SEG_SHAPES, CITYSCAPES], ids=_shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
def test_dropclass_loss_combined_pass(shape, dtype, keep_mode):
    batch, classes, low, high = shape
    gen = _generator()
    logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).to(dtype)
    drop_logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).to(dtype)
    target = make_target(batch, classes, high, gen)
    keep = make_keep(keep_mode, batch, classes, gen)
    weights = (0.7, 0.3, 5.0)
    got_terms, got_grad, got_drop_grad = _loss_terms_and_grads(logits, drop_logits, target, keep, False, weights)
    want_terms, want_grad, want_drop_grad = _reference_terms_and_grads(
        logits, drop_logits, target, keep, False, weights
    )
    for got, want in zip(got_terms, want_terms):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    rtol = 2e-5 if dtype == torch.float32 else HALF_RTOL[dtype]
    assert got_grad.dtype == dtype and got_drop_grad.dtype == dtype
    assert_grad_close(got_grad, want_grad, rtol)
    assert_grad_close(got_drop_grad, want_drop_grad, rtol)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], ids=["ce", "ce_drop", "sup"])
def test_dropclass_loss_each_term_alone(weights):
    gen = _generator()
    logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen) * 3
    drop_logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen) * 3
    target = make_target(2, 19, (150, 211), gen)
    keep = make_keep("sample", 2, 19, gen)
    _, got_grad, got_drop_grad = _loss_terms_and_grads(logits, drop_logits, target, keep, True, weights)
    _, want_grad, want_drop_grad = _reference_terms_and_grads(logits, drop_logits, target, keep, True, weights)
    for got, want in ((got_grad, want_grad), (got_drop_grad, want_drop_grad)):
        if not want.any():
            assert not got.any()
        else:
            assert_grad_close(got, want, 2e-5)


def test_dropclass_loss_matches_cpu_op():
    gen = _generator()
    logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen) * 3
    drop_logits = torch.randn(2, 19, 37, 53, device="cuda", generator=gen) * 3
    target = make_target(2, 19, (150, 211), gen)
    keep = make_keep("batch", 2, 19, gen)
    op = torch.ops.dropclass_fast.dropclass_loss
    got = op(logits, drop_logits, target, keep, 255, False, True)
    want = op(logits.cpu(), drop_logits.cpu(), target.cpu(), keep.cpu(), 255, False, True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-5 * max(w.abs().max().item(), 1e-3))


def test_dropclass_loss_bad_label_raises_cpu_message():
    gen = _generator()
    logits = torch.randn(2, 5, 8, 8, device="cuda", generator=gen)
    target = torch.randint(0, 5, (2, 16, 16), device="cuda", generator=gen)
    target[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"target contains label 7 outside \[0, 5\)"):
        dcf.dropclass_loss(logits, logits, target, torch.tensor([1.0, 0, 1, 1, 1], device="cuda"), progress=0.5)


# ---------------------------------------------------------------------------
# channel_mask
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("weight_shape", ["1x1", "3x3", "2d"])
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size", [(2, 37, 9, 14), (2, 64, 16, 16), (12, 270, 128, 256)], ids=str)
def test_channel_mask(weight_shape, keep_mode, memory_format, dtype, size):
    batch, channels, height, width = size
    classes = 19
    gen = _generator()
    weight = {
        "1x1": torch.randn(classes, channels, 1, 1, device="cuda", generator=gen),
        "3x3": torch.randn(classes, channels, 3, 3, device="cuda", generator=gen),
        "2d": torch.randn(classes, channels, device="cuda", generator=gen),
    }[weight_shape]
    features = torch.randn(batch, channels, height, width, device="cuda", generator=gen).to(dtype)
    features = features.contiguous(memory_format=memory_format)
    keep = make_keep(keep_mode, batch, classes, gen)
    upstream = torch.randn(features.shape, device="cuda", generator=gen).to(dtype)
    results = {}
    for name, fn, cast in (("cuda", dcf.channel_mask, None), ("reference", reference.channel_mask, torch.float64)):
        f = (features if cast is None else features.to(cast)).detach().requires_grad_()
        w = (weight if cast is None else weight.to(cast)).detach().requires_grad_()
        out = fn(f, w, keep)
        (out.double() * upstream.double()).sum().backward()
        results[name] = (out, f.grad, w.grad)
    out, grad_features, grad_weight = results["cuda"]
    want_out, want_features, want_weight = results["reference"]
    assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format)
    assert grad_features.is_contiguous(memory_format=memory_format)
    rtol = 1e-5 if dtype == torch.float32 else HALF_RTOL[dtype]
    torch.testing.assert_close(out.double(), want_out, rtol=rtol, atol=rtol)
    torch.testing.assert_close(grad_features.double(), want_features, rtol=rtol, atol=rtol)
    assert_grad_close(grad_weight, want_weight, 1e-4 if dtype == torch.float32 else HALF_RTOL[dtype])


# ---------------------------------------------------------------------------
# Errors, determinism, memory
# ---------------------------------------------------------------------------
def test_bad_label_raises_cpu_message():
    logits = torch.randn(2, 5, 4, 4, device="cuda")
    target = torch.zeros(2, 16, 16, dtype=torch.long, device="cuda")
    target[1, 3, 7] = 9
    target[1, 9, 2] = -4
    with pytest.raises(ValueError, match=r"target contains label 9 outside \[0, 5\) that is not ignore_index=255"):
        torch.ops.dropclass_fast.seg_cross_entropy(logits, target, None, 255, False, True)
    with pytest.raises(ValueError, match=r"target contains label 9 outside"):
        torch.ops.dropclass_fast.seg_cross_entropy(logits, target, None, 255, False, False)


@pytest.mark.parametrize("op", ["seg_cross_entropy", "dropped_class_prob", "channel_mask"])
def test_bad_keep_raises_cpu_message(op):
    logits = torch.randn(2, 5, 4, 4, device="cuda")
    target = torch.zeros(2, 8, 8, dtype=torch.long, device="cuda")
    weight = torch.randn(5, 5, device="cuda").view(5, 5, 1)
    calls = {
        "seg_cross_entropy": lambda keep: torch.ops.dropclass_fast.seg_cross_entropy(
            logits, target, keep, 255, False, True
        ),
        "dropped_class_prob": lambda keep: torch.ops.dropclass_fast.dropped_class_prob(logits, keep, True),
        "channel_mask": lambda keep: torch.ops.dropclass_fast.channel_mask(logits, weight, keep),
    }
    not_binary = torch.tensor([[1.0, 0.5, 1.0, 1.0, 0.0]], device="cuda")
    with pytest.raises(ValueError, match=r"keep must contain only 0 and 1 values, got 0.5"):
        calls[op](not_binary)
    near_one = torch.tensor([[1.0, 1 + 1e-12, 1.0, 1.0, 0.0]], device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"keep must contain only 0 and 1 values, got 1.000000000001$"):
        calls[op](near_one)  # checked in float64, and printed with the digits that tell it from 1
    empty_row = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], device="cuda")
    with pytest.raises(ValueError, match=r"keep drops every class in row 1; at least one class must be kept"):
        calls[op](empty_row)


def test_float64_is_refused_by_the_cuda_kernels():
    logits = torch.randn(1, 3, 4, 4, device="cuda", dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.dropclass_fast.dropped_class_prob(logits, torch.ones(1, 3, device="cuda"), False)


def test_results_are_bit_identical_across_runs():
    batch, classes, low, high = CITYSCAPES
    gen = _generator()
    logits = torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3
    target = make_target(batch, classes, high, gen)
    keep = make_keep("sample", batch, classes, gen)
    runs = [loss_and_grad(dcf.seg_cross_entropy, logits, target, keep) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    probs = [loss_and_grad(dcf.dropped_class_prob, logits, keep) for _ in range(2)]
    assert torch.equal(probs[0][0], probs[1][0]) and torch.equal(probs[0][1], probs[1][1])
    fused = [torch.ops.dropclass_fast.dropclass_loss(logits, logits * 0.5, target, keep, 255, False, True)
             for _ in range(2)]  # fmt: skip
    assert all(torch.equal(x, y) for x, y in zip(*fused))


def _peak_extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_fused_loss_peak_memory_is_a_tenth_of_eager():
    batch, classes, low, high = CITYSCAPES
    gen = _generator()
    logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).requires_grad_()
    target = make_target(batch, classes, high, gen)

    def step(fn):
        logits.grad = None
        fn(logits, target).backward()

    fused = _peak_extra_bytes(lambda: step(dcf.seg_cross_entropy))
    eager = _peak_extra_bytes(lambda: step(reference.seg_cross_entropy))
    assert fused * 10 <= eager, f"fused {fused / 2**20:.1f} MiB vs eager {eager / 2**20:.1f} MiB"


def test_bfloat16_backward_holds_the_saved_gradient_and_the_result_only():
    """bfloat16 logits: the backward writes ``grad * grad_loss`` straight into the bfloat16 gradient, beside the
    float32 gradient the forward saved, with no float32 product in between (that would add 4 bytes an element)."""
    batch, classes, low, high = CITYSCAPES
    gen = _generator()
    logits = (torch.randn(batch, classes, *low, device="cuda", generator=gen) * 3).bfloat16().requires_grad_()
    target = make_target(batch, classes, high, gen)

    def step():
        logits.grad = None
        (dcf.seg_cross_entropy(logits, target) * 0.5).backward()

    step()
    peak = _peak_extra_bytes(step)
    saved_and_result = logits.numel() * (4 + 2)
    assert peak <= saved_and_result + 2**20, f"{peak / 2**20:.1f} MiB, saved + result {saved_and_result / 2**20:.1f}"
