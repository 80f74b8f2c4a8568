"""Every kernel backend reads only its inputs' own elements: the inputs are views into storage padded on both sides
with NaN (floating tensors) or an out-of-range label (labels), and each op must give exactly the values and
gradients it gives for the same inputs in storage of their own.

This stands in for compute-sanitizer's memcheck where no sanitizer reaches (the Triton interpreter, the C++ kernels
inside torch): a load past a tensor's end or before its start, or a tail mask that lets a lane through, reads the
padding and shows as NaN or as a bad-label error, even where the value read is multiplied by a zero weight. The
emulated CUDA kernels run under AddressSanitizer in tests/test_cuda_build.py; on a GPU this file checks them too.

The last tests address labels and logits past element 2**31 (known answers), where an offset computed in 32 bits
wraps.
"""

from __future__ import annotations

import math

import pytest
import torch

import dropclass_fast
from dropclass_fast import _backend
from dropclass_fast import functional as dcf

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAD = 64  # elements each side; a multiple of 16 bytes for every dtype, so the vectorised paths still run
OUTSIDE_LABEL = 100  # not in [0, K) and not the ignore index
B, K, C = 2, 5, 6
LOW, HIGH = (7, 9), (20, 30)  # non-integer upsampling factors, sizes that are multiples of no block size
# (logits h x w, labels H x W): LOW -> HIGH, whose one row band is cut short by the logits' end, and h = 16, a
# multiple of every band and tile height (Triton's 4 and 8 rows, the CUDA kernel's 8), so that its several bands are
# all full and no tail mask stands between a read of row h and the padding.
SIZES = pytest.mark.parametrize(("low", "high"), [(LOW, HIGH), ((16, 3), (33, 7))], ids=["7x9to20x30", "16x3to33x7"])


def _unavailable(name: str) -> str | None:
    if name == "cpp":
        return None if DEVICE == "cpu" else "the C++ kernels run on CPU tensors"
    if name == "triton":
        return _backend._triton_unavailable(DEVICE)
    return _backend._cuda_unavailable(DEVICE)


@pytest.fixture(
    params=[
        "cpp",
        pytest.param("triton", marks=[pytest.mark.gpu] if DEVICE == "cuda" else []),
        pytest.param("cuda", marks=pytest.mark.gpu),
    ]
)
def backend(request, cpp_backend):
    reason = _unavailable(request.param)
    if reason is not None:
        pytest.skip(reason)
    with dropclass_fast.set_backend(request.param, deterministic=True):
        yield request.param


def padded(tensor: torch.Tensor, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(view, storage)``: ``tensor``'s values and strides in a view ``PAD`` elements into ``storage``, a 1-D
    tensor that holds NaN (labels: ``OUTSIDE_LABEL``) in the ``PAD`` elements before and after the view. When
    ``differentiable``, ``storage`` is a leaf that requires grad: the view's gradient is ``storage.grad`` seen
    through the view's strides."""
    fill = float("nan") if tensor.is_floating_point() else OUTSIDE_LABEL
    storage = torch.full((tensor.numel() + 2 * PAD,), fill, dtype=tensor.dtype, device=tensor.device)
    storage.as_strided(tensor.shape, tensor.stride(), PAD).copy_(tensor)
    storage.requires_grad_(differentiable)
    return storage.as_strided(tensor.shape, tensor.stride(), PAD), storage


def own_storage(tensor: torch.Tensor, differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, leaf)``: a copy of ``tensor`` with its strides, requiring grad when ``differentiable``."""
    copy = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)
    copy.copy_(tensor)
    return copy.requires_grad_(differentiable), copy


def run(op, inputs: list[tuple[torch.Tensor, bool]], place) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``op``'s outputs, and the gradients of its differentiable inputs (``inputs`` pairs each tensor with that)
    of its first output's sum, with every input placed by ``place`` (``padded`` or ``own_storage``)."""
    placed = [place(tensor, differentiable) for tensor, differentiable in inputs]
    result = op(*[view for view, _ in placed])
    if isinstance(result, torch.Tensor):
        outputs = [result]
    else:  # dropclass_loss: (total, {"ce", "ce_drop", "sup"})
        total, parts = result
        outputs = [total, *parts.values()]
    outputs[0].float().sum().backward()
    grads = [
        storage.grad.as_strided(view.shape, view.stride(), view.storage_offset())
        for view, storage in placed
        if storage.requires_grad
    ]
    return outputs, grads


def assert_same_and_finite(op, inputs: list[tuple[torch.Tensor, bool]]) -> None:
    got_outputs, got_grads = run(op, inputs, padded)
    want_outputs, want_grads = run(op, inputs, own_storage)
    assert len(got_grads) == len(want_grads) > 0
    for got, want in zip([*got_outputs, *got_grads], [*want_outputs, *want_grads]):
        assert torch.isfinite(got.float()).all(), "the op read the NaN padding around an input"
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def logits(dtype: torch.dtype, channels_last: bool, size: tuple[int, int] = LOW) -> torch.Tensor:
    value = (torch.randn(B, K, *size, device=DEVICE) * 3).to(dtype)
    return value.contiguous(memory_format=torch.channels_last) if channels_last else value


def target(size: tuple[int, int] = HIGH) -> torch.Tensor:
    labels = torch.randint(0, K, (B, *size), device=DEVICE)
    labels[torch.rand(B, *size, device=DEVICE) < 0.1] = 255
    return labels


def keep(per_sample: bool) -> torch.Tensor:
    rows = torch.ones(B, K, device=DEVICE)
    rows[0, 1] = rows[1, 3] = 0
    return rows if per_sample else rows[0]


LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)


@LAYOUTS
@DTYPES
@SIZES
@pytest.mark.parametrize("align_corners", [False, True])
def test_seg_cross_entropy(backend, dtype, channels_last, low, high, align_corners):
    assert_same_and_finite(
        lambda x, y, k: dcf.seg_cross_entropy(x, y, k, align_corners=align_corners),
        [(logits(dtype, channels_last, low), True), (target(high), False), (keep(per_sample=True), False)],
    )


@LAYOUTS
@DTYPES
def test_dropped_class_prob(backend, dtype, channels_last):
    assert_same_and_finite(
        dcf.dropped_class_prob, [(logits(dtype, channels_last), True), (keep(per_sample=True), False)]
    )


@LAYOUTS
@DTYPES
@pytest.mark.parametrize("per_sample", [False, True], ids=["batch_keep", "sample_keep"])
def test_dropclass_loss(backend, dtype, channels_last, per_sample):
    assert_same_and_finite(
        lambda x, x_drop, y, k: dcf.dropclass_loss(x, x_drop, y, k, progress=0.5),
        [
            (logits(dtype, channels_last), True),
            (logits(dtype, channels_last), True),
            (target(), False),
            (keep(per_sample), False),
        ],
    )


@LAYOUTS
@DTYPES
def test_channel_mask(backend, dtype, channels_last):
    features = torch.randn(B, C, 5, 7, device=DEVICE).to(dtype)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(K, C, device=DEVICE).to(dtype)
    assert_same_and_finite(dcf.channel_mask, [(features, True), (weight, True), (keep(per_sample=True), False)])


def _skip_where_too_large(backend: str) -> None:
    if backend == "triton" and DEVICE == "cpu":
        pytest.skip("2**31 elements are too many for the Triton interpreter (test_triton.py checks int64 row offsets)")


@pytest.fixture
def _gives_back_gpu_memory():
    """Empties torch's CUDA cache after a test past 2**31 elements: its worker would otherwise keep up to 18 GiB
    reserved while other pytest-xdist workers share the GPU."""
    yield
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# The tests past 2**31 elements run on one pytest-xdist worker (``--dist loadgroup``), one after another.
@pytest.mark.xdist_group("past_2_31")
@pytest.mark.usefixtures("_gives_back_gpu_memory")
def test_seg_cross_entropy_labels_past_2_31_elements(backend):
    """2**31 + 2**16 uint8 labels (2 GiB), all ignored but the last row, which lies past element 2**31: an index
    computed in 32 bits wraps to a negative offset there and reads before the labels (a wrong label, or a fault)
    instead of the last row's. Known answer: every pixel sees the logits (0, 1) upsampled
    from constants, so the loss is softplus(1) - 1 and each class's gradient sums to +-sigmoid(-1), all of it on
    the last logits row."""
    _skip_where_too_large(backend)
    target = torch.full((1, 32769, 65536), 255, dtype=torch.uint8, device=DEVICE)
    target[0, -1] = 1
    logits = torch.tensor([0.0, 1.0], device=DEVICE).view(1, 2, 1, 1).expand(1, 2, 512, 1024).contiguous()
    logits.requires_grad_()
    loss = dcf.seg_cross_entropy(logits, target)
    loss.backward()
    p0 = torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64)).item()
    torch.testing.assert_close(loss.item(), math.log1p(math.e) - 1, rtol=1e-5, atol=0)
    torch.testing.assert_close(logits.grad[0].sum((1, 2)).tolist(), [p0, -p0], rtol=1e-4, atol=0)
    assert logits.grad[:, :, :-1].count_nonzero() == 0


@pytest.mark.gpu
@pytest.mark.xdist_group("past_2_31")
@pytest.mark.usefixtures("_gives_back_gpu_memory")
def test_seg_cross_entropy_logits_past_2_31_elements(backend):
    """bfloat16 logits of 2 x 32769 x 32768 = 2**31 + 2**16 elements (4 GiB; its float32 gradient does not fit a CI
    machine's memory, so CUDA only), labels at their resolution, all ignored but the last row. Class 1's last row
    starts past element 2**31 and holds 3 where every other class-1 logit holds 1: an offset wrapped to a negative
    value reads before the logits instead of the 3s, so the loss misses the known softplus(-3), and the gradient
    lands on the wrong row."""
    _skip_where_too_large(backend)
    if DEVICE == "cpu":
        pytest.skip("needs about 16 GiB of memory: run on CUDA")
    height, width = 32769, 32768
    logits = torch.zeros(1, 2, height, width, dtype=torch.bfloat16, device=DEVICE)
    logits[0, 1] = 1.0
    logits[0, 1, -1] = 3.0
    logits.requires_grad_()
    target = torch.full((1, height, width), 255, dtype=torch.uint8, device=DEVICE)
    target[0, -1] = 1
    loss = dcf.seg_cross_entropy(logits, target)
    loss.backward()
    p0 = torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64)).item()
    torch.testing.assert_close(loss.item(), math.log1p(math.exp(-3.0)), rtol=1e-5, atol=0)
    last_row = torch.tensor([[p0], [-p0]], device=DEVICE).expand(2, width) / width
    torch.testing.assert_close(logits.grad[0, :, -1].float(), last_row.float(), rtol=1e-2, atol=0)
    assert logits.grad[:, :, :-1].count_nonzero() == 0
