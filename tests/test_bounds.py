"""Every kernel backend reads only its inputs' own elements: the inputs are views into storage padded on both sides
with NaN (floating tensors) or an out-of-range label (labels), and each op must give exactly the values and
gradients it gives for the same inputs in storage of their own.

This stands in for compute-sanitizer's memcheck where no sanitizer reaches (the Triton interpreter, the C++ kernels
inside torch): a load past a tensor's end or before its start, or a tail mask that lets a lane through, reads the
padding and shows as NaN or as a bad-label error, even where the value read is multiplied by a zero weight. The
emulated CUDA kernels run under AddressSanitizer in tests/test_cuda_build.py; on a GPU this file checks them too.
"""

from __future__ import annotations

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


def logits(dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    value = (torch.randn(B, K, *LOW, device=DEVICE) * 3).to(dtype)
    return value.contiguous(memory_format=torch.channels_last) if channels_last else value


def target() -> torch.Tensor:
    labels = torch.randint(0, K, (B, *HIGH), device=DEVICE)
    labels[torch.rand(B, *HIGH, device=DEVICE) < 0.1] = 255
    return labels


def keep(per_sample: bool) -> torch.Tensor:
    rows = torch.ones(B, K, device=DEVICE)
    rows[0, 1] = rows[1, 3] = 0
    return rows if per_sample else rows[0]


LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)


@LAYOUTS
@DTYPES
@pytest.mark.parametrize("align_corners", [False, True])
def test_seg_cross_entropy(backend, dtype, channels_last, align_corners):
    assert_same_and_finite(
        lambda x, y, k: dcf.seg_cross_entropy(x, y, k, align_corners=align_corners),
        [(logits(dtype, channels_last), True), (target(), False), (keep(per_sample=True), False)],
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
