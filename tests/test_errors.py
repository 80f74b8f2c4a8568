"""Bad input raises a ValueError/TypeError that names the argument and the value, on every backend."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from backends import CPU_BACKENDS
from torch import nn

import dropclass_fast
from dropclass_fast import DropClass, DropClassLoss, DropClassOutput
from dropclass_fast import functional as dcf


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, cpp_backend):
    with dropclass_fast.set_backend(request.param):
        yield request.param


def seg_inputs(num_classes=5):
    return torch.randn(2, num_classes, 4, 4), torch.randint(0, num_classes, (2, 16, 16))


@pytest.mark.parametrize("bad_label", [5, 7, -3, 254])
def test_label_out_of_range(backend, bad_label):
    logits, target = seg_inputs()
    target[1, 3, 4] = bad_label
    with pytest.raises(ValueError, match=rf"target contains label {bad_label} outside \[0, 5\)"):
        dcf.seg_cross_entropy(logits, target)


@pytest.mark.parametrize("with_keep", [False, True], ids=["no_keep", "keep"])
@pytest.mark.parametrize(
    "label_dtype, bad_label, ignore_index",
    [(torch.uint8, 156, -100), (torch.uint8, 255, -1), (torch.int8, -1, 255)],
)
def test_ignore_index_outside_the_label_dtype_does_not_wrap(backend, with_keep, label_dtype, bad_label, ignore_index):
    """``ignore_index`` cast to the label dtype would equal ``bad_label`` (-100 is 156 as uint8): still an error."""
    logits, target = seg_inputs()
    target[1, 3, 4] = bad_label
    keep = torch.ones(5) if with_keep else None
    with pytest.raises(ValueError, match=rf"target contains label {bad_label} outside \[0, 5\)"):
        dcf.seg_cross_entropy(logits, target.to(label_dtype), keep, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=rf"target contains label {bad_label} outside \[0, 5\)"):
        dcf.dropclass_loss(logits, logits, target.to(label_dtype), torch.ones(5), 0.5, ignore_index=ignore_index)


@pytest.mark.parametrize(
    "name, value, pattern",
    [
        ("ignore_index", True, "ignore_index must be an integer, got True"),
        ("ignore_index", 255.5, "ignore_index must be an integer, got 255.5"),
        ("ignore_index", None, "ignore_index must be an integer, got None"),
        ("align_corners", "no", "align_corners must be a bool, got 'no'"),
        ("align_corners", 1, "align_corners must be a bool, got 1"),
    ],
)
def test_bad_ignore_index_or_align_corners(backend, name, value, pattern):
    logits, target = seg_inputs()
    with pytest.raises(TypeError, match=pattern):
        dcf.seg_cross_entropy(logits, target, **{name: value})
    with pytest.raises(TypeError, match=pattern):
        dcf.dropclass_loss(logits, logits, target, torch.ones(5), 0.5, **{name: value})
    with pytest.raises(TypeError, match=pattern):
        DropClassLoss(**{name: value})


@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1, 2**70])
def test_ignore_index_beyond_int64(backend, ignore_index):
    logits, target = seg_inputs()
    pattern = f"ignore_index must fit in int64, got {ignore_index}"
    with pytest.raises(ValueError, match=pattern):
        dcf.seg_cross_entropy(logits, target, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=pattern):
        dcf.dropclass_loss(logits, logits, target, torch.ones(5), 0.5, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=pattern):
        DropClassLoss(ignore_index=ignore_index)
    edge = dcf.seg_cross_entropy(logits, target, ignore_index=2**63 - 1)
    torch.testing.assert_close(edge, _mean_ce_without(logits, target, -100))


def _mean_ce_without(logits: torch.Tensor, target: torch.Tensor, ignored: int) -> torch.Tensor:
    """The known answer: upsampled cross-entropy averaged over the pixels whose label is not ``ignored``."""
    up = torch.nn.functional.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return torch.nn.functional.cross_entropy(up, target.long(), ignore_index=ignored)


def test_numpy_integer_ignore_index(backend):
    logits, target = seg_inputs()
    target[0, 0, 0] = 7
    got = dcf.seg_cross_entropy(logits, target, ignore_index=np.int64(7))
    torch.testing.assert_close(got, _mean_ce_without(logits, target, 7), rtol=1e-5, atol=1e-6)


def test_ignore_index_is_not_an_error(backend):
    logits, target = seg_inputs()
    target[0, 0, 0] = -1
    got = dcf.seg_cross_entropy(logits, target, ignore_index=-1)
    torch.testing.assert_close(got, _mean_ce_without(logits, target, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "target, error, pattern",
    [
        (torch.rand(2, 16, 16), TypeError, r"target must be an integer tensor \(uint8, int8, int16, int32 or int64\), "
         "got dtype torch.float32"),
        (torch.zeros(2, 16, 16, dtype=torch.bool), TypeError, "target must be an integer tensor"),
        (torch.zeros(2, 16, 16, dtype=torch.uint16), TypeError, "integer tensor .* got dtype torch.uint16"),
        (torch.zeros(2, 0, 16, dtype=torch.long), ValueError, r"H, W >= 1, got shape \(2, 0, 16\)"),
        (torch.zeros(3, 16, 16, dtype=torch.long), ValueError, r"target must be \[B, H, W\] with B=2"),
        (torch.zeros(2, 16, dtype=torch.long), ValueError, r"got shape \(2, 16\)"),
        ([[0]], TypeError, "target must be a torch.Tensor, got list"),
    ],
)
def test_bad_target(backend, target, error, pattern):
    logits, _ = seg_inputs()
    with pytest.raises(error, match=pattern):
        dcf.seg_cross_entropy(logits, target)


def test_bad_logits(backend):
    _, target = seg_inputs()
    with pytest.raises(TypeError, match="logits must be a floating tensor, got dtype torch.int64"):
        dcf.seg_cross_entropy(torch.zeros(2, 5, 4, 4, dtype=torch.long), target)
    with pytest.raises(ValueError, match=r"logits must be \[B, K, h, w\], got shape \(2, 5, 4\)"):
        dcf.seg_cross_entropy(torch.zeros(2, 5, 4), target)
    with pytest.raises(ValueError, match=r"logits must have h, w >= 1, got shape \(2, 5, 0, 4\)"):
        dcf.seg_cross_entropy(torch.zeros(2, 5, 0, 4), target)
    with pytest.raises(ValueError, match=r"logits must have h, w >= 1, got shape \(2, 5, 4, 0\)"):
        dcf.dropped_class_prob(torch.zeros(2, 5, 4, 0), torch.ones(5))
    with pytest.raises(ValueError, match=r"drop_logits must have h, w >= 1, got shape \(2, 5, 0, 0\)"):
        dcf.dropclass_loss(torch.zeros(2, 5, 4, 4), torch.zeros(2, 5, 0, 0), target, torch.ones(5), 0.5)
    no_classes = r"must have at least one class, got shape \(2, 0, 4, 4\)"
    with pytest.raises(ValueError, match="^logits " + no_classes):
        dcf.seg_cross_entropy(torch.zeros(2, 0, 4, 4), torch.zeros_like(target))
    with pytest.raises(ValueError, match="^logits " + no_classes):
        dcf.dropped_class_prob(torch.zeros(2, 0, 4, 4), torch.ones(0))
    with pytest.raises(ValueError, match="^logits " + no_classes):
        dcf.dropclass_loss(torch.zeros(2, 0, 4, 4), torch.zeros(2, 0, 4, 4), target, torch.ones(0), 0.5)


def test_device_mismatch(backend):
    logits, target = seg_inputs()
    with pytest.raises(ValueError, match="target is on meta but logits is on cpu"):
        dcf.seg_cross_entropy(logits, target.to("meta"))
    with pytest.raises(ValueError, match="keep is on meta but logits is on cpu"):
        dcf.dropped_class_prob(logits, torch.ones(5, device="meta"))


@pytest.mark.parametrize("shape", [(4,), (6,), (3, 5), (2, 4), (2, 5, 1)])
def test_wrong_keep_size(backend, shape):
    logits, target = seg_inputs()
    with pytest.raises(ValueError, match=r"keep must have shape \[K\]=\[5\] or \[B, K\]=\[2, 5\]"):
        dcf.seg_cross_entropy(logits, target, torch.ones(shape))
    with pytest.raises(ValueError, match=r"keep must have shape"):
        dcf.dropped_class_prob(logits, torch.ones(shape))
    with pytest.raises(ValueError, match=r"keep must have shape"):
        dcf.channel_mask(torch.randn(2, 3, 4, 4), torch.randn(5, 3), torch.ones(shape))


def test_class_importance_takes_keep_of_any_batch_but_its_classes(backend):
    with pytest.raises(ValueError, match=r"keep must have shape \[K\]=\[5\] or \[B, K\] with K=5, got \(3, 4\)"):
        dcf.class_importance(torch.randn(5, 3), torch.ones(3, 4))


def test_complex_keep_is_refused_by_every_op(backend):
    """A complex mask would lose its imaginary part (with a ComplexWarning) instead of an error."""
    keep = torch.ones(5, dtype=torch.complex64)
    _every_op_refuses(keep, "keep must be a bool or real tensor, got dtype torch.complex64", error=TypeError)


def _every_op_refuses(
    keep: torch.Tensor, message: str, dtype: torch.dtype = torch.float32, error: type[Exception] = ValueError
) -> None:
    """Each op that takes a keep mask for K=5 raises ``error`` matching ``message``, on ``dtype`` inputs."""
    logits, target = seg_inputs()
    logits = logits.to(dtype)
    features, weight = torch.randn(2, 3, 4, 4, dtype=dtype), torch.randn(5, 3, dtype=dtype)
    calls = {
        "seg_cross_entropy": lambda: dcf.seg_cross_entropy(logits, target, keep),
        "dropped_class_prob": lambda: dcf.dropped_class_prob(logits, keep),
        "dropclass_loss": lambda: dcf.dropclass_loss(logits, logits, target, keep, progress=0.5),
        "channel_mask": lambda: dcf.channel_mask(features, weight, keep),
        "class_importance": lambda: dcf.class_importance(weight, keep),
    }
    for name, call in calls.items():
        with pytest.raises(error, match=message):
            call()
            pytest.fail(f"{name} accepted keep {keep.tolist()}")


@pytest.mark.parametrize(
    "keep, row", [(torch.zeros(5), 0), (torch.tensor([[1.0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]), 1)], ids=["K", "BK"]
)
def test_keep_dropping_every_class(backend, keep, row):
    """The same message, naming the row, from every backend and op."""
    _every_op_refuses(keep, rf"^keep drops every class in row {row}; at least one class must be kept$")


def test_keep_not_binary(backend):
    logits, target = seg_inputs()
    keep = torch.tensor([1.0, 0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="keep must contain only 0 and 1 values, got 0.5"):
        dcf.dropped_class_prob(logits, keep)
    with pytest.raises(ValueError, match="keep must contain only 0 and 1"):
        dcf.seg_cross_entropy(logits, target, keep)


@pytest.mark.parametrize(
    "value",
    [1 + 1e-12, 1e-60, -1e-300, 2.0, 2500.0, 1e16, 1.5e-5],
    ids=["near-1", "near-0", "negative-near-0", "whole", "whole-2500", "exponent-16", "exponent-minus-5"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_float64_keep_value_not_0_or_1(backend, value, dtype):
    """Refused on every path, also where float32 would round it to 0 or 1, and printed as Python prints it."""
    keep = torch.tensor([1.0, value, 1.0, 0.0, 1.0], dtype=torch.float64)
    _every_op_refuses(keep, rf"^keep must contain only 0 and 1 values, got {re.escape(repr(value))}$", dtype)


def test_channel_mask_shape_errors(backend):
    with pytest.raises(ValueError, match=r"weight has C=4 input channels but features have C=3"):
        dcf.channel_mask(torch.randn(2, 3, 4, 4), torch.randn(5, 4), torch.ones(5))
    with pytest.raises(ValueError, match=r"weight must be \[K, C\] or a conv weight"):
        dcf.channel_mask(torch.randn(2, 3, 4, 4), torch.randn(5, 3, 1), torch.ones(5))
    with pytest.raises(TypeError, match="features must be a floating tensor"):
        dcf.channel_mask(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.randn(5, 3), torch.ones(5))


def test_loss_argument_errors(backend):
    logits, target = seg_inputs()
    keep = torch.ones(5)
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\], got 1.5"):
        dcf.dropclass_loss(logits, logits, target, keep, progress=1.5)
    for alpha in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"alpha must be a finite non-negative number, got {alpha}"):
            dcf.dropclass_loss(logits, logits, target, keep, progress=0.5, alpha=alpha)
        with pytest.raises(ValueError, match=f"alpha must be a finite non-negative number, got {alpha}"):
            DropClassLoss(alpha=alpha)
    not_a_tensor = r"progress must be a number in \[0, 1\], a Python or NumPy number, not a tensor \(.item\(\) gives"
    with pytest.raises(ValueError, match=not_a_tensor + r" one\): tensor\(0.5000\)$"):
        dcf.dropclass_loss(logits, logits, target, keep, progress=torch.tensor(0.5))
    expected, _ = dcf.dropclass_loss(logits, logits, target, keep, progress=0.5, alpha=2)
    for number in (np.float32(0.5), np.float64(0.5)):
        total, _ = dcf.dropclass_loss(logits, logits, target, keep, progress=number, alpha=np.int64(2))
        assert torch.equal(total, expected)
    with pytest.raises(ValueError, match=r"drop_logits must have the batch and class sizes"):
        dcf.dropclass_loss(logits, logits[:, :4], target, keep, progress=0.5)


def test_loss_value_errors(backend):
    """The fused ``dropclass_loss`` paths report bad labels and keep values as the single ops do."""
    logits, target = seg_inputs()
    target[0, 2, 2] = 9
    with pytest.raises(ValueError, match=r"target contains label 9 outside \[0, 5\)"):
        dcf.dropclass_loss(logits, logits, target, torch.tensor([1.0, 0, 1, 1, 1]), progress=0.5)
    logits, target = seg_inputs()
    with pytest.raises(ValueError, match="keep must contain only 0 and 1 values, got 0.5"):
        dcf.dropclass_loss(logits, logits, target, torch.tensor([1.0, 0.5, 1, 1, 1]), progress=0.5)


def test_fused_loss_op_argument_errors(cpp_backend):
    logits, target = seg_inputs()
    keep = torch.ones(5)
    op = torch.ops.dropclass_fast.dropclass_loss
    with pytest.raises(TypeError, match="drop_logits must have dtype Float .* got Double"):
        op(logits, logits.double(), target, keep, 255, False, False)
    with pytest.raises(ValueError, match=r"drop_logits must have the batch and class sizes of logits \[2, 5, 4, 4\]"):
        op(logits, logits[:1], target, keep, 255, False, False)
    with pytest.raises(ValueError, match=r"target batch size 1 does not match logits batch size 2"):
        op(logits, logits, target[:1], keep, 255, False, False)


def test_ops_refuse_a_keep_with_more_rows_than_the_batch(cpp_backend):
    """The C++ ops' own keep-shape check, which functional.check_keep stands in front of on the public API."""
    logits, target = seg_inputs()
    keep = torch.ones(3, 5)
    message = r"keep must have shape \[K\], \[1, K\] or \[B, K\] with K=5 and B=2"
    with pytest.raises(ValueError, match=message):
        torch.ops.dropclass_fast.seg_cross_entropy(logits, target, keep, 255, False, False)
    with pytest.raises(ValueError, match=message):
        torch.ops.dropclass_fast.dropped_class_prob(logits, keep, False)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_an_evaluation_mask_is_checked_compiled_or_not(compiled):
    """An explicit keep in evaluation is checked outside the graph: compiled, an all-zero mask gave NaN logits and
    a mask of 0.5 plausible ones."""
    torch._dynamo.reset()
    dc = DropClass(nn.Conv2d(8, 5, 1)).eval()
    run = torch.compile(dc) if compiled else dc
    features = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="keep drops every class in row 0"):
        run(features, keep=torch.zeros(5))
    with pytest.raises(ValueError, match="keep must contain only 0 and 1 values, got 0.5"):
        run(features, keep=torch.full((5,), 0.5))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(run(features, keep=keep), dc.classifier(dc.drop_path(features, keep)))


def test_module_errors():
    with pytest.raises(TypeError, match="classifier must be an nn.Conv2d, got Linear"):
        DropClass(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="classifier must have at least 2 output classes .* got out_channels=1"):
        DropClass(nn.Conv2d(8, 1, 1))
    with pytest.raises(TypeError, match="seed must be an int, got 1.5"):
        DropClass(nn.Conv2d(8, 5, 1), seed=1.5)
    with pytest.raises(TypeError, match="per_sample must be a bool, got 'no'"):
        DropClass(nn.Conv2d(8, 5, 1), per_sample="no")
    dc = DropClass(nn.Conv2d(8, 5, 1)).train()
    with pytest.raises(ValueError, match="keep drops every class"):
        dc(torch.randn(2, 8, 4, 4), keep=torch.zeros(5))
    assert dc.step == 0  # a refused mask is not a training step
    with pytest.raises(ValueError, match="progress is required in training mode"):
        dc(torch.randn(2, 8, 4, 4))
    with pytest.raises(TypeError, match="features must be a floating tensor, got dtype torch.int64"):
        dc(torch.ones(2, 8, 4, 4, dtype=torch.long), progress=0.5)
    with pytest.raises(ValueError, match="features have C=7 channels but the classifier expects 8"):
        dc(torch.randn(2, 7, 4, 4), progress=0.5)
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\], got -0.1"):
        dc(torch.randn(2, 8, 4, 4), progress=-0.1)
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\], got 5.0"):
        dc.eval()(torch.randn(2, 8, 4, 4), progress=5.0)
    dc.train()
    given = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="progress must be a number in \\[0, 1\\], got 5.0"):
        dc(torch.randn(2, 8, 4, 4), progress=5.0, keep=given)
    with pytest.raises(ValueError, match="sample_index selects drawn per-sample masks; it cannot be given with keep"):
        dc(torch.randn(2, 8, 4, 4), keep=given, sample_index=torch.arange(2))
    assert dc.step == 0
    per_sample = DropClass(nn.Conv2d(8, 5, 1), per_sample=True).train()
    with pytest.raises(TypeError, match=r"sample_index must be an integer tensor, got \[5, 9\]"):
        per_sample(torch.randn(2, 8, 4, 4), progress=0.5, sample_index=[5, 9])
    with pytest.raises(TypeError, match=r"sample_index must be an integer tensor, got tensor\(\[5., 9.\]\)"):
        per_sample(torch.randn(2, 8, 4, 4), progress=0.5, sample_index=torch.tensor([5.0, 9.0]))
    with pytest.raises(ValueError, match=r"sample_index must have shape \[B\]=\[2\], got \(3,\)"):
        per_sample(torch.randn(2, 8, 4, 4), progress=0.5, sample_index=torch.arange(3))
    assert per_sample.step == 0
    with pytest.raises(TypeError, match="out must be the DropClassOutput"):
        DropClassLoss()(torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), progress=0.5)
    several = DropClassOutput({"out": torch.randn(2, 5, 4, 4)}, torch.randn(2, 5, 4, 4), torch.ones(5))
    with pytest.raises(TypeError, match=r"out.logits must be the logits tensor \[B, K, h, w\], got dict: .* "
                                        r"DropClassOutput\(main_logits, out.drop_logits, out.keep\)"):
        DropClassLoss()(several, torch.zeros(2, 4, 4, dtype=torch.long), progress=0.5)


@pytest.mark.parametrize("mode", ["paper mode", "evaluation"])
def test_sample_index_is_checked_where_it_is_unused(mode):
    """Paper mode draws one mask per step and evaluation draws none, so neither uses ``sample_index``; a bad one is
    still refused, as an unused ``progress`` is, and a good one changes nothing."""
    dc = DropClass(nn.Conv2d(8, 5, 1), per_sample=mode == "evaluation", seed=4)
    dc.train(mode == "paper mode")
    features = torch.randn(2, 8, 4, 4)
    with pytest.raises(TypeError, match=r"sample_index must be an integer tensor, got \[5, 9\]"):
        dc(features, progress=1.0, sample_index=[5, 9])
    with pytest.raises(ValueError, match=r"sample_index must have shape \[B\]=\[2\], got \(3,\)"):
        dc(features, progress=1.0, sample_index=torch.arange(3))
    assert dc.step == 0
    given = dc(features, progress=1.0, sample_index=torch.tensor([5, 9]))
    if mode == "paper mode":  # the mask of step 0, drawn from (seed, step) alone
        torch.testing.assert_close(given.keep, dc.sample_keep(1.0, 2, step=0))
        assert given.keep.shape == (5,) and dc.step == 1
    else:
        torch.testing.assert_close(given, dc(features, progress=1.0))


@pytest.mark.parametrize("momentum", ["0.1", -0.5, 1.5, float("nan"), True])
def test_dropclass_refuses_a_bn_momentum_outside_0_1(momentum):
    with pytest.raises(ValueError, match=r"bn_momentum must be a number in \[0, 1\] or None .* got "):
        DropClass(nn.Conv2d(8, 5, 1), bn_momentum=momentum)


@pytest.mark.parametrize("momentum", [None, 0, 1, np.float32(0.25)])
def test_dropclass_takes_a_bn_momentum_in_0_1_or_none(momentum):
    norm = DropClass(nn.Conv2d(8, 5, 1), bn_momentum=momentum).select[1]
    assert norm.momentum == (None if momentum is None else float(momentum))
    assert norm.momentum is None or type(norm.momentum) is float
