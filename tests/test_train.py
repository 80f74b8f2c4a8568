"""The training engine end to end on CPU: the examples, exact resume, DDP with gloo."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port

from dropclass_fast.models.checkpoints import read_state_dict
from dropclass_fast.train import TrainConfig, engine, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# A tiny synthetic dataset and crop: every run here takes seconds.
SYNTHETIC = {"length": 8, "size": (48, 64)}
SMALL = {
    "dataset": "synthetic",
    "model": "hrnet_v1",
    "batch_size": 2,
    "crop_size": (48, 64),
    "workers": 0,
    "eval_batch_size": 4,
    "progress_bar": False,
    "dataset_options": SYNTHETIC,
}


def _run_example(script: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(ROOT / "examples" / script), "--dataset", "synthetic", "--model", "hrnet_v1",
        "--iters", "2", "--batch-size", "2", "--crop-size", "48", "64", "--workers", "0",
        "--synthetic-length", "8", "--output", str(output), "--no-progress-bar", *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.parametrize("script", ["train_cityscapes.py", "train_voc.py"])
def test_example_trains_two_iterations_and_evaluates(tmp_path, script):
    result = _run_example(script, tmp_path, "--method", "dropclass")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mIoU |" in result.stdout
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("iteration,epoch,progress,lr,loss,ce,ce_drop,sup")
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["iteration"] == 2
    assert (tmp_path / "results.json").is_file() and (tmp_path / "model.pt").is_file()


def _final_state(output: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(output / "checkpoint.pt")["model"]


@pytest.mark.parametrize("method", ["baseline", "dropclass"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, method):
    common = {**SMALL, "method": method, "iters": 5, "checkpoint_every": 2}
    straight = train(TrainConfig(**common, output=str(tmp_path / "straight")))
    assert straight.iteration == 5
    # pre-empted after 3 iterations: the last checkpoint is from iteration 2 ...
    stopped = train(TrainConfig(**common, output=str(tmp_path / "resumed"), stop_after=3))
    assert stopped.iteration == 3 and stopped.iou is None
    # ... and a kill loses what came after it: put the iteration-2 checkpoint back
    state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert state["iteration"] == 3
    # the analysis commands read the model out of a checkpoint with torch.load(weights_only=True)
    weights = read_state_dict(tmp_path / "resumed" / "checkpoint.pt")
    assert weights.keys() == state["model"].keys()
    train(TrainConfig(**common, output=str(tmp_path / "two"), stop_after=2))
    os.replace(tmp_path / "two" / "checkpoint.pt", tmp_path / "resumed" / "checkpoint.pt")
    resumed = train(TrainConfig(**common, output=str(tmp_path / "resumed"), resume="auto"))
    assert resumed.iteration == 5
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    torch.testing.assert_close(straight.iou, resumed.iou, rtol=0, atol=0, equal_nan=True)
    rows = (tmp_path / "resumed" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5"]
    straight_rows = (tmp_path / "straight" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:8] for r in rows] == [r.split(",")[:8] for r in straight_rows]


def test_resume_refuses_a_different_run(tmp_path):
    train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path)))
    with pytest.raises(ValueError, match="method='baseline'"):
        train(TrainConfig(**SMALL, method="dropclass", iters=2, output=str(tmp_path), resume="auto"))
    with pytest.raises(ValueError, match="it was trained with amp='none', this run has amp='fp16'"):
        train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path), resume="auto", amp="fp16"))
    with pytest.raises(ValueError, match=r"it was trained with lr=None, this run has lr=5.0"):
        train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path), resume="auto", lr=5.0))
    # alpha weighs L_sup, which the baseline does not have: it does not stop a baseline from resuming
    train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path), resume="auto", alpha=3.0))


def test_resume_accepts_a_checkpoint_whose_settings_this_version_refuses(tmp_path):
    """A run saved by a version that allowed both iters and epochs resumes (without epochs): the saved settings
    are compared, not validated again."""
    train(TrainConfig(**SMALL, method="baseline", iters=2, stop_after=1, output=str(tmp_path)))
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    state["config"]["epochs"] = 7
    torch.save(state, path)
    result = train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path), resume="auto"))
    assert result.iteration == 2
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        missing = str(tmp_path / "nothing.pt")
        train(TrainConfig(**SMALL, method="baseline", iters=2, output=str(tmp_path), resume=missing))


def test_the_package_command_line_offers_every_dataset(tmp_path):
    command = [sys.executable, "-m", "dropclass_fast.train", "--help"]
    help_text = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert help_text.startswith("usage: python -m dropclass_fast.train ")
    assert "--dataset {cityscapes,voc,synthetic}" in help_text and "--no-background" in help_text


def test_deeplabv3_refuses_one_sample_per_batch_norm(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be at least 2 for model 'deeplabv3' .* got 1"):
        train(TrainConfig(**{**SMALL, "batch_size": 1, "model": "deeplabv3"}, iters=1, output=str(tmp_path)))


def _ddp_worker(rank: int, world_size: int, port: int, output: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world_size),
         "LOCAL_RANK": str(rank)}
    )
    torch.set_num_threads(1)
    losses = []
    step = engine._Run._step

    def recording_step(self, images, labels):
        parts = step(self, images, labels)
        losses.append(float(parts["loss"]))
        return parts

    engine._Run._step = recording_step
    result = train(TrainConfig(**SMALL, method="dropclass", iters=3, output=output))
    torch.save({"iou": result.iou, "model": result.model.state_dict(), "losses": losses},
               Path(output) / f"rank{rank}.pt")


def test_ddp_two_processes_with_gloo(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["config"]["method"] == "dropclass"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # the confusion matrix is summed over both ranks: both report the same IoU
    assert torch.allclose(ranks[0]["iou"], ranks[1]["iou"], equal_nan=True)
    # DDP averaged the gradients of two different shards: both replicas hold the same weights, and both
    # evaluated rank 0's BatchNorm statistics (on CPU, without SyncBatchNorm, each rank's own last step moved them)
    for key, value in ranks[0]["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, ranks[1]["model"][key]), key
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]
    # each rank's loss is that of its own shard: the log has their mean
    logged = [float(r.split(",")[header.split(",").index("loss")]) for r in rows]
    per_rank = [ranks[r]["losses"] for r in range(2)]
    assert per_rank[0] != per_rank[1]
    assert logged == pytest.approx([(a + b) / 2 for a, b in zip(*per_rank)], rel=1e-5)


def _logged_loss_terms(output: Path) -> list[list[float]]:
    """``loss, ce, ce_drop, sup`` of each logged step."""
    rows = list(csv.DictReader((output / "log.csv").read_text().splitlines()))
    return [[float(row[name]) for name in ("loss", "ce", "ce_drop", "sup")] for row in rows]


@pytest.fixture(scope="module")
def float32_loss_terms(tmp_path_factory) -> list[list[float]]:
    output = tmp_path_factory.mktemp("float32")
    train(TrainConfig(**SMALL, method="dropclass", iters=2, output=str(output)))
    return _logged_loss_terms(output)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tmp_path, amp, float32_loss_terms):
    """The same two steps as in float32 (same data, weights and masks), to mixed precision's accuracy."""
    result = train(TrainConfig(**SMALL, method="dropclass", iters=2, amp=amp, channels_last=True, output=str(tmp_path)))
    assert result.iteration == 2 and result.iou.shape == (8,)
    terms = _logged_loss_terms(tmp_path)
    assert terms[1][2] > 0 and terms[1][3] > 0  # the second step drops a class
    assert terms == [pytest.approx(step, rel=2e-2) for step in float32_loss_terms]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["scaler"] != {} if amp == "fp16" else state["scaler"] == {}
    weights = [v for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in weights)  # autocast leaves the parameters in float32


def test_pretrained_weights_are_loaded_before_training(tmp_path, capsys):
    from dropclass_fast.models import build_model, to_official_state_dict

    source = build_model("hrnet_v1", num_classes=8, dropclass=True)
    torch.nn.init.constant_(source.last_layer[3].classifier.bias, 0.25)
    torch.save(to_official_state_dict(source), tmp_path / "official.pt")
    config = TrainConfig(**SMALL, method="dropclass", iters=1, lr=1e-12, pretrained=str(tmp_path / "official.pt"),
                         output=str(tmp_path / "run"))
    result = train(config)
    assert "loaded" in capsys.readouterr().out
    bias = result.model.dropclass.classifier.bias
    torch.testing.assert_close(bias, torch.full_like(bias, 0.25), rtol=0, atol=1e-6)
    torch.save(build_model("deeplabv3", num_classes=8, dropclass=False).state_dict(), tmp_path / "other_model.pt")
    with pytest.raises(ValueError, match="other_model.pt.* does not fit this HRNet: 355 backbone tensors"):
        train(TrainConfig(**SMALL, method="dropclass", iters=1, pretrained=str(tmp_path / "other_model.pt"),
                          output=str(tmp_path / "wrong")))


def test_bn_recalibration_replaces_the_running_statistics_before_evaluating(tmp_path):
    result = train(TrainConfig(**SMALL, method="dropclass", iters=2, bn_recalibration=3, output=str(tmp_path)))
    trained = load_checkpoint(tmp_path / "checkpoint.pt")["model"]  # written before the re-estimation
    final = torch.load(tmp_path / "model.pt", weights_only=False)
    changed = [k for k in trained if k.endswith("running_mean") and not torch.equal(trained[k], final[k])]
    assert len(changed) == sum(k.endswith("running_mean") for k in trained)  # every BatchNorm re-estimated
    assert all(torch.equal(trained[k], final[k]) for k in trained if k.endswith("weight"))  # weights untouched
    assert not result.model.training
