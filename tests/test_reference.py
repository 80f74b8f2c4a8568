"""The eager reference against answers computed by hand or by an independent formula."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dropclass_fast import reference


def test_uniform_logits_give_log_k_and_one_over_k():
    logits = torch.zeros(2, 7, 5, 6)
    target = torch.randint(0, 7, (2, 20, 24))
    assert math.isclose(reference.seg_cross_entropy(logits, target).item(), math.log(7), rel_tol=1e-6)
    keep = torch.ones(7)
    keep[2] = 0
    assert math.isclose(reference.dropped_class_prob(logits, keep).item(), 1 / 7, rel_tol=1e-6)


def test_seg_cross_entropy_matches_pixel_loop_on_tiny_input():
    logits = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 1, 255, 2], [2, 2, 1, 0], [255, 255, 0, 1], [1, 0, 2, 2]]])
    up = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=True)
    terms = [
        -torch.log_softmax(up[0, :, y, x], 0)[target[0, y, x]]
        for y in range(4)
        for x in range(4)
        if target[0, y, x] != 255
    ]
    expected = torch.stack(terms).mean()
    got = reference.seg_cross_entropy(logits, target, align_corners=True)
    torch.testing.assert_close(got, expected)


def test_dropped_labels_are_ignored():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = F.cross_entropy(logits, torch.where(target == 1, 255, target), ignore_index=255)
    torch.testing.assert_close(reference.seg_cross_entropy(logits, target, keep), expected)
    per_sample = torch.tensor([[1.0, 1, 1, 0], [0, 1, 1, 1]])
    remapped = target.clone()
    remapped[0][target[0] == 3] = 255
    remapped[1][target[1] == 0] = 255
    expected = F.cross_entropy(logits, remapped, ignore_index=255)
    torch.testing.assert_close(reference.seg_cross_entropy(logits, target, per_sample), expected)
    # another ignore value: dropped pixels take it, and pixels that carry it stay out of the mean
    target[0, 0, 0] = -1
    expected = F.cross_entropy(logits, torch.where(target == 1, -1, target), ignore_index=-1)
    torch.testing.assert_close(reference.seg_cross_entropy(logits, target, keep, ignore_index=-1), expected)


def test_all_ignored_gives_zero_loss_and_zero_grad():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 8, 8), 255)
    loss = reference.seg_cross_entropy(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_class_importance_and_channel_mask():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 4.0, 0.5]])
    s = reference.class_importance(weight, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(s, torch.tensor([0.5, 2.0, 1.75]))
    s = reference.class_importance(weight, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0, 3.0], [0.0, 4.0, 0.5]]))
    conv = torch.zeros(2, 3, 3, 3)
    conv[:, :, 1, 1] = weight
    conv[0, 1, 0, 0] = 5.0  # taps are summed before the ReLU: -2 + 5 = 3
    s = reference.class_importance(conv, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(s, torch.tensor([1.0, 3.0, 3.0]))
    features = torch.ones(1, 3, 2, 2)
    masked = reference.channel_mask(features, weight, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(masked[0, :, 0, 0], torch.tensor([0.0, 4.0, 0.5]))


def test_dropped_class_prob_per_sample_means_over_pairs():
    logits = torch.randn(2, 3, 4, 5)
    prob = logits.softmax(1)
    keep = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    expected = (prob[0, 1].mean() + prob[0, 2].mean() + prob[1, 2].mean()) / 3
    torch.testing.assert_close(reference.dropped_class_prob(logits, keep), expected)
    assert reference.dropped_class_prob(logits, torch.ones(3)).item() == 0.0


def test_half_precision_class_importance_and_channel_mask_round_once():
    """bfloat16 weights and features: ``s`` and ``A * s`` are accumulated in float32 and rounded once, as the
    kernels do (rounding ``s`` to bfloat16 before multiplying doubled the error: 0.0093 against 0.0039)."""
    torch.manual_seed(0)
    weight = torch.randn(19, 64, 3, 3).bfloat16()
    features = torch.randn(2, 64, 8, 8).bfloat16()
    keep = torch.ones(19)
    keep[3] = 0.0
    exact_s = reference.class_importance(weight.double(), keep.double())
    s = reference.class_importance(weight, keep)
    assert s.dtype == torch.bfloat16
    assert ((s.double() - exact_s).abs() <= exact_s.abs() * 2**-8).all()
    exact = features.double() * exact_s.view(1, -1, 1, 1)
    got = reference.channel_mask(features, weight, keep)
    assert got.dtype == torch.bfloat16
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-8).all()
