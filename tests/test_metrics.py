"""Metrics: mIoU, mIoU† (least frequent half), mIoU* (most bias-vulnerable classes), DDP reduction."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, numpy_confusion, numpy_iou

from dropclass_fast.metrics import (
    ConfusionMatrix,
    format_iou_table,
    least_frequent_classes,
    mean_iou,
    miou_least_frequent,
    miou_most_vulnerable,
    most_vulnerable_classes,
    subset_miou,
    vulnerability_order,
)


def _hand_matrix() -> ConfusionMatrix:
    """5 classes; class 4 is in neither labels nor predictions; 255 pixels are ignored."""
    cm = ConfusionMatrix(5)
    label = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 255], [0, 1, 1, 3, 3, 3, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0, 3, 4], [0, 1, 2, 3, 3, 2, 4, 0]])
    cm.update(pred, label)
    return cm


def test_iou_and_subsets_by_hand():
    iou = _hand_matrix().iou()
    # rows label, columns prediction:
    # class 0: TP 2 (2 labels 0 -> 0), FN 1 (0 -> 1), FP 1 (2 -> 0) -> 2/4
    # class 1: TP 3, FN 1 (1 -> 2), FP 1 (0 -> 1) -> 3/5
    # class 2: TP 1, FN 1 (2 -> 0), FP 2 (1 -> 2, 3 -> 2) -> 1/4
    # class 3: TP 3 (3 -> 3 three times), FN 1 (3 -> 2), FP 0 -> 3/4; class 4: absent -> NaN (255 pixels not counted)
    assert iou[:4].tolist() == pytest.approx([2 / 4, 3 / 5, 1 / 4, 3 / 4])
    assert torch.isnan(iou[4])
    assert mean_iou(iou) == pytest.approx((0.5 + 0.6 + 0.25 + 0.75) / 4)
    frequency = torch.tensor([0.30, 0.05, 0.40, 0.05, 0.20], dtype=torch.float64)
    # least frequent half (5 // 2 = 2): classes 1 and 3 (tie at 0.05: class order)
    assert least_frequent_classes(frequency) == [1, 3]
    assert miou_least_frequent(iou, frequency) == pytest.approx((3 / 5 + 3 / 4) / 2)
    # with 3 classes the third is class 4 (0.20), absent: skipped like in mean_iou
    assert miou_least_frequent(iou, frequency, count=3) == pytest.approx((3 / 5 + 3 / 4) / 2)
    delta = torch.tensor([-0.10, -0.30, float("nan"), -0.30, 0.05], dtype=torch.float64)
    assert vulnerability_order(delta) == [1, 3, 0, 4, 2]  # largest drop first, ties by class, NaN last
    assert most_vulnerable_classes(delta, count=3) == [1, 3, 0]
    assert miou_most_vulnerable(iou, delta, count=3) == pytest.approx((3 / 5 + 3 / 4 + 2 / 4) / 3)
    assert math.isnan(subset_miou(iou, [4]))  # only an absent class


def test_subsets_match_numpy_on_random_data():
    rng = np.random.default_rng(1)
    k = 11
    target = rng.integers(0, k - 1, size=(4, 24, 40))  # class k - 1 never labelled ...
    target[rng.random(target.shape) < 0.15] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k - 1, size=target.shape))
    pred[target == 255] = 0  # ... nor predicted
    cm = ConfusionMatrix(k)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected = numpy_iou(numpy_confusion(target, pred, k))
    np.testing.assert_allclose(cm.iou().numpy(), expected, equal_nan=True)
    valid = target != 255

    frequency = np.bincount(target[valid], minlength=k) / valid.sum()
    rare = np.argsort(frequency, kind="stable")[: k // 2]
    assert miou_least_frequent(cm.iou(), torch.from_numpy(frequency)) == pytest.approx(np.nanmean(expected[rare]))
    delta = rng.normal(size=k)
    worst = np.argsort(delta, kind="stable")[:9]
    assert miou_most_vulnerable(cm.iou(), torch.from_numpy(delta)) == pytest.approx(np.nanmean(expected[worst]))


@pytest.mark.parametrize(
    "classes", [[3, 1], (np.int64(3), 1), torch.tensor([3, 1]), torch.tensor([3, 1], dtype=torch.uint8),
                np.array([3, 1], dtype=np.int32)]
)
def test_subset_miou_takes_integer_sequences_tensors_and_arrays(classes):
    iou = torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=torch.float64)
    assert subset_miou(iou, classes) == pytest.approx((0.2 + 0.7) / 2)


@pytest.mark.parametrize(
    "classes", [[1.7], [True], [1, 2.0], torch.tensor([1.0]), torch.tensor([True]), np.array([1.0]), torch.tensor(1),
                torch.tensor([[1]]), "1", [torch.tensor(1)]]
)
def test_subset_miou_refuses_class_indices_it_would_truncate(classes):
    """``int()`` would have read 1.7 and True as class 1 and averaged it without a word."""
    with pytest.raises(TypeError, match="classes must be a sequence of integer class indices, got"):
        subset_miou(torch.tensor([0.1, 0.2, 0.3]), classes)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: least_frequent_classes(torch.ones(4), count=5), r"count must be an int in \[1, 4\]"),
        (lambda: least_frequent_classes(torch.tensor([1.0, float("nan")])), "frequency must not contain NaN"),
        (lambda: most_vulnerable_classes(torch.zeros(3, 2)), r"delta must be a 1-D floating tensor \[K\]"),
        (lambda: most_vulnerable_classes(torch.zeros(8)), r"count must be an int in \[1, 8\]"),
        (lambda: subset_miou(torch.zeros(3), [0, 3]), r"classes must be distinct class indices in \[0, 3\)"),
        (lambda: subset_miou(torch.zeros(3), []), "classes must be distinct"),
        (lambda: subset_miou(torch.zeros(3), torch.tensor([0, 3])),
         r"classes must be distinct class indices in \[0, 3\), got \[0, 3\]$"),  # the ints, not tensor(0)
        (lambda: subset_miou(torch.zeros(3, 1), [0]), r"iou must be a 1-D floating tensor \[K\], got shape \(3, 1\)"),
        (lambda: mean_iou(torch.zeros(2, 2)), r"iou must be a 1-D floating tensor \[K\], got shape \(2, 2\)"),
        (lambda: mean_iou([0.5, 0.5]), r"iou must be a 1-D floating tensor \[K\], got <class 'list'>"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def _reduce_worker(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        # rank 0 sees labels [0, 1, 2] predicted [0, 1, 1]; rank 1 sees [2, 2, 255] predicted [2, 0, 1]
        pred, label = ([0, 1, 1], [0, 1, 2]) if rank == 0 else ([2, 0, 1], [2, 2, 255])
        cm.update(torch.tensor(pred), torch.tensor(label))
        cm.all_reduce()
        if rank == 0:
            torch.save(cm.matrix, path)
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_processes(tmp_path):
    path = tmp_path / "matrix.pt"
    mp.spawn(_reduce_worker, args=(2, free_port(), str(path)), nprocs=2, join=True)
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    assert torch.equal(torch.load(path, weights_only=True), expected)


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 1], [2, 255]]))
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 2]))
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[1, 1], expected[2, 1], expected[2, 0] = 2, 1, 1, 1
    assert torch.equal(cm.matrix, expected)
    iou = cm.iou()
    # class 0: TP 2, FP 1 (label 2 predicted 0), FN 0 -> 2/3; class 1: TP 1, FP 1 -> 1/2;
    # class 2: TP 0, FN 2 -> 0; class 3: absent from labels and predictions -> NaN
    assert iou[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert torch.isnan(iou[3])
    assert mean_iou(iou) == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_confusion_matrix_matches_numpy_on_random_data():
    rng = np.random.default_rng(0)
    k = 7
    target = rng.integers(0, k, size=(3, 20, 30))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, k, size=target.shape)
    cm = ConfusionMatrix(k)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    expected = numpy_confusion(target, pred, k)
    assert np.array_equal(cm.matrix.numpy(), expected)
    np.testing.assert_allclose(cm.iou().numpy(), numpy_iou(expected))


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"got target \[5\], prediction \[\]$"):  # the prediction 1 is valid
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"got target \[\], prediction \[-1\]$"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 2.7"):
        ConfusionMatrix(2.7)
    for ignore_index in (2.7, "255", True):  # int() made these 2, 255 and 1
        with pytest.raises(TypeError, match=f"ignore_index must be an integer, got {ignore_index!r}"):
            ConfusionMatrix(3, ignore_index)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer tensors"):
        cm.update(torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer tensors, got torch.complex64 and torch.int64"):
        cm.update(torch.tensor([1 + 1j]), torch.tensor([1]))  # was counted as class 1, the imaginary part dropped
    with pytest.raises(TypeError, match="prediction must be a torch.Tensor, got ndarray"):
        cm.update(np.array([0, 1]), torch.tensor([0, 1]))  # was an AttributeError
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        cm.update(torch.tensor([0, 1]), [0, 1])
    assert int(cm.matrix.sum()) == 0  # nothing refused was counted


def test_iou_table_has_one_row_per_class_and_the_delta():
    ious = {"baseline": torch.tensor([0.5, 0.25]), "dropclass": torch.tensor([0.6, 0.2])}
    table = format_iou_table(("road", "car"), ious)
    lines = table.splitlines()
    assert lines[0] == "| class | baseline | dropclass | delta |"
    assert lines[2] == "| road | 50.0 | 60.0 | +10.0 |"
    assert lines[3] == "| car | 25.0 | 20.0 | -5.0 |"
    assert lines[4] == "| mIoU | 37.5 | 40.0 | +2.5 |"


def test_iou_table_reads_a_column_that_requires_grad_without_warning():
    ious = {"baseline": torch.tensor([0.5, 0.25], requires_grad=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = format_iou_table(("road", "car"), ious)
    assert table.splitlines()[2:] == ["| road | 50.0 |", "| car | 25.0 |", "| mIoU | 37.5 |"]


@pytest.mark.parametrize(
    ("values", "got"),
    [
        ([0.5, 0.25], "<class 'list'>"),  # was an AttributeError
        (torch.tensor([[0.5, 0.25]]), r"shape \(1, 2\), dtype torch.float32"),  # was a ValueError from float()
        (torch.tensor([1, 0]), r"shape \(2,\), dtype torch.int64"),  # was refused as "iou", naming no column
    ],
)
def test_iou_table_refuses_what_is_not_a_floating_vector(values, got):
    with pytest.raises(TypeError, match=rf"ious\['dropclass'\] must be a 1-D floating tensor \[K\], got {got}"):
        format_iou_table(("road", "car"), {"baseline": torch.tensor([0.5, 0.25]), "dropclass": values})
