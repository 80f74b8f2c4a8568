"""The C++ kernels against the eager reference: values and gradients, fresh random inputs; non-contiguous layouts on
the C++ and Triton kernels; empty inputs on every backend."""

from __future__ import annotations

import pytest
import torch
from backends import CPU_BACKENDS, KERNEL_BACKENDS
from op_inputs import make_keep, make_target
from op_runs import OPS, assert_grad_close, run_op, tiny_op_calls

import dropclass_fast
from dropclass_fast import functional as dcf
from dropclass_fast import reference

TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-3},
    torch.float16: {"rtol": 2e-3, "atol": 2e-4},
}

# (B, K, logits h x w, labels H x W)
SEG_SHAPES = [
    (2, 19, (37, 53), (150, 211)),
    (1, 2, (8, 8), (32, 32)),
    (2, 21, (16, 15), (16, 15)),
    (1, 150, (9, 13), (33, 41)),
]


@pytest.mark.parametrize("shape", SEG_SHAPES, ids=lambda s: f"B{s[0]}K{s[1]}_{s[2][0]}x{s[2][1]}to{s[3][0]}x{s[3][1]}")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("keep_mode", ["none", "batch", "sample"])
def test_seg_cross_entropy_float32(cpp_backend, shape, align_corners, keep_mode):
    batch, num_classes, low, high = shape
    logits = torch.randn(batch, num_classes, *low) * 3
    target = make_target(batch, num_classes, high)
    keep = make_keep(keep_mode, batch, num_classes)
    got, got_grads = run_op("seg_cross_entropy", "cpp", logits, target, keep, align_corners=align_corners)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, keep, align_corners=align_corners)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert_grad_close(got_grads[0], want_grads[0], rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("align_corners", [False, True])
def test_seg_cross_entropy_half_precision(cpp_backend, dtype, align_corners):
    logits = (torch.randn(2, 19, 37, 53) * 3).to(dtype)
    target = make_target(2, 19, (150, 211))
    keep = make_keep("sample", 2, 19)
    got, got_grads = run_op("seg_cross_entropy", "cpp", logits, target, keep, align_corners=align_corners)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, keep, align_corners=align_corners)
    assert got.dtype == torch.float32 and got_grads[0].dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert_grad_close(got_grads[0], want_grads[0], rtol=TOLERANCE[dtype]["rtol"])


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_seg_cross_entropy_any_integer_labels(cpp_backend, label_dtype):
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 24, 28))
    ignore = 255 if label_dtype == torch.uint8 else -1
    target[:, :3] = ignore
    want = reference.seg_cross_entropy(logits, target, ignore_index=ignore)
    with dropclass_fast.set_backend("cpp"):
        got = dcf.seg_cross_entropy(logits, target.to(label_dtype), ignore_index=ignore)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["cpp", "eager"])
def test_seg_cross_entropy_all_ignored_is_zero(cpp_backend, backend):
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 20, 20), 255)
    target[0, 0, 0] = 2
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0])  # the only labelled pixel belongs to a dropped class
    with dropclass_fast.set_backend(backend):
        for k in (None, keep):
            loss = dcf.seg_cross_entropy(logits, target if k is not None else torch.full_like(target, 255), k)
            loss.backward()
            assert loss.item() == 0.0
            assert torch.count_nonzero(logits.grad) == 0 and not torch.isnan(logits.grad).any()


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("num_classes", [2, 19, 150])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dropped_class_prob(cpp_backend, keep_mode, num_classes, dtype):
    logits = (torch.randn(3, num_classes, 11, 13) * 2).to(dtype)
    keep = make_keep(keep_mode, 3, num_classes)
    got, got_grads = run_op("dropped_class_prob", "cpp", logits, keep)
    want, want_grads = run_op("dropped_class_prob", "reference", logits, keep)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=max(tol["rtol"], 1e-5) if dtype != torch.float32 else 1e-5, atol=1e-6)
    assert_grad_close(got_grads[0], want_grads[0], rtol=tol["rtol"])


def test_dropped_class_prob_nothing_dropped(cpp_backend):
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    with dropclass_fast.set_backend("cpp"):
        loss = dcf.dropped_class_prob(logits, torch.ones(5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("weight_shape", ["1x1", "3x3", "2d"])
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channel_mask(cpp_backend, weight_shape, keep_mode, memory_format, dtype):
    batch, channels, num_classes = 2, 37, 19
    weight = {
        "1x1": torch.randn(num_classes, channels, 1, 1),
        "3x3": torch.randn(num_classes, channels, 3, 3),
        "2d": torch.randn(num_classes, channels),
    }[weight_shape]
    features = torch.randn(batch, channels, 9, 14).to(dtype).contiguous(memory_format=memory_format)
    keep = make_keep(keep_mode, batch, num_classes)
    leaves = {}
    outputs = {}
    for backend in ("cpp", "eager"):
        f = features.detach().clone().requires_grad_()
        w = weight.detach().clone().requires_grad_()
        with dropclass_fast.set_backend(backend):
            out = dcf.channel_mask(f, w, keep)
        upstream = torch.linspace(-1, 1, out.numel()).view_as(out).to(dtype)
        (out * upstream).float().sum().backward()
        outputs[backend], leaves[backend] = out, (f.grad, w.grad)
    got, want = outputs["cpp"], outputs["eager"]
    assert got.dtype == dtype and got.is_contiguous(memory_format=memory_format)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), want.float(), **tol)
    torch.testing.assert_close(leaves["cpp"][0].float(), leaves["eager"][0].float(), **tol)
    scale = leaves["eager"][1].abs().max().item()
    rtol = 1e-5 if dtype == torch.float32 else tol["rtol"]
    torch.testing.assert_close(leaves["cpp"][1], leaves["eager"][1], rtol=rtol, atol=rtol * scale)


def test_channel_mask_weight_gradient_is_zero_where_the_weight_is_zero(cpp_backend):
    """ReLU passes no gradient at 0 (torch's relu backward): a zero weight, e.g. a zero-initialised classifier
    row, gets a zero gradient on the C++ backend as on the eager one."""
    features = torch.randn(2, 4, 3, 5)
    weight = torch.randn(3, 4)
    weight[1] = 0.0  # a whole class row at the kink
    weight[0, 2] = 0.0
    keep = torch.tensor([1.0, 1.0, 0.0])
    grads = {}
    for backend in ("cpp", "eager"):
        f, w = features.clone().requires_grad_(), weight.clone().requires_grad_()
        with dropclass_fast.set_backend(backend):
            dcf.channel_mask(f, w, keep).sum().backward()
        grads[backend] = w.grad
    assert grads["eager"][1].eq(0).all() and grads["eager"][0, 2] == 0
    torch.testing.assert_close(grads["cpp"], grads["eager"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channel_mask_half_precision_rounds_once(cpp_backend, dtype):
    """Weights whose importance s is exact in float32 but not in the half dtype: the output is features * s taken
    in float32 and rounded once, bit for bit the reference's (rounding s to the half dtype first is off by an ulp
    in many elements, which test_channel_mask's rtol of 2e-3 / 2e-2 lets through)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 8, 8, generator=g).to(dtype)
    weight = torch.randint(-(2**14), 2**14, (4, 16), generator=g).float() / 2**12  # sums of <= 4: exact in float32
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])  # two kept classes: dividing by 2 is exact
    with dropclass_fast.set_backend("cpp"):
        got = dcf.channel_mask(features, weight, keep)
    want = reference.channel_mask(features, weight, keep)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_channel_mask_several_chunks_with_per_sample_keep(cpp_backend, memory_format):
    """The C++ kernels' weight gradient summed over several partial sums per sample: channels_last features span
    several task chunks of pixels (37 x 29 pixels, more than one chunk holds), contiguous ones one chunk per
    (sample, channel) plane; either way the sums must be taken per sample, where the keep rows differ."""
    features = torch.randn(2, 33, 37, 29).contiguous(memory_format=memory_format)
    weight = torch.randn(4, 33)
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    results = {}
    for backend in ("cpp", "eager"):
        f, w = features.clone().requires_grad_(), weight.clone().requires_grad_()
        with dropclass_fast.set_backend(backend):
            out = dcf.channel_mask(f, w, keep)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = (out.detach(), f.grad, w.grad)
    for got, want in zip(results["cpp"], results["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last_logits", "strided_target", "both"])
@pytest.mark.parametrize("keep_mode", ["none", "sample"])
def test_seg_cross_entropy_non_contiguous_inputs(cpp_backend, backend, layout, keep_mode):
    """Channels-last logits and a transposed-view target give the reference's values and gradients (test_bounds
    compares each layout only with itself)."""
    logits = torch.randn(2, 7, 9, 11) * 3
    target = make_target(2, 7, (30, 41))
    keep = make_keep(keep_mode, 2, 7)
    if layout in ("channels_last_logits", "both"):
        logits = logits.contiguous(memory_format=torch.channels_last)
    if layout in ("strided_target", "both"):
        target = target.transpose(1, 2).contiguous().transpose(1, 2)
        assert not target.is_contiguous()
    got, got_grads = run_op("seg_cross_entropy", backend, logits, target, keep)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, keep)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert_grad_close(got_grads[0], want_grads[0], rtol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dropped_class_prob_channels_last_logits(cpp_backend, backend):
    logits = (torch.randn(2, 7, 9, 11) * 2).contiguous(memory_format=torch.channels_last)
    keep = make_keep("sample", 2, 7)
    got, got_grads = run_op("dropped_class_prob", backend, logits, keep)
    want, want_grads = run_op("dropped_class_prob", "reference", logits, keep)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert_grad_close(got_grads[0], want_grads[0], rtol=1e-5)


def test_seg_cross_entropy_phase_major_strip_with_short_runs(cpp_backend):
    """K=512, 17 -> 102 columns (x6): the column strips are about 52 wide, so in some phases fewer than 8 columns
    line up and the kernel interpolates them one by one (a phased strip's edge columns), in the gradient too."""
    logits = torch.randn(1, 512, 2, 17) * 3
    target = make_target(1, 512, (4, 102))
    got, got_grads = run_op("seg_cross_entropy", "cpp", logits, target, None)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, None)
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])
    assert_grad_close(got_grads[0], want_grads[0], rtol=1e-5)


def _weighted_reference_terms(logits, drop_logits, target, keep, ignore_index, align_corners):
    """The reference's three terms weighted by hand for progress 0.3 (lambda = 0.7) and alpha = 10."""
    return {
        "ce": 0.7 * reference.seg_cross_entropy(logits, target, None, ignore_index, align_corners),
        "ce_drop": 0.3 * reference.seg_cross_entropy(drop_logits, target, keep, ignore_index, align_corners),
        "sup": 10.0 * reference.dropped_class_prob(drop_logits, keep),
    }


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize(("align_corners", "ignore_index"), [(False, 255), (True, -1)])
def test_dropclass_loss(cpp_backend, keep_mode, align_corners, ignore_index):
    """The fused op against the reference's terms, weighted by hand: lambda = 1 - 0.3, alpha = 10."""
    logits = torch.randn(2, 19, 17, 23)
    drop_logits = torch.randn(2, 19, 17, 23)
    target = make_target(2, 19, (67, 91))
    target[target == 255] = ignore_index
    keep = make_keep(keep_mode, 2, 19)
    a, b = logits.clone().requires_grad_(), drop_logits.clone().requires_grad_()
    with dropclass_fast.set_backend("cpp"):
        total, parts = dcf.dropclass_loss(a, b, target, keep, progress=0.3, alpha=10.0, ignore_index=ignore_index,
                                          align_corners=align_corners)  # fmt: skip
    total.backward()
    ra, rb = logits.clone().requires_grad_(), drop_logits.clone().requires_grad_()
    want = _weighted_reference_terms(ra, rb, target, keep, ignore_index, align_corners)
    want_total = want["ce"] + want["ce_drop"] + want["sup"]
    want_total.backward()
    for name in ("ce", "ce_drop", "sup"):
        torch.testing.assert_close(parts[name], want[name], **TOLERANCE[torch.float32])
    torch.testing.assert_close(total, want_total, **TOLERANCE[torch.float32])
    for got, expected in ((a.grad, ra.grad), (b.grad, rb.grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize(("backend", "drop_dtype"), [("eager", torch.float32), ("cpp", torch.float64)])
def test_dropclass_loss_term_by_term_passes_its_options(cpp_backend, backend, drop_dtype):
    """The path that computes the terms one by one (the eager backend; logits of two dtypes) with
    align_corners=True and ignore_index=-1, against the reference's terms weighted by hand."""
    logits, drop_logits = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7, dtype=drop_dtype)
    target = make_target(2, 5, (15, 19))
    target[target == 255] = -1
    keep = make_keep("sample", 2, 5)
    with dropclass_fast.set_backend(backend):
        _, parts = dcf.dropclass_loss(logits, drop_logits, target, keep, 0.3, alpha=10.0, ignore_index=-1,
                                      align_corners=True)  # fmt: skip
    want = _weighted_reference_terms(logits, drop_logits, target, keep, -1, True)
    for name, value in want.items():
        torch.testing.assert_close(parts[name], value, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("keep_mode", ["none", "batch", "sample"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradcheck_seg_cross_entropy(cpp_backend, keep_mode, align_corners):
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    target = make_target(2, 4, (7, 9))
    keep = make_keep(keep_mode, 2, 4)
    with dropclass_fast.set_backend("cpp"):
        assert torch.autograd.gradcheck(
            lambda x: dcf.seg_cross_entropy(x, target, keep, align_corners=align_corners), (logits,)
        )


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
def test_gradcheck_dropped_class_prob(cpp_backend, keep_mode):
    logits = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    keep = make_keep(keep_mode, 2, 5)
    with dropclass_fast.set_backend("cpp"):
        assert torch.autograd.gradcheck(lambda x: dcf.dropped_class_prob(x, keep), (logits,))


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("weight_shape", [(5, 6, 1, 1), (5, 6, 3, 3)])
def test_gradcheck_channel_mask(cpp_backend, keep_mode, weight_shape):
    features = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    # keep weights away from 0, where ReLU (and so the gradient) is not differentiable
    weight = torch.randn(weight_shape, dtype=torch.float64)
    weight = (weight + weight.sign() * 0.1).requires_grad_()
    keep = make_keep(keep_mode, 2, 5)
    with dropclass_fast.set_backend("cpp"):
        assert torch.autograd.gradcheck(lambda f, w: dcf.channel_mask(f, w, keep), (features, weight))


def test_gradcheck_class_importance_and_loss(cpp_backend):
    weight = torch.randn(4, 6, dtype=torch.float64)
    weight = (weight + weight.sign() * 0.1).requires_grad_()
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: dcf.class_importance(w, keep), (weight,))
    logits = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    drop_logits = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    target = make_target(2, 4, (6, 6))
    with dropclass_fast.set_backend("cpp"):
        assert torch.autograd.gradcheck(
            lambda a, b: dcf.dropclass_loss(a, b, target, keep, 0.4)[0], (logits, drop_logits)
        )


@pytest.mark.parametrize("term", ["ce", "ce_drop", "sup"])
def test_dropclass_loss_each_term_backward(cpp_backend, term):
    """Each weighted term of the fused op on its own: its gradient reaches the right input only."""
    logits = torch.randn(2, 7, 9, 11)
    drop_logits = torch.randn(2, 7, 9, 11)
    target = make_target(2, 7, (30, 41))
    keep = make_keep("sample", 2, 7)
    grads = {}
    for backend in ("cpp", "eager"):
        a = logits.clone().requires_grad_()
        b = drop_logits.clone().requires_grad_()
        with dropclass_fast.set_backend(backend):
            _, parts = dcf.dropclass_loss(a, b, target, keep, progress=0.6, alpha=3.0)
        parts[term].backward()
        grads[backend] = (a.grad, b.grad)
    for got, want in zip(grads["cpp"], grads["eager"]):
        if want is None or not want.any():
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_dropclass_loss_op_registration(cpp_backend):
    """``torch.library.opcheck`` of the fused op: schema, fake implementation, autograd registration."""
    logits = torch.randn(2, 5, 4, 6, requires_grad=True)
    drop_logits = torch.randn(2, 5, 3, 3, requires_grad=True)
    target = make_target(2, 5, (9, 13))
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    torch.library.opcheck(
        torch.ops.dropclass_fast.dropclass_loss, (logits, drop_logits, target, keep, 255, False, True)
    )


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
    call = tiny_op_calls(requires_grad=True)[op]
    with dropclass_fast.set_backend(backend):
        out, inputs = call()
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out, inputs, create_graph=True)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fake_implementations_match_the_kernels_in_bfloat16_and_channels_last(cpp_backend, backend):
    """test_dropclass_loss_op_registration's opcheck uses float32 contiguous inputs, where a fake that returns the
    logits' dtype or drops channels_last is not told apart. The Triton ops take a trailing ``deterministic``."""
    logits = torch.randn(2, 5, 4, 6, dtype=torch.bfloat16)
    drop_logits = torch.randn(2, 5, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    target = make_target(2, 5, (9, 13))
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    features = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    taps = torch.randn(5, 6, 1)
    if backend == "cpp":
        ops, deterministic = torch.ops.dropclass_fast, ()
    else:
        pytest.importorskip("dropclass_fast.triton")
        ops, deterministic = torch.ops.dropclass_fast_triton, (True,)
    cases = [
        (ops.seg_cross_entropy, (logits, target, keep, 255, False, True)),
        (ops.dropped_class_prob, (logits, keep, True)),
        (ops.dropclass_loss, (logits, drop_logits, target, keep, 255, False, True)),
        (ops.channel_mask, (features, taps, keep)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args + deterministic, test_utils="test_faketensor")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", ["seg_cross_entropy", "dropped_class_prob", "dropclass_loss"])
def test_empty_batch_gives_zero_loss_and_empty_gradients(cpp_backend, backend, op):
    logits = torch.randn(0, 3, 4, 4, requires_grad=True)
    drop_logits = torch.randn(0, 3, 4, 4, requires_grad=True)
    target = torch.zeros(0, 8, 8, dtype=torch.long)
    keep = torch.tensor([1.0, 0.0, 1.0])
    calls = {
        "seg_cross_entropy": lambda: (dcf.seg_cross_entropy(logits, target, keep), [logits]),
        "dropped_class_prob": lambda: (dcf.dropped_class_prob(drop_logits, keep), [drop_logits]),
        "dropclass_loss": lambda: (
            dcf.dropclass_loss(logits, drop_logits, target, keep, 0.5)[0],
            [logits, drop_logits],
        ),
    }
    with dropclass_fast.set_backend(backend):
        loss, inputs = calls[op]()
    assert loss.item() == 0.0
    for grad, tensor in zip(torch.autograd.grad(loss, inputs), inputs):
        assert grad.shape == tensor.shape


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channel_mask_without_channels(cpp_backend, backend):
    features = torch.randn(2, 0, 4, 4, requires_grad=True)
    weight = torch.randn(3, 0, 1, 1, requires_grad=True)
    with dropclass_fast.set_backend(backend):
        out = dcf.channel_mask(features, weight, torch.tensor([1.0, 0.0, 1.0]))
        grad_features, grad_weight = torch.autograd.grad(out.sum(), (features, weight))
    assert out.shape == features.shape
    assert grad_features.shape == features.shape and grad_weight.shape == weight.shape
