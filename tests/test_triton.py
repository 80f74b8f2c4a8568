"""The Triton kernels against the eager reference, on CPU through Triton's interpreter (small shapes).

``tests/conftest.py`` sets TRITON_INTERPRET=1 when no CUDA device exists, before the kernels are defined; with a GPU
the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import functools
import re

import op_inputs
import pytest
import torch
from backends import NEEDS_TRITON_ON_CPU
from op_runs import assert_grad_close, run_op, tiny_op_calls

import dropclass_fast
from dropclass_fast import _backend, reference
from dropclass_fast import functional as dcf

triton = pytest.importorskip("triton")
triton_backend = pytest.importorskip("dropclass_fast.triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_backend.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)
pytestmark = [pytest.mark.gpu] if DEVICE == "cuda" else []  # on a GPU these run compiled, in `pytest -m gpu` too
make_keep = functools.partial(op_inputs.make_keep, device=DEVICE)
make_target = functools.partial(op_inputs.make_target, device=DEVICE)

# logits (B, K, h, w) -> labels (H, W): non-integer factors both ways, several bands and column tiles, identity, and
# downsampling (source pixels no output touches).
UPSAMPLE = (2, 5, (7, 9), (20, 30))
SHAPES = [
    UPSAMPLE,
    (1, 3, (21, 13), (50, 150)),
    (2, 4, (6, 6), (6, 6)),
    (2, 4, (9, 11), (5, 7)),
]
HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _first_candidate_on_the_gpu():
    """On a GPU these small cases run deterministic mode's launch configuration, the first candidate, as the
    interpreter does: measuring would compile all seven cross-entropy candidates for every new shape and
    specialisation, minutes of compiling in the GPU session. The other candidates run in
    test_every_launch_candidate_matches_the_reference, the measured choice in test_triton_gpu.py at full size."""
    if DEVICE == "cpu":
        yield
        return
    with dropclass_fast.set_backend("auto", deterministic=True):
        yield


def make_logits(batch, num_classes, size, dtype=torch.float32, channels_last=False) -> torch.Tensor:
    logits = (torch.randn(batch, num_classes, *size) * 3).to(dtype).to(DEVICE)
    return logits.contiguous(memory_format=torch.channels_last) if channels_last else logits


def test_offset_helper_multiplies_in_int64():
    """The kernels address through ``offset64``; a product past 2**31 must not wrap."""

    @triton.jit
    def kernel(out_ptr, stride):
        index = tl.full((), 3 << 20, tl.int32)
        tl.store(out_ptr, triton_backend._common.offset64(index, stride))

    tl = triton.language
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    kernel[(1,)](out, 1 << 12)
    assert out.item() == 3 << 32


def test_source_rows_past_2_31_elements():
    """Logits whose row stride puts row 2 at element 2**31 (a float16 view into 4 GiB of storage, of which only a
    few pages are ever touched on CPU): an int32 ``row * stride`` wraps there and reads another address."""
    from dropclass_fast.triton.seg_cross_entropy import cross_entropy_pass

    row_stride = 1 << 30
    storage = torch.empty(2 * row_stride + 8, dtype=torch.float16, device=DEVICE)
    logits = storage.as_strided((1, 2, 3, 2), (0, 1, row_stride, 2))  # [B, K, h, w]: k + 2 x + row * 2**30
    values = (torch.randn(1, 2, 3, 2) * 3).half().to(DEVICE)
    logits.copy_(values)
    target = torch.tensor([[[0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]]], device=DEVICE)  # [1, 5, 3]
    result = cross_entropy_pass(logits, target, None, 255, False, True, False, True)
    leaf = values.float().requires_grad_()
    want = reference.seg_cross_entropy(leaf, target)
    want.backward()
    assert result.count.item() == 15
    torch.testing.assert_close(result.loss_sum / 15, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.grad / 15, leaf.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}K{s[1]}_{s[2][0]}x{s[2][1]}to{s[3][0]}x{s[3][1]}")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("keep_mode", ["none", "batch", "sample"])
def test_seg_cross_entropy_float32(shape, align_corners, keep_mode):
    batch, num_classes, low, high = shape
    logits = make_logits(batch, num_classes, low)
    target = make_target(batch, num_classes, high)
    keep = make_keep(keep_mode, batch, num_classes)
    got, got_grads = run_op("seg_cross_entropy", "triton", logits, target, keep, align_corners=align_corners)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, keep, align_corners=align_corners)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_grad_close(got_grads[0], want_grads[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_seg_cross_entropy_dtypes_and_layouts(dtype, channels_last):
    batch, num_classes, low, high = UPSAMPLE
    logits = make_logits(batch, num_classes, low, dtype, channels_last)
    target = make_target(batch, num_classes, high)
    keep = make_keep("sample", batch, num_classes)
    got, got_grads = run_op("seg_cross_entropy", "triton", logits, target, keep)
    want, want_grads = run_op("seg_cross_entropy", "reference", logits, target, keep)
    assert got.dtype == torch.float32 and got_grads[0].dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_grad_close(got_grads[0], want_grads[0].to(dtype), HALF_RTOL.get(dtype, 1e-5))


@pytest.mark.parametrize(
    "label_dtype, ignore", [(torch.int64, 255), (torch.int32, -1), (torch.uint8, 255), (torch.int8, -1)]
)
def test_seg_cross_entropy_any_integer_labels(label_dtype, ignore):
    logits = make_logits(2, 5, (6, 7))
    target = torch.randint(0, 5, (2, 15, 17))
    target[:, :3] = ignore
    target = target.to(DEVICE)
    want = reference.seg_cross_entropy(logits, target, ignore_index=ignore)
    with dropclass_fast.set_backend("triton"):
        got = dcf.seg_cross_entropy(logits, target.to(label_dtype), ignore_index=ignore)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_strided_labels():
    logits = make_logits(2, 5, (6, 7))
    target = make_target(2, 5, (34, 15)).transpose(1, 2)  # [2, 15, 34], not contiguous
    want = reference.seg_cross_entropy(logits, target)
    with dropclass_fast.set_backend("triton"):
        got = dcf.seg_cross_entropy(logits, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_all_ignored_gives_zero_loss_and_gradient():
    logits = make_logits(2, 4, (5, 5)).requires_grad_()
    target = torch.full((2, 13, 13), 255, device=DEVICE)
    target[0, 0, 0] = 2
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0], device=DEVICE)  # the only labelled pixel belongs to a dropped class
    with dropclass_fast.set_backend("triton"):
        loss = dcf.seg_cross_entropy(logits, target, keep)
        loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_dropped_class_prob(keep_mode, dtype, channels_last):
    logits = make_logits(2, 5, (7, 9), dtype, channels_last)
    keep = make_keep(keep_mode, 2, 5)
    got, got_grads = run_op("dropped_class_prob", "triton", logits, keep)
    want, want_grads = run_op("dropped_class_prob", "reference", logits, keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert_grad_close(got_grads[0], want_grads[0].to(dtype), HALF_RTOL.get(dtype, 1e-5))


def test_dropped_class_prob_nothing_dropped_is_zero():
    logits = make_logits(2, 5, (3, 4)).requires_grad_()
    with dropclass_fast.set_backend("triton"):
        loss = dcf.dropped_class_prob(logits, torch.ones(5, dtype=torch.bool, device=DEVICE))
        loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_channel_mask_addresses_pixels_by_layout_not_size_one_strides():
    """A ``[B, C, h, 1]`` tensor is contiguous whatever stride its size-1 last dimension reports (here h=5):
    pixels must be addressed as the layout places them."""
    features = torch.randn(2, 3, 1, 5, device=DEVICE).transpose(2, 3)
    assert features.is_contiguous() and features.stride(3) == 5
    weight = torch.randn(4, 3, device=DEVICE)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], device=DEVICE)
    grad_out = torch.randn(1, 3, 2, 5, device=DEVICE).permute(0, 1, 3, 2).expand(2, 3, 5, 2)[..., :1]
    got_leaves = [features.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    with dropclass_fast.set_backend("triton"):
        got = dcf.channel_mask(*got_leaves, keep)
    got.backward(grad_out)
    want_leaves = [features.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    want = reference.channel_mask(*want_leaves, keep)
    want.backward(grad_out)
    torch.testing.assert_close(got, want)
    assert_grad_close(got_leaves[0].grad, want_leaves[0].grad, 1e-5)
    assert_grad_close(got_leaves[1].grad, want_leaves[1].grad, 1e-5)


@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("weight_shape", [(5, 6), (5, 6, 1, 1), (5, 6, 3, 3)], ids=["KC", "1x1", "3x3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_channel_mask(keep_mode, weight_shape, dtype, channels_last):
    features = make_logits(2, 6, (5, 7), dtype, channels_last)
    weight = torch.randn(weight_shape, device=DEVICE)
    keep = make_keep(keep_mode, 2, 5)
    grad_out = torch.randn(features.shape, device=DEVICE)
    got_leaves = [features.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    with dropclass_fast.set_backend("triton"):
        got = dcf.channel_mask(*got_leaves, keep)
    got.backward(grad_out.to(dtype))
    want_leaves = [features.detach().float().requires_grad_(), weight.detach().clone().requires_grad_()]
    want = reference.channel_mask(*want_leaves, keep)
    want.backward(grad_out.to(dtype).float())
    rtol = HALF_RTOL.get(dtype, 1e-5)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got.float(), want, rtol=rtol, atol=rtol)
    assert_grad_close(got_leaves[0].grad, want_leaves[0].grad.to(dtype), rtol)
    assert_grad_close(got_leaves[1].grad, want_leaves[1].grad, rtol)


@pytest.mark.parametrize("shape", [UPSAMPLE, SHAPES[3]], ids=["upsample", "downsample"])
@pytest.mark.parametrize("keep_mode", ["batch", "sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("align_corners", "ignore_index"), [(False, 255), (True, -1)])
def test_dropclass_loss_fused(shape, keep_mode, dtype, align_corners, ignore_index):
    batch, num_classes, low, high = shape
    logits = make_logits(batch, num_classes, low, dtype)
    drop_logits = make_logits(batch, num_classes, low, dtype, channels_last=True)
    target = make_target(batch, num_classes, high)
    target[target == 255] = ignore_index
    keep = make_keep(keep_mode, batch, num_classes)
    args = (logits, drop_logits, target, keep)
    options = {"progress": 0.3, "ignore_index": ignore_index, "align_corners": align_corners}
    (got, got_parts), got_grads = run_op("dropclass_loss", "triton", *args, **options)
    (want, want_parts), want_grads = run_op("dropclass_loss", "reference", *args, **options)
    for name in ("ce", "ce_drop", "sup"):
        torch.testing.assert_close(got_parts[name], want_parts[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert_grad_close(g, w.to(dtype), HALF_RTOL.get(dtype, 1e-5))


def test_dropclass_loss_backward_through_one_part():
    """Each part has its own gradient: backward through ``sup`` alone gives the gradient of ``alpha * L_sup``."""
    logits = make_logits(2, 5, (7, 9))
    drop_logits = make_logits(2, 5, (7, 9)).requires_grad_()
    target = make_target(2, 5, (20, 30))
    keep = make_keep("batch", 2, 5)
    with dropclass_fast.set_backend("triton"):
        _, parts = dcf.dropclass_loss(logits, drop_logits, target, keep, 0.3)
    (got,) = torch.autograd.grad(parts["sup"], drop_logits)
    (want,) = torch.autograd.grad(10.0 * reference.dropped_class_prob(drop_logits, keep), drop_logits)
    assert_grad_close(got, want)


@pytest.mark.parametrize("bad_label", [5, -3, 254])
def test_label_out_of_range_is_a_value_error(bad_label):
    logits = make_logits(2, 5, (4, 4))
    target = make_target(2, 5, (11, 13))
    target[1, 3, 4] = bad_label
    with dropclass_fast.set_backend("triton"):
        with pytest.raises(ValueError, match=rf"target contains label {bad_label} outside \[0, 5\)"):
            dcf.seg_cross_entropy(logits, target)
        with pytest.raises(ValueError, match=rf"target contains label {bad_label} outside \[0, 5\)"):
            dcf.dropclass_loss(logits, logits, target, torch.ones(5, device=DEVICE), 0.5)


@pytest.mark.parametrize(
    "keep, pattern",
    [
        ([1.0, 0.5, 1.0, 1.0, 1.0], "keep must contain only 0 and 1 values, got 0.5"),
        ([0.0, 0.0, 0.0, 0.0, 0.0], "keep drops every class"),
    ],
)
def test_bad_keep_is_a_value_error(keep, pattern):
    keep = torch.tensor(keep, device=DEVICE)
    logits = make_logits(2, 5, (4, 4))
    target = make_target(2, 5, (8, 8))
    with dropclass_fast.set_backend("triton"):
        for call in (
            lambda: dcf.seg_cross_entropy(logits, target, keep),
            lambda: dcf.dropped_class_prob(logits, keep),
            lambda: dcf.channel_mask(torch.randn(2, 3, 4, 4, device=DEVICE), torch.randn(5, 3, device=DEVICE), keep),
            lambda: dcf.dropclass_loss(logits, logits, target, keep, 0.5),
        ):
            with pytest.raises(ValueError, match=pattern):
                call()


def test_deterministic_mode_is_bit_identical():
    logits = make_logits(2, 5, (7, 9))
    drop_logits = make_logits(2, 5, (7, 9))
    target = make_target(2, 5, (20, 30))
    keep = make_keep("sample", 2, 5)
    features = make_logits(2, 6, (5, 7))
    weight = torch.randn(5, 6, device=DEVICE)
    results = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (logits, drop_logits, features, weight)]
        with dropclass_fast.set_backend("triton", deterministic=True):
            total, _ = dcf.dropclass_loss(leaves[0], leaves[1], target, keep, 0.4)
            total = total + dcf.channel_mask(leaves[2], leaves[3], keep).square().mean()
        total.backward()
        results.append([total, *(x.grad for x in leaves)])
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize(
    "num_classes, sizes, expected",
    [
        # the paper's shapes (BLOCK_K=32): every candidate's tile fits, the default first
        (
            19,
            (128, 256, 512, 1024),
            [(64, 8, 8), (128, 8, 8), (32, 8, 4), (64, 4, 4), (64, 8, 4), (256, 8, 8), (16, 8, 4)],
        ),
        (150, (128, 256, 512, 1024), [(32, 8, 4), (16, 8, 4)]),  # ADE20K: BLOCK_K=256 leaves 32 and 16 columns
        (600, (16, 32, 64, 128), [(16, 8, 4)]),  # no tile fits: the narrowest window alone
        (600, (4, 4, 16, 160), [(128, 8, 8)]),  # ... that holds a stencil (x40 upsampling)
        (5, (1, 1, 4, 300), [(512, 8, 8)]),  # a stencil wider than every candidate: the widest window
    ],
)
def test_cross_entropy_candidates_respect_the_register_tile(num_classes, sizes, expected):
    """Measuring and deterministic mode (the first candidate) choose among launch configurations whose register
    tile BLOCK_K * TX stays within MAX_TILE_ELEMENTS where any does: at K=150 the default (64, 8, 8) would spill
    17 KB per thread on sm_90 against 4.7 KB for (32, 8, 4) (ptxas -v)."""
    from dropclass_fast.triton import seg_cross_entropy as kernel

    found = [config for config, _ in kernel._feasible((num_classes, *sizes), False)]
    assert found == expected


@pytest.mark.parametrize(
    "num_classes, sizes, refused",
    [
        (5, (1, 1, 4, 300), False),  # the widest window (512 columns) holds the stencil
        (19, (1, 1, 4, 300), True),  # ... but only up to 16 classes (192 KiB of shared memory at 32: over an A100's)
        (5, (1, 1, 4, 600), True),  # a stencil wider than 512 columns
    ],
)
def test_unsupported_upsampling(num_classes, sizes, refused):
    from dropclass_fast.triton import seg_cross_entropy as kernel

    h, w, out_h, out_w = sizes
    reason = kernel.unsupported_upsampling((2, num_classes, h, w), (2, out_h, out_w), False)
    assert (reason is not None) == refused
    if refused:
        assert reason.startswith(f"upsampling {w} logit columns to {out_w} label columns with K={num_classes}")
        with pytest.raises(ValueError, match=re.escape(reason)):
            kernel._feasible((num_classes, *sizes), False)


def test_upsampling_past_the_widest_window_is_refused_by_triton_and_left_to_others_under_auto(monkeypatch):
    """1 logit column to 600 label columns: no Triton window holds the stencil. Backend "triton" says so; "auto"
    (which picks Triton on a GPU) runs the CUDA kernels, or (as here, without them) the eager reference. In
    dropclass_loss either logits may be the one: drop_logits keep the classifier's resolution."""
    narrow = make_logits(2, 5, (3, 1))
    full = make_logits(2, 5, (4, 600))
    target = make_target(2, 5, (4, 600))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], device=DEVICE)
    message = r"backend 'triton' cannot run this call: upsampling 1 logit columns to 600 label columns with K=5"
    with dropclass_fast.set_backend("triton"):
        with pytest.raises(ValueError, match=message):
            dcf.seg_cross_entropy(narrow, target, keep)
        for logits, drop_logits in ((narrow, narrow), (full, narrow)):
            with pytest.raises(ValueError, match=message):
                dcf.dropclass_loss(logits, drop_logits, target, keep, progress=0.5)
    monkeypatch.setattr(dropclass_fast._backend, "resolve", lambda device_type, op="": "triton")  # auto on a GPU
    expected = reference.seg_cross_entropy(narrow, target, keep)
    torch.testing.assert_close(dcf.seg_cross_entropy(narrow, target, keep), expected)
    for logits, drop_logits in ((narrow, narrow), (full, narrow)):
        total, _ = dcf.dropclass_loss(logits, drop_logits, target, keep, progress=0.5)
        expected, _ = reference.dropclass_loss(logits, drop_logits, target, keep, 0.5)
        torch.testing.assert_close(total, expected)
    # compiled, the choice is not made while tracing: the Triton op itself says why it cannot run
    compiled = torch.compile(dcf.seg_cross_entropy, fullgraph=True, backend="eager")
    with pytest.raises(ValueError, match="upsampling 1 logit columns to 600 label columns with K=5"):
        compiled(narrow, target, keep)


# Each kernel's launch candidates (its CANDIDATES, written out: a candidate dropped there must be dropped here).
CANDIDATE_COUNTS = {"seg_cross_entropy": 7, "dropped_class_prob": 4, "channel_mask": 4}


@pytest.mark.parametrize("index", range(max(CANDIDATE_COUNTS.values())))
def test_every_launch_candidate_matches_the_reference(monkeypatch, index):
    """The interpreter (and deterministic mode) launch the first candidate; measuring on a GPU may keep any other.
    Here the ``index``-th of each kernel's candidates (its last where it has fewer) runs each op at a size where
    every candidate is feasible and spans several row bands and column tiles, with per-sample keep, against the
    reference."""
    from dropclass_fast.triton import _tuning

    picked = []  # (kernel, number of candidates, position launched)

    def pick_at_index(key, candidates, run, deterministic):
        position = min(index, len(candidates) - 1)
        picked.append((key[0], len(candidates), position))
        return candidates[position]

    monkeypatch.setattr(_tuning, "pick", pick_at_index)
    # 2 or 3 row bands; 1 to 5 column tiles; 2.3x upsampling, so that the 16-column window holds every stencil
    batch, num_classes, low, high = 2, 3, (9, 30), (20, 70)
    logits = make_logits(batch, num_classes, low)
    drop_logits = make_logits(batch, num_classes, low, channels_last=True)
    target = make_target(batch, num_classes, high)
    keep = make_keep("sample", batch, num_classes)
    for op, args in (
        ("seg_cross_entropy", (logits, target, keep)),
        ("dropped_class_prob", (logits, keep)),
        ("dropclass_loss", (logits, drop_logits, target, keep, 0.3)),
    ):
        got, got_grads = run_op(op, "triton", *args)
        want, want_grads = run_op(op, "reference", *args)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for got_grad, want_grad in zip(got_grads, want_grads):
            assert_grad_close(got_grad, want_grad)
    features = make_logits(batch, 40, (9, 11))
    weight = torch.randn(num_classes, 40, device=DEVICE)
    upstream = torch.randn(features.shape, device=DEVICE)
    outputs = {}
    for backend in ("triton", "reference"):
        leaves = [features.clone().requires_grad_(), weight.clone().requires_grad_()]
        with dropclass_fast.set_backend("triton"):
            out = (dcf if backend == "triton" else reference).channel_mask(*leaves, keep)
        (out * upstream).sum().backward()
        outputs[backend] = (out.detach(), *(leaf.grad for leaf in leaves))
    torch.testing.assert_close(outputs["triton"][0], outputs["reference"][0], rtol=1e-5, atol=1e-6)
    for got_grad, want_grad in zip(outputs["triton"][1:], outputs["reference"][1:]):
        assert_grad_close(got_grad, want_grad)
    assert {name for name, _, _ in picked} == set(CANDIDATE_COUNTS), picked
    assert all(count == CANDIDATE_COUNTS[name] for name, count, _ in picked), picked  # every candidate is feasible


def test_tuning_leaves_out_candidates_the_gpu_cannot_launch(monkeypatch):
    """Measuring skips a candidate that raises OutOfResources (seen at compile time: TX=256 needs 320 KiB of shared
    memory at the Cityscapes shape on sm_90) and raises only when none launches."""
    from triton.runtime.errors import OutOfResources

    from dropclass_fast.triton import _tuning

    monkeypatch.setattr(_tuning, "INTERPRET", False)
    monkeypatch.setattr(_tuning, "_chosen", {})
    milliseconds = {"slow": 2.0, "fast": 1.0}
    launched = []

    def run(config: str) -> None:
        launched.append(config)
        if config == "huge":
            raise OutOfResources(327680, 232448, "shared memory")

    def do_bench(fn, warmup, rep):
        fn()
        return milliseconds[launched[-1]]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert _tuning.pick("case", ["slow", "huge", "fast"], run, deterministic=False) == "fast"
    assert _tuning.pick("case", ["slow", "huge", "fast"], run, deterministic=True) == "slow"
    # deterministic mode: the first candidate that launches, kept for the key
    launched.clear()
    assert _tuning.pick("first too big", ["huge", "fast", "slow"], run, deterministic=True) == "fast"
    assert _tuning.pick("first too big", ["huge", "fast", "slow"], run, deterministic=True) == "fast"
    assert launched == ["huge", "fast"]
    for deterministic in (False, True):
        with pytest.raises(OutOfResources):
            _tuning.pick("too big", ["huge", "huge"], run, deterministic=deterministic)


def test_triton_ops_make_their_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device: each op enters its first tensor's device (cuda:1 tensors while
    cuda:0 is current must not launch on cuda:0)."""
    from dropclass_fast.triton import _common
    from dropclass_fast.triton import ops as triton_ops

    entered = []

    class RecordingDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc_info):
            return False

    class CudaTensorStandIn:
        is_cuda = True
        device = "cuda:1"

    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    op = _common.on_tensor_device(lambda tensor, value: (value, list(entered)))
    assert op(CudaTensorStandIn(), 3) == (3, ["cuda:1"])
    entered.clear()
    assert op(torch.ones(1), 4) == (4, [])
    wrapped = ["_channel_mask", "_channel_mask_backward", "_scaled_sum", "_seg_cross_entropy", "_dropped_class_prob",
               "_dropclass_loss"]  # fmt: skip
    for name in wrapped:
        wrapper = getattr(triton_ops, name)._init_fn
        assert wrapper.__code__ is op.__code__ and wrapper.__wrapped__.__name__ == name, name


def test_float64_runs_on_the_reference():
    logits = make_logits(2, 4, (5, 5)).double()
    target = make_target(2, 4, (9, 9))
    with dropclass_fast.set_backend("triton"):
        got = dcf.seg_cross_entropy(logits, target)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference.seg_cross_entropy(logits, target))


COMPILE_FOR_GPU = r"""
import os
import sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dropclass_fast.triton import _common, channel_mask, dropped_class_prob, seg_cross_entropy

ARCH = int(sys.argv[1])
INT32_TABLES = ("row_i0_ptr", "row_i1_ptr", "col_i0_ptr", "col_i1_ptr", "bands_ptr", "tiles_ptr")
POINTERS = {"target_ptr": "*i64", "bad_ptr": "*i64", "count_part_ptr": "*i32", "logits_ptr": "*bf16",
            "in_ptr": "*fp16", "out_ptr": "*fp16", "grad_features_ptr": "*bf16"}
SEG_CE = {"BLOCK_K": 32, "TX": 64, "SX": 32, "PRECISION": "tf32x3"}
# (kernel, constexprs, pointer types other than POINTERS'): every constexpr branch the ops launch (the cross-entropy
# pass: with or without keep and gradient, L_sup only with keep), and each logits and label dtype once, with no
# run-time specialisation; then RUN_TIME_VARIANTS.
VARIANTS = [
    (_common._scale_kernel, {"HAS_Y": True, "BLOCK": 1024}, {}),
    (_common._scale_kernel, {"HAS_Y": False, "BLOCK": 1024}, {"out_ptr": "*bf16"}),
    *[(seg_cross_entropy._seg_cross_entropy_kernel,
       {"HAS_KEEP": keep, "COMPUTE_GRAD": grad, "SUP": sup, **SEG_CE}, {})
      for keep, grad, sup in [(False, False, False), (False, True, False), (True, False, False), (True, True, False),
                              (True, False, True), (True, True, True)]],
    (seg_cross_entropy._seg_cross_entropy_kernel, {"HAS_KEEP": True, "COMPUTE_GRAD": True, "SUP": True, **SEG_CE},
     {"logits_ptr": "*fp32", "target_ptr": "*u8"}),
    (seg_cross_entropy._seg_cross_entropy_kernel, {"HAS_KEEP": False, "COMPUTE_GRAD": True, "SUP": False, **SEG_CE},
     {"logits_ptr": "*fp16", "target_ptr": "*i32"}),
    # the narrowest window at 16x downsampling (K=19): a 256-column source span
    (seg_cross_entropy._seg_cross_entropy_kernel,
     {"HAS_KEEP": True, "COMPUTE_GRAD": True, "SUP": False, **SEG_CE, "TX": 16, "SX": 256}, {}),
    (dropped_class_prob._dropped_class_prob_kernel, {"COMPUTE_GRAD": True, "BLOCK_K": 32, "BLOCK_P": 128}, {}),
    (dropped_class_prob._dropped_class_prob_kernel, {"COMPUTE_GRAD": False, "BLOCK_K": 32, "BLOCK_P": 128},
     {"logits_ptr": "*fp32"}),
    (channel_mask._importance_kernel, {"BLOCK_K": 32, "BLOCK_C": 32}, {}),
    (channel_mask._scale_kernel, {"BLOCK_C": 32, "BLOCK_P": 128}, {}),
    (channel_mask._scale_kernel, {"BLOCK_C": 32, "BLOCK_P": 128}, {"in_ptr": "*fp32", "out_ptr": "*fp32"}),
    (channel_mask._backward_kernel, {"BLOCK_C": 32, "BLOCK_P": 256}, {}),
    (channel_mask._weight_grad_kernel, {"BLOCK_K": 32, "BLOCK_C": 32}, {}),
]
# The kernels as the GPU launches them: Triton makes an integer argument equal to 1 a constant ("ones": unit strides
# of contiguous and channels_last tensors, a 1x1 classifier's T=1, one sample, a 1x1 source) and marks 16-byte-aligned
# pointers and integers divisible by 16 (aligned: every pointer and every other integer here), which switches on
# vectorised loads and stores. (kernel, constexprs, pointer types, ones, aligned).
SEG_CE_ALL = {"HAS_KEEP": True, "COMPUTE_GRAD": True, "SUP": True, **SEG_CE}
NCHW_SEG_CE = ("stride_lx", "stride_tx", "stride_gx")
RUN_TIME_VARIANTS = [
    (_common._scale_kernel, {"HAS_Y": True, "BLOCK": 1024}, {}, (), True),
    (seg_cross_entropy._seg_cross_entropy_kernel, SEG_CE_ALL, {}, NCHW_SEG_CE, True),
    (seg_cross_entropy._seg_cross_entropy_kernel, {"HAS_KEEP": False, "COMPUTE_GRAD": True, "SUP": False, **SEG_CE},
     {"logits_ptr": "*fp32"}, ("stride_lk", "stride_gk", "stride_tx"), True),
    (seg_cross_entropy._seg_cross_entropy_kernel, SEG_CE_ALL, {}, ("h", "w", *NCHW_SEG_CE), False),
    (dropped_class_prob._dropped_class_prob_kernel, {"COMPUTE_GRAD": True, "BLOCK_K": 32, "BLOCK_P": 128}, {},
     ("stride_x", "stride_gx"), True),
    (dropped_class_prob._dropped_class_prob_kernel, {"COMPUTE_GRAD": True, "BLOCK_K": 32, "BLOCK_P": 128}, {},
     ("stride_k", "stride_gk"), True),
    (channel_mask._importance_kernel, {"BLOCK_K": 32, "BLOCK_C": 32}, {}, ("T",), True),
    (channel_mask._weight_grad_kernel, {"BLOCK_K": 32, "BLOCK_C": 32}, {}, ("T",), True),
    (channel_mask._weight_grad_kernel, {"BLOCK_K": 32, "BLOCK_C": 32}, {}, ("T", "B", "n_blocks"), False),
    *[(kernel, blocks, {}, (unit,), True)
      for kernel, blocks in [(channel_mask._scale_kernel, {"BLOCK_C": 32, "BLOCK_P": 128}),
                             (channel_mask._backward_kernel, {"BLOCK_C": 32, "BLOCK_P": 256})]
      for unit in ("stride_p", "stride_c")],
]
for kernel, constexprs, pointers, ones, aligned in [(*v, (), False) for v in VARIANTS] + RUN_TIME_VARIANTS:
    constants = {**constexprs, **dict.fromkeys(ones, 1)}
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            signature[name] = "*i32" if name in INT32_TABLES else {**POINTERS, **pointers}.get(name, "*fp32")
        else:
            signature[name] = "i64" if name in ("n", "ignore_index") else "i32"
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    indices = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=indices, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", ARCH, 32), options={"num_warps": 4})
    print("compiled", kernel.__name__, constexprs, pointers, ones, aligned, "shared", compiled.metadata.shared,
          flush=True)
print("variants", len(VARIANTS) + len(RUN_TIME_VARIANTS))
"""


def test_kernels_compile_for_sm80_and_sm90():
    """Every kernel, in every constexpr branch the ops launch and with the run-time specialisations of the usual
    launches (unit strides, T=1, aligned pointers), goes through Triton's GPU pipeline and ptxas for an A100 and an
    H100 (no GPU needed): the interpreter accepts code the compiler rejects (types of loop-carried values, dot
    shapes)."""
    import subprocess
    import sys

    runs = [
        subprocess.Popen([sys.executable, "-c", COMPILE_FOR_GPU, arch], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for arch in ("80", "90")
    ]  # fmt: skip
    for arch, run in zip(("sm_80", "sm_90"), runs):
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, f"{arch}: {stderr[-4000:]}"
        variants = int(stdout.split("variants ")[-1])
        assert variants >= 31 and stdout.count("compiled") == variants, f"{arch}: {stdout[-2000:]}"
        # 16x downsampling must have a window that launches on every sm_80+ GPU (99 KiB of shared memory on
        # sm_86/sm_89, 163 KiB on an A100); the 32-column window needs 192 KiB there.
        narrow = next(line for line in stdout.splitlines() if "'TX': 16" in line)
        assert int(narrow.split("shared ")[-1]) <= 99 * 1024, f"{arch}: {narrow}"


def _record_triton_picks(monkeypatch) -> list[bool]:
    from dropclass_fast.triton import _tuning

    seen: list[bool] = []
    pick = _tuning.pick

    def recording(key, candidates, run, deterministic):
        seen.append(deterministic)
        return pick(key, candidates, run, deterministic)

    monkeypatch.setattr(_tuning, "pick", recording)
    return seen


@NEEDS_TRITON_ON_CPU
@pytest.mark.parametrize("how", ["set_backend", "torch"])
def test_every_triton_op_gets_the_deterministic_flag(monkeypatch, how):
    seen = _record_triton_picks(monkeypatch)
    calls = tiny_op_calls().values()
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


@NEEDS_TRITON_ON_CPU
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


@NEEDS_TRITON_ON_CPU
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


@NEEDS_TRITON_ON_CPU
def test_a_triton_refusal_under_auto_without_cuda_kernels_runs_the_reference(monkeypatch):
    """Where auto picked Triton and Triton cannot take the upsampling, no CUDA kernels: the eager reference, not the
    compiled ``_ops`` (which on a GPU without the CUDA build raise). In ``dropclass_loss`` only the upsampled terms
    are refused: ``L_sup`` at the logits' resolution still runs on Triton."""
    narrow = torch.randn(2, 5, 3, 1)
    target = op_inputs.make_target(2, 5, (4, 600))
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
