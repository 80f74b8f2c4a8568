"""Analysis tools: erasing (I*), class frequency, bias vulnerability (Table B-1), the probe, tables, the experiment."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from helpers import numpy_confusion, numpy_iou
from torch import nn

from dropclass_fast import DropClass
from dropclass_fast.analysis import (
    ErasedDataset,
    EvalOptions,
    Table,
    bias_table,
    bias_vulnerability,
    class_frequency,
    erase_classes,
    fill_colour,
    frequency_table,
    probe_table,
    recalibrate_batchnorm,
    reconstruction_probe,
    top_influential,
    unbiased_iou,
)
from dropclass_fast.analysis.cli import build_parser, main
from dropclass_fast.analysis.experiment import ExperimentConfig, _json_values
from dropclass_fast.analysis.frequency import paper_frequency_mode
from dropclass_fast.data import SegmentationDataset, SyntheticStreets, TrainTransform
from dropclass_fast.metrics import vulnerability_order
from dropclass_fast.models import attach_dropclass, build_model, predict
from dropclass_fast.train import ResumableSampler

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on one thread: two OpenMP threads thrash when the 2-core CI box is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyLabels(SegmentationDataset):
    """Three hand-written 2x3 labels over 4 classes (255 = ignore); images are a gradient."""

    num_classes = 4
    class_names = ("a", "b", "c", "d")
    palette = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)
    labels = (
        np.array([[0, 0, 1], [1, 255, 1]], dtype=np.uint8),
        np.array([[2, 2, 2], [2, 2, 0]], dtype=np.uint8),
        np.array([[255, 1, 1], [0, 0, 0]], dtype=np.uint8),
    )

    def __len__(self) -> int:
        return len(self.labels)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = (np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10 + 7 * index).astype(np.uint8)
        return image, self.labels[index]


def test_frequency_by_hand():
    dataset = TinyLabels()
    # pixels (255 not counted): a 2 + 1 + 3 = 6, b 3 + 0 + 2 = 5, c 0 + 5 + 0 = 5, d 0 -> of 16
    assert class_frequency(dataset, "pixel").tolist() == pytest.approx([6 / 16, 5 / 16, 5 / 16, 0.0])
    # images containing each class: a 3, b 2, c 1, d 0 -> of 6
    assert class_frequency(dataset, "image").tolist() == pytest.approx([3 / 6, 2 / 6, 1 / 6, 0.0])
    assert class_frequency(dataset, "image", limit=1).tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="mode must be one of"):
        class_frequency(dataset, "instance")


def test_erasing_changes_only_the_chosen_classes():
    dataset = TinyLabels()
    image, label = dataset.load_raw(0)
    fill = np.array([1, 2, 3], dtype=np.uint8)
    erased_image, erased_label = erase_classes(image, label, [1, 3], fill)
    chosen = label == 1
    assert np.array_equal(erased_image[chosen], np.tile(fill, (int(chosen.sum()), 1)))
    assert np.array_equal(erased_image[~chosen], image[~chosen])
    assert np.array_equal(erased_label, np.where(chosen, 255, label))
    assert dataset.load_raw(0)[1][0, 2] == 1  # the input is not modified


def test_erased_dataset_is_the_dataset_with_pixels_filled():
    dataset = SyntheticStreets("val", length=2, size=(32, 64), seed=4)
    unchanged = ErasedDataset(dataset, [])
    for a, b in zip(unchanged[1], dataset[1]):
        assert torch.equal(a, b)
    erased = ErasedDataset(dataset, [1, 6], fill="mean")
    raw_label = dataset.load_raw(1)[1]
    image, label = erased[1]
    original_image, original_label = dataset[1]
    chosen = torch.from_numpy(np.isin(raw_label, [1, 6]))
    assert chosen.any()
    assert torch.equal(label, torch.where(chosen, 255, original_label))
    # the mean colour normalises to (round(255 m) / 255 - m) / s, at most 0.5 / 255 / s away from 0
    expected = [(round(255 * m) / 255 - m) / s for m, s in zip(dataset.mean, dataset.std)]
    assert image[:, chosen].numpy() == pytest.approx(np.repeat(np.array(expected)[:, None], int(chosen.sum()), 1),
                                                     abs=1e-6)
    assert torch.equal(image[:, ~chosen], original_image[:, ~chosen])
    assert fill_colour(dataset, (0, 128, 255)).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="fill must be 'mean' or an RGB triple"):
        fill_colour(dataset, (0, 300, 0))
    with pytest.raises(ValueError, match=r"classes must be train ids in \[0, 8\)"):
        ErasedDataset(dataset, [8])
    for truncated in ([1.7], [True]):  # would have erased class 1
        with pytest.raises(TypeError, match="classes must be a sequence of integer train ids, got"):
            ErasedDataset(dataset, truncated)
    assert ErasedDataset(dataset, [np.int64(3), 1, 3]).classes == (1, 3)
    assert ErasedDataset(dataset, torch.tensor([3, 1])).classes == (1, 3)


def test_unbiased_iou_refuses_erase_sets_it_would_truncate_or_that_hold_the_class():
    """Checked before any evaluation: a float id would have erased another class."""
    dataset = SyntheticStreets("val", length=1, size=(32, 64), seed=4)
    sets = [[1], [0], [0], [0], [0], [0], [0], [0]]
    with pytest.raises(TypeError, match=r"erase_sets\[2\] must be a sequence of integer train ids, got \[1.5\]"):
        unbiased_iou(nn.Identity(), dataset, sets[:2] + [[1.5]] + sets[3:])
    with pytest.raises(ValueError, match=r"erase_sets\[1\] must be train ids in \[0, 8\), got \[9\]"):
        unbiased_iou(nn.Identity(), dataset, sets[:1] + [[9]] + sets[2:])
    with pytest.raises(ValueError, match=r"erase_sets\[3\] = \[3\] contains class 3 itself"):
        unbiased_iou(nn.Identity(), dataset, sets[:3] + [[3]] + sets[4:])
    # a tensor erase set is shown as the ids it erases, not as [tensor(3), tensor(1)]
    with pytest.raises(ValueError, match=r"^erase_sets\[3\] = \[1, 3\] contains class 3 itself$"):
        unbiased_iou(nn.Identity(), dataset, sets[:3] + [torch.tensor([3, 1])] + sets[4:])


def test_top_influential_ranks_and_skips_the_class_itself():
    nan = float("nan")
    influence = torch.tensor(
        [[nan, 0.2, 0.5, 0.2], [0.1, nan, nan, 0.3], [0.0, 0.0, nan, -0.1], [0.4, 0.4, 0.4, nan]],
        dtype=torch.float64,
    )
    assert top_influential(influence, 2) == ((2, 1), (3, 0), (0, 1), (0, 1))
    assert top_influential(influence, 3)[1] == (3, 0, 2)  # the NaN entry ranks last
    with pytest.raises(ValueError, match=r"count must be an int in \[1, 3\]"):
        top_influential(influence, 4)


def _numpy_iou(model: nn.Module, dataset, num_classes: int) -> np.ndarray:
    """Per-class IoU from argmax predictions, computed with NumPy (independent of ConfusionMatrix/evaluate)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            image, label = dataset[i]
            pred = predict(model.eval(), image[None]).argmax(1)[0].numpy()
            matrix += numpy_confusion(label.numpy(), pred, num_classes)
    return numpy_iou(matrix)


def _colour_model(seed: int) -> nn.Module:
    """A per-pixel linear classifier of the colours: a tiny 'segmentation model' whose predictions vary."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, 8, 1).eval()


def test_bias_vulnerability_matches_an_independent_computation():
    val = SyntheticStreets("val", length=4, size=(32, 64), seed=2)
    models = {"baseline": _colour_model(0), "dropclass": _colour_model(1)}
    report = bias_vulnerability(models, val, reference="dropclass", vulnerable_count=4,
                                options=EvalOptions(batch_size=4))
    for name, model in models.items():
        np.testing.assert_allclose(report.iou[name].numpy(), _numpy_iou(model, val, 8), equal_nan=True)
    assert torch.isnan(report.influence.diagonal()).all()
    bicycle = 6
    erased_iou = _numpy_iou(models["dropclass"], ErasedDataset(val, [bicycle]), 8)
    expected = report.iou["dropclass"].numpy() - erased_iou
    expected[bicycle] = np.nan
    np.testing.assert_allclose(report.influence[:, bicycle].numpy(), expected, equal_nan=True)
    assert report.top == top_influential(report.influence, 3)
    for c in (0, 5, 7):  # I*: class c's IoU on the scenes with its Top-3 erased
        star = _numpy_iou(models["baseline"], ErasedDataset(val, report.top[c]), 8)[c]
        np.testing.assert_allclose(report.iou_star["baseline"][c].item(), star, equal_nan=True)
    order = vulnerability_order(report.delta("dropclass"))
    assert report.vulnerable == order[:4]

    table = bias_table([report], {"baseline": "Baseline", "dropclass": "Ours"})
    lines = table.to_markdown().splitlines()
    assert lines[0] == "|  | " + " | ".join([val.class_names[c] for c in order] + ["mIoU", "mIoU*"]) + " |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| Baseline (I)", "| Baseline (I*)", "| Δ (Baseline)", "| Ours (I)", "| Ours (I*)", "| Δ (Ours)"
    ]
    cells = lines[3].strip("| ").split(" | ")[1:]  # Baseline (I*)
    star = report.iou_star["baseline"]
    expected_cells = [star[c].item() * 100 for c in order]
    expected_cells += [np.nanmean(star.numpy()) * 100, np.nanmean(star.numpy()[order[:4]]) * 100]
    for cell, value in zip(cells, expected_cells, strict=True):
        assert cell == ("n/a" if np.isnan(value) else f"{value:.1f}".replace("-0.0", "0.0"))
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0][:2] == ["row", "stat"] and len(rows) == 7 and rows[1][1] == "value"

    two_seeds = bias_table([report, report]).to_markdown().splitlines()
    assert " ± 0.0" in two_seeds[2]
    assert report.reference == "dropclass"
    other = dataclasses.replace(report, reference="baseline")
    with pytest.raises(ValueError, match=r"share reference: reports\[1\] has 'baseline', reports\[0\] 'dropclass'"):
        bias_table([report, other])


def test_frequency_table_layout_and_values():
    names = ("a", "b", "c", "d")
    frequency = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    base = torch.tensor([[0.50, 0.20, 0.60, 0.40], [0.70, 0.40, 0.60, 0.40]], dtype=torch.float64)
    ours = torch.tensor([[0.55, 0.30, 0.60, 0.30], [0.65, 0.50, 0.60, 0.50]], dtype=torch.float64)
    table = frequency_table(names, frequency, base, ours, labels=("Baseline", "Ours"), frequency_label="Instance %")
    lines = table.to_markdown().splitlines()
    assert lines[0] == "|  | b † | d † | c | a | mIoU | mIoU† |"
    assert lines[2] == "| Instance % | 10.0 | 20.0 | 30.0 | 40.0 | n/a | n/a |"
    # b: baseline 20, 40 -> 30 ± 14.1; ours 30, 50; Δ 10, 10; Δ% 50, 25 -> 37.5 ± 17.7
    assert lines[3].split(" | ")[1] == "30.0 ± 14.1"
    assert lines[5].split(" | ")[1] == "10.0 ± 0.0"
    assert lines[6].split(" | ")[1] == "37.5 ± 17.7"
    # mIoU† over b and d: baseline (20+40)/2=30, (40+40)/2=40; ours (30+30)/2=30, (50+50)/2=50 -> Δ 0, 10
    assert lines[5].split(" | ")[-1] == "5.0 ± 7.1 |"
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[1] == ["Instance %", "value", "10.0", "20.0", "30.0", "40.0", "", ""]
    assert rows[2][:3] == ["Baseline", "mean", "30.0"] and rows[3][:3] == ["Baseline", "std", "14.14"]


def test_table_rejects_ragged_rows_and_options_reject_bad_values():
    with pytest.raises(ValueError, match="row 'x' has 1 cells for 2 columns"):
        Table(("a", "b"), (("x", (np.zeros(1),)),))
    with pytest.raises(ValueError, match="amp must be one of"):
        EvalOptions(amp="fp8")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        EvalOptions(batch_size=0)


def test_probe_runs_end_to_end_on_a_tiny_model():
    torch.manual_seed(0)
    model = build_model("hrnet_v1", 8, dropclass=True)
    train_set = SyntheticStreets("train", length=4, size=(32, 64), seed=1)
    train_set.transform = TrainTransform((32, 64), mean=train_set.mean, std=train_set.std)
    val = SyntheticStreets("val", length=2, size=(32, 64), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    result = reconstruction_probe(model, train_set, val, dropped_class=1, iters=3, batch_size=2, lr=0.5,
                                  options=EvalOptions(batch_size=2))
    assert result.class_name == "road" and len(result.losses) == 3
    assert all(np.isfinite(result.losses)) and result.losses[-1] != result.losses[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model stays frozen
    assert result.iou_model == pytest.approx(_numpy_iou(model, val, 8)[1])
    table = probe_table([result, result]).to_markdown().splitlines()
    assert table[2].startswith("| road | ") and table[2].count("±") == 4
    with pytest.raises(TypeError, match="must be a SegmentationModel with DropClass"):
        reconstruction_probe(build_model("hrnet_v1", 8, dropclass=False), train_set, val, 1)
    with pytest.raises(ValueError, match="lr must be a finite positive number, got inf"):
        reconstruction_probe(model, train_set, val, dropped_class=1, lr=float("inf"))


def test_batchnorm_recalibration_averages_the_batch_statistics():
    torch.manual_seed(0)
    model = build_model("hrnet_v1", 8, dropclass=True)
    dataset = SyntheticStreets("train", length=4, size=(32, 64), seed=1)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
               and isinstance(v, torch.Tensor)}
    (drop_path,) = [m for m in model.modules() if isinstance(m, DropClass)]
    drop_path.step = 5
    recalibrate_batchnorm(model, dataset, batches=np.int64(2), batch_size=np.int64(2), seed=3)  # NumPy ints too
    assert not model.training and model.bn1.momentum == 0.01
    assert drop_path.step == 5  # the pass runs the drop path but is not a training step
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 4\] .* got 5"):
        recalibrate_batchnorm(model, dataset, batches=2, batch_size=5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    # bn1 normalises conv1's output: its statistics are the average of the two batches' mean and unbiased variance
    sampler = ResumableSampler(4, 2, seed=3)
    sampler.set_epoch(0)
    order = list(sampler)
    means, variances = [], []
    with torch.no_grad():
        for batch in (order[:2], order[2:]):
            x = model.conv1(torch.stack([dataset[i][0] for i in batch])).transpose(0, 1).reshape(64, -1)
            means.append(x.mean(1))
            variances.append(x.var(1, unbiased=True))
    torch.testing.assert_close(model.bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.bn1.running_var, torch.stack(variances).mean(0), rtol=1e-4, atol=1e-6)


class _OwnModel(nn.Module):
    """A user's model: BatchNorm on the images, then a 1x1 classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3, momentum=0.01)
        self.cls = nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cls(self.norm(images))


@pytest.mark.parametrize("attached", [False, True], ids=["plain", "attach_dropclass"])
def test_batchnorm_recalibration_of_a_users_own_model_and_dataset(attached):
    """Any model (plain, or wrapped by attach_dropclass) and any dataset of (image, label) pairs: BatchNorm on the
    images ends with the images' channel mean over the batches, and the DropClass step count is left as it was."""
    torch.manual_seed(0)
    scale, shift = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), torch.tensor([4.0, -1.0, 0.5]).view(3, 1, 1)
    images = torch.randn(6, 3, 5, 7) * scale + shift
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(6, 5, 7, dtype=torch.long))  # no set_epoch
    model = _OwnModel()
    if attached:
        model = attach_dropclass(model, "cls")
        model.dropclass.step = 7
    returned = recalibrate_batchnorm(model, dataset, batches=3, batch_size=2)
    norm = model.model.norm if attached else model.norm
    assert returned is model and not model.training and norm.momentum == 0.01
    torch.testing.assert_close(norm.running_mean, images.mean((0, 2, 3)))  # three equal batches cover the dataset
    if attached:
        assert model.dropclass.step == 7


def test_batchnorm_recalibration_refuses_a_dropclass_it_cannot_drive():
    class Standalone(nn.Module):  # DropClass called in the model's own forward: it would need progress or keep
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(3)
            self.head = DropClass(nn.Conv2d(3, 4, 1))

    dataset = torch.utils.data.TensorDataset(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="model must be a SegmentationModel, the DropClassModel of attach_dropclass "
                                        "or a model without DropClass, got Standalone"):
        recalibrate_batchnorm(Standalone(), dataset, batches=1, batch_size=2)


def test_synthetic_experiment_writes_its_report(tmp_path):
    doc = tmp_path / "docs" / "synthetic_experiment.md"
    argv = ["synthetic", "--iters", "1", "--seeds", "0", "--train-length", "4", "--val-length", "2",
            "--image-size", "32", "64", "--crop-size", "32", "64", "--batch-size", "2", "--probe-iters", "1",
            "--bn-batches", "1", "--workers", "0", "--eval-batch-size", "2", "--output", str(tmp_path / "runs"),
            "--doc", str(doc)]
    assert main(argv) == 0
    text = doc.read_text()
    assert "python -m dropclass_fast.analysis synthetic --iters 1 --seeds 0" in text
    for heading in ("## Summary", "## Table B-1", "## Table C-2 layout", "## Reconstruction probe",
                    "## BatchNorm statistics", "## Figures"):
        assert heading in text
    saved = json.loads((tmp_path / "runs" / "seed0" / "analysis.json").read_text())
    miou = saved["summary"]["baseline"]["miou"] * 100
    assert f"| mIoU (I) | {miou:.1f} |".replace("-0.0", "0.0") in text
    assert len(saved["top"]) == 8 and all(len(t) == 3 for t in saved["top"])
    figures = doc.parent / "synthetic_experiment"
    for name in ("iou.png", "iou_star.png", "loss.png", "predictions.png", "unbiased.png"):
        assert (figures / name).read_bytes()[:8] == PNG
        assert f"](synthetic_experiment/{name})" in text
    for name in ("table_b1", "table_c2", "probe", "summary"):
        assert ",stat," in (figures / f"{name}.csv").read_text().splitlines()[0]


def test_command_line_frequency_and_bias(tmp_path, capsys):
    assert main(["frequency", "--synthetic-length", "3", "--synthetic-size", "32", "64", "--output",
                 str(tmp_path)]) == 0
    frequency = class_frequency(SyntheticStreets("train", length=3, size=(32, 64), seed=1000))
    rows = {r[0]: r for r in csv.reader(io.StringIO((tmp_path / "frequency_pixel.csv").read_text()))}
    assert float(rows["road"][2]) == pytest.approx(100 * frequency[1].item(), abs=0.005)
    paths = {}
    for method in ("baseline", "dropclass"):
        torch.manual_seed(len(method))
        paths[method] = tmp_path / f"{method}.pt"
        torch.save(build_model("hrnet_v1", 8, dropclass=method == "dropclass").state_dict(), paths[method])
    assert main(["bias", "--synthetic-length", "2", "--synthetic-size", "32", "64", "--baseline",
                 str(paths["baseline"]), "--dropclass", str(paths["dropclass"]),  # mIoU* over min(9, K // 2) = 4
                 "--frequency", "image", "--bn-batches", "1", "--bn-batch-size", "2", "--batch-size", "2",
                 "--crop-size", "32", "64",
                 "--output", str(tmp_path)]) == 0
    assert (tmp_path / "table_b1.md").read_text().splitlines()[2].startswith("| Baseline (I) | ")
    assert (tmp_path / "table_c2.md").read_text().splitlines()[2].startswith("| Instance % | ")
    assert "table_b1:" in capsys.readouterr().out
    assert main(["probe", "--synthetic-length", "2", "--synthetic-size", "32", "64", "--crop-size", "32", "64",
                 "--checkpoint", str(paths["dropclass"]), "--classes", "person", "rider", "--iters", "1",
                 "--train-batch-size", "2", "--output", str(tmp_path)]) == 0
    lines = (tmp_path / "probe.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| person", "| rider"]
    with pytest.raises(ValueError, match="--classes must name classes of synthetic"):
        main(["probe", "--checkpoint", str(paths["dropclass"]), "--classes", "horse"])


def test_command_line_refuses_options_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="--batch-size must be 1 for --dataset voc .* got 8"):
        main(["bias", "--dataset", "voc", "--data-root", str(tmp_path / "absent"), "--baseline", "b.pt",
              "--dropclass", "d.pt"])
    with pytest.raises(SystemExit):  # erasing is the bias analysis's: probe has no --fill
        main(["probe", "--checkpoint", "d.pt", "--classes", "person", "--fill", "mean"])
    assert "unrecognized arguments: --fill mean" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("top_count", 8, r"top_count must be an int in \[1, 7\]"), ("vulnerable_count", 9, r"in \[1, 8\], got 9"),
     ("fill", (1, 2), "fill must be 'mean' or an RGB triple"),
     ("probe_lr", 0.0, "probe_lr must be a finite positive number, got 0.0"),
     ("lr", True, "lr must be a finite positive number, got True"),
     ("seeds", (0, 2**32), r"seed must be an int in \[0, 2\*\*32\), got 4294967296"),
     ("reference", "teacher", r"reference must be one of \('baseline', 'dropclass'\), got 'teacher'")],
)
def test_experiment_config_refuses_values_that_would_fail_after_training(field, value, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**{field: value})


def test_experiment_config_takes_numpy_numbers_as_python_ones():
    config = ExperimentConfig(seeds=(np.int64(4), np.uint32(5)), lr=np.float32(0.5), probe_lr=np.float64(0.25),
                              iters=np.int32(7), top_count=np.int64(2), vulnerable_count=np.int16(3))  # fmt: skip
    assert config.seeds == (4, 5) and {type(seed) for seed in config.seeds} == {int}
    assert (config.lr, config.probe_lr) == (0.5, 0.25) and type(config.lr) is type(config.probe_lr) is float
    counts = (config.iters, config.top_count, config.vulnerable_count)
    assert counts == (7, 2, 3) and {type(count) for count in counts} == {int}
    json.dumps(_json_values(dataclasses.asdict(config)))  # what the experiment writes


def test_bias_vulnerability_checks_top_count_before_evaluating():
    class Unusable(nn.Module):
        def forward(self, images):
            raise AssertionError("evaluated before the arguments were checked")

    dataset = SyntheticStreets("val", length=2, size=(32, 64), seed=1)
    with pytest.raises(ValueError, match=r"top_count must be an int in \[1, 7\] .* got 0"):
        bias_vulnerability({"baseline": Unusable()}, dataset, "baseline", top_count=0, vulnerable_count=4)


def test_frequency_defaults_to_the_papers_mode_per_dataset():
    assert [paper_frequency_mode(name) for name in ("cityscapes", "voc", "synthetic")] == ["pixel", "image", "pixel"]
    assert build_parser().parse_args(["frequency", "--dataset", "voc"]).mode is None  # resolved per dataset


def test_analysis_json_values_have_no_nan():
    value = {"iou": torch.tensor([0.5, float("nan")]), "probe": [{"iou_model": float("nan"), "name": "person"}]}
    assert _json_values(value) == {"iou": [0.5, None], "probe": [{"iou_model": None, "name": "person"}]}
