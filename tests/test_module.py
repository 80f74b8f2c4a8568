"""DropClass and DropClassLoss: the official reference vectors, the schedule, the eval path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropclass_fast
from dropclass_fast import DropClass, DropClassLoss, DropClassOutput, reference


def official_dropclass(state_dict: dict) -> DropClass:
    weight = state_dict["_classifier.weight"]
    dc = DropClass(nn.Conv2d(weight.shape[1], weight.shape[0], 1))

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}

    dc.classifier.load_state_dict(part("_classifier."))
    dc.select[0].load_state_dict(part("clsdrop_conv1."))
    dc.select[1].load_state_dict(part("clsdrop_bn1."))
    return dc


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("backend", ["cpp", "eager"])
def test_official_reference_vectors(cpp_backend, reference_vectors, version, backend):
    vectors = reference_vectors("official_dropclass_hrnet_vectors.pt")[version]
    dc = official_dropclass(vectors["state_dict"]).train()
    loss_fn = DropClassLoss(
        alpha=vectors["alpha"], ignore_index=vectors["ignore_index"], align_corners=vectors["align_corners"]
    )
    with dropclass_fast.set_backend(backend):
        out = dc(vectors["train_features"], keep=vectors["keep"])
        total, parts = loss_fn(out, vectors["labels"], progress=vectors["progress"])
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.logits, vectors["train_logits"], **tol)
    torch.testing.assert_close(out.drop_logits, vectors["train_drop_logits"], **tol)
    torch.testing.assert_close(parts["ce"], vectors["ce_weighted"], **tol)
    torch.testing.assert_close(parts["ce_drop"], vectors["ce_drop_weighted"], **tol)
    torch.testing.assert_close(parts["sup"], vectors["sup_weighted"], **tol)
    torch.testing.assert_close(total, vectors["loss_total"], **tol)


def test_drop_frequency_follows_progress():
    dc = DropClass(nn.Conv2d(4, 10, 1), seed=123)
    for progress in (0.0, 0.25, 0.8):
        masks = torch.stack([dc.sample_keep(progress, 2, step=n) for n in range(4000)])
        dropped = (masks == 0).sum(1)
        assert dropped.max() <= 1
        assert abs(dropped.float().mean().item() - progress) < 0.03
        if progress > 0:
            per_class = (masks == 0).float().sum(0) / dropped.sum()
            assert (per_class - 0.1).abs().max() < 0.04


def test_ranks_draw_the_same_mask_in_paper_mode():
    rank0 = DropClass(nn.Conv2d(4, 19, 1), seed=7).train()
    rank1 = DropClass(nn.Conv2d(4, 19, 1), seed=7).train()
    other_seed = DropClass(nn.Conv2d(4, 19, 1), seed=8).train()
    a = [rank0(torch.randn(2, 4, 3, 3), progress=0.9).keep for _ in range(50)]
    b = [rank1(torch.randn(3, 4, 3, 3), progress=0.9).keep for _ in range(50)]
    c = [other_seed(torch.randn(2, 4, 3, 3), progress=0.9).keep for _ in range(50)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert rank0.step == 50


def test_per_sample_masks_depend_on_global_index():
    dc = DropClass(nn.Conv2d(4, 19, 1), per_sample=True, seed=3)
    keep = dc.sample_keep(1.0, 4, step=5)
    assert keep.shape == (4, 19) and ((keep == 0).sum(1) == 1).all()
    assert len({int(torch.nonzero(row == 0)) for row in keep}) > 1
    again = dc.sample_keep(1.0, 2, step=5, sample_index=torch.tensor([2, 3]))
    torch.testing.assert_close(again, keep[2:])


def test_per_sample_masks_of_rank_one_follow_rank_zeros(monkeypatch):
    """Without sample_index, rank r's sample i has global index r * B + i."""
    dc = DropClass(nn.Conv2d(4, 19, 1), per_sample=True, seed=3)
    both = dc.sample_keep(1.0, 4, step=5)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    torch.testing.assert_close(dc.sample_keep(1.0, 2, step=5), both[2:])


def test_per_sample_mask_of_an_empty_batch():
    dc = DropClass(nn.Conv2d(4, 5, 1), per_sample=True).train()
    out = dc(torch.randn(0, 4, 2, 2), progress=1.0)
    assert out.keep.shape == (0, 5) and out.drop_logits.shape == (0, 5, 2, 2)


def test_compiled_module_does_not_recompile_per_step():
    """``step`` changes every training forward; traced, each value would be a new graph (and past the recompile
    limit the module would fall back to eager). The masks and the step count are those of the eager module."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    eager = DropClass(nn.Conv2d(4, 5, 1), seed=2).train()
    compiled_module = DropClass(nn.Conv2d(4, 5, 1), seed=2).train()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend=counting_backend)
    features = torch.randn(2, 4, 3, 3)
    counts = []
    for _ in range(12):
        expected, got = eager(features, progress=0.7), compiled(features, progress=0.7)
        torch.testing.assert_close(got.keep, expected.keep)
        torch.testing.assert_close(got.drop_logits, expected.drop_logits)
        counts.append(len(graphs))
    assert counts[-1] == counts[1], f"graphs compiled after each step: {counts}"
    assert compiled_module.step == eager.step == 12


def test_a_mask_is_checked_once_per_training_step(monkeypatch):
    """Checking a keep mask's values costs a device-to-host copy: a drawn ``[K]`` mask is not checked, a given one
    once (a per-sample mask is checked by channel_mask's kernels as they run)."""
    checks = []
    check = dropclass_fast.functional.check_keep_values
    monkeypatch.setattr(dropclass_fast.functional, "check_keep_values", lambda keep: checks.append(1) or check(keep))
    dc = DropClass(nn.Conv2d(8, 5, 1)).train()
    features = torch.randn(2, 8, 4, 4)
    dc(features, progress=1.0)
    assert checks == []
    dc(features, keep=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    assert checks == [1]


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_training_forward_uses_the_mask_of_its_step(per_sample):
    """Step n's forward draws sample_keep(step=n) (the documented mask of step n), then counts the step."""
    dc = DropClass(nn.Conv2d(4, 7, 1), per_sample=per_sample, seed=5).train()
    features = torch.randn(3, 4, 2, 2)
    for n in range(20):
        want = dc.sample_keep(0.9, 3, step=n)
        assert torch.equal(dc(features, progress=0.9).keep, want), n
    assert dc.step == 20


def test_step_survives_state_dict():
    dc = DropClass(nn.Conv2d(4, 5, 1), seed=9).train()
    for _ in range(3):
        dc(torch.randn(1, 4, 2, 2), progress=0.5)
    restored = DropClass(nn.Conv2d(4, 5, 1))
    restored.load_state_dict(dc.state_dict())
    assert (restored.step, restored.seed) == (3, 9)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("kernel", [1, 3])
def test_training_forward_matches_reference(cpp_backend, per_sample, kernel):
    classifier = nn.Conv2d(16, 6, kernel, padding=kernel // 2)
    dc = DropClass(classifier, per_sample=per_sample, seed=1).train()
    features = torch.randn(3, 16, 7, 9, requires_grad=True)
    out = dc(features, progress=1.0)
    assert isinstance(out, DropClassOutput)
    assert ((out.keep == 0).sum(-1) == 1).all()
    s = reference.class_importance(classifier.weight, out.keep)
    masked = features * (s.view(1, -1, 1, 1) if s.dim() == 1 else s[:, :, None, None])
    torch.testing.assert_close(out.logits, classifier(features))
    torch.testing.assert_close(out.drop_logits, classifier(dc.select(masked)), rtol=1e-5, atol=1e-5)


def test_importance_gradient_is_not_detached():
    classifier = nn.Conv2d(8, 4, 1)
    dc = DropClass(classifier).train()
    features = torch.randn(2, 8, 5, 5)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    dc(features, keep=keep).drop_logits.sum().backward()
    with_importance = classifier.weight.grad.clone()
    classifier.weight.grad = None
    s = reference.class_importance(classifier.weight, keep).detach()
    classifier(dc.select(features * s.view(1, -1, 1, 1))).sum().backward()
    assert not torch.allclose(with_importance, classifier.weight.grad)


def test_eval_predicts_through_select_with_every_class_kept():
    classifier = nn.Conv2d(8, 4, 1)
    dc = DropClass(classifier)
    dc.train()(torch.randn(4, 8, 5, 5), progress=0.5)  # move the BN statistics away from the initial ones
    dc.eval()
    features = torch.randn(2, 8, 5, 5)
    s = F.relu(classifier.weight.view(4, 8)).mean(0)
    expected = classifier(dc.select(features * s.view(1, -1, 1, 1)))
    pred = dc(features)
    assert isinstance(pred, torch.Tensor)
    torch.testing.assert_close(pred, expected)


def test_loss_weights_follow_progress(cpp_backend):
    dc = DropClass(nn.Conv2d(8, 5, 1)).train()
    features = torch.randn(2, 8, 6, 6)
    target = torch.randint(0, 5, (2, 24, 24))
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    out = dc(features, keep=keep)
    total0, parts0 = DropClassLoss()(out, target, progress=0.0)
    assert parts0["ce_drop"].item() == 0.0
    ce0, sup0 = reference.seg_cross_entropy(out.logits, target), reference.dropped_class_prob(out.drop_logits, keep)
    torch.testing.assert_close(total0, ce0 + 10.0 * sup0)
    _, parts = DropClassLoss(alpha=2.0)(out, target, progress=0.75)
    ce = reference.seg_cross_entropy(out.logits, target)
    ce_drop = reference.seg_cross_entropy(out.drop_logits, target, keep)
    sup = reference.dropped_class_prob(out.drop_logits, keep)
    torch.testing.assert_close(parts["ce"], 0.25 * ce)
    torch.testing.assert_close(parts["ce_drop"], 0.75 * ce_drop)
    torch.testing.assert_close(parts["sup"], 2.0 * sup)
    # the loss passes its ignore_index and align_corners on
    target[0, :4] = -1
    _, parts = DropClassLoss(ignore_index=-1, align_corners=True)(out, target, progress=0.75)
    torch.testing.assert_close(parts["ce"], 0.25 * reference.seg_cross_entropy(out.logits, target, None, -1, True))
    torch.testing.assert_close(
        parts["ce_drop"], 0.75 * reference.seg_cross_entropy(out.drop_logits, target, keep, -1, True)
    )


def test_a_training_forward_that_raises_is_not_counted():
    """Features the classifier cannot take (float64 against float32 weights) fail after the mask is drawn: the step
    stays, so the next forward draws the mask the failed one would have used."""
    dc = DropClass(nn.Conv2d(4, 7, 1), seed=5).train()
    features = torch.randn(3, 4, 2, 2)
    dc(features, progress=0.9)
    with pytest.raises(RuntimeError):
        dc(features.double(), progress=0.9)
    assert dc.step == 1
    assert torch.equal(dc(features, progress=0.9).keep, dc.sample_keep(0.9, 3, step=1))
