"""The training engine's parts: recipes, schedule, sampler, checkpoints, log, metrics."""

from __future__ import annotations

import csv
import json
import random
import re

import numpy as np
import pytest
import torch

from dropclass_fast.train import ResumableSampler, TrainConfig, evaluate, load_checkpoint, poly_lr, save_atomic
from dropclass_fast.train.checkpoint import rng_state, set_rng_state
from dropclass_fast.train.cli import main
from dropclass_fast.train.config import build_parser, config_from_args
from dropclass_fast.train.distributed import init_distributed
from dropclass_fast.train.logger import CsvLog


def test_recipe_defaults_follow_table_e3_and_the_linear_scaling_rule():
    hrnet = TrainConfig(dataset="cityscapes", model="hrnet_v2", method="baseline")
    assert hrnet.per_process_batch() == 12
    assert hrnet.learning_rate(world_size=4) == pytest.approx(0.04)
    assert hrnet.learning_rate(world_size=1) == pytest.approx(0.01)
    assert hrnet.num_epochs() == 484
    assert TrainConfig(dataset="cityscapes", model="hrnet_v2", method="dropclass").num_epochs() == 968
    deeplab = TrainConfig(dataset="voc", model="deeplabv3", method="dropclass", batch_size=6)
    assert deeplab.learning_rate(world_size=2) == pytest.approx(0.012 * 12 / 48)
    assert deeplab.num_epochs() == 400
    assert deeplab.crop() == (480, 480)
    assert TrainConfig(dataset="voc", model="hrnet_v1", lr=0.5).learning_rate(world_size=8) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "ade20k"}, "no recipe for dataset 'ade20k'"),
        ({"model": "resnet"}, "model 'resnet'"),
        ({"method": "mixup"}, "method must be one of"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive int or None, got 0"),
        ({"batch_size": True}, "batch_size must be a positive int or None, got True"),
        ({"iters": -3}, "iters must be a positive int or None, got -3"),
        ({"iters": 2.5}, "iters must be a positive int or None, got 2.5"),
        ({"eval_batch_size": None}, "eval_batch_size must be a positive int, got None"),
        ({"momentum": -0.1}, "momentum must be a finite non-negative number, got -0.1"),
        ({"poly_power": float("inf")}, "poly_power must be a finite non-negative number, got inf"),
        ({"alpha": "10"}, "alpha must be a finite non-negative number, got '10'"),
        ({"lr": float("nan")}, "lr must be a finite positive number"),
        ({"seed": 2**32}, r"seed must be an int in \[0, 2\*\*32\), got 4294967296"),
        ({"crop_size": (0, 64)}, r"crop_size must be two positive ints \(height, width\), got \(0, 64\)"),
        ({"crop_size": (64.0, 64)}, r"crop_size must be two positive ints \(height, width\), got \(64.0, 64\)"),
        ({"workers": -1}, "workers must be a non-negative int, got -1"),
        ({"dataset": "voc", "eval_batch_size": 2}, "eval_batch_size must be 1 for dataset 'voc' .* got 2"),
        ({"iters": 5, "epochs": 2}, "give iters or epochs, not both .* got iters=5, epochs=2"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_takes_numpy_numbers():
    """A learning rate or seed read with NumPy (a sweep's grid, say) is taken as the Python number."""
    config = TrainConfig(dataset="voc", model="hrnet_v1", lr=np.float32(0.25), seed=np.int64(3), alpha=np.float32(5),
                         iters=np.int64(10), crop_size=(np.int64(64), np.int64(96)))  # fmt: skip
    assert (config.lr, config.seed) == (0.25, 3) and (type(config.lr), type(config.seed)) == (float, int)
    config.eval_limit = np.int64(4)  # set after construction: to_dict still writes a Python number
    written = json.loads(json.dumps(config.to_dict()))  # what the trainer writes to config.json
    assert written["eval_limit"] == 4
    assert (written["seed"], written["alpha"], written["iters"], written["crop_size"]) == (3, 5.0, 10, [64, 96])


def test_command_line_builds_the_config():
    args = build_parser(("voc", "synthetic"), "x").parse_args(
        ["--model", "deeplabv3", "--method", "baseline", "--iters", "7", "--crop-size", "64", "96",
         "--amp", "bf16", "--no-background", "--resume", "--data-root", "/data/voc"]
    )
    config = config_from_args(args)
    assert (config.dataset, config.model, config.method, config.iters) == ("voc", "deeplabv3", "baseline", 7)
    assert config.crop() == (64, 96) and config.amp == "bf16" and config.resume == "auto"
    assert config.dataset_options == {"no_background": True, "sbd": False}
    parser = build_parser(("voc", "synthetic"), "x")
    synthetic = config_from_args(parser.parse_args(["--dataset", "synthetic", "--synthetic-length", "0"]))
    assert synthetic.dataset_options == {"length": 0}  # refused by the dataset, not dropped for the default
    with pytest.raises(ValueError, match="--synthetic-length is for --dataset synthetic, got --dataset voc"):
        config_from_args(parser.parse_args(["--data-root", "/data/voc", "--synthetic-length", "8"]))
    with pytest.raises(ValueError, match="--sbd is for --dataset voc, got --dataset synthetic"):
        config_from_args(parser.parse_args(["--dataset", "synthetic", "--sbd"]))  # it was silently ignored
    with pytest.raises(ValueError, match="--data-root is required for --dataset voc"):
        config_from_args(parser.parse_args([]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "cityscapes"], "--data-root is required for --dataset cityscapes"),
        (["--dataset", "synthetic", "--iters", "2", "--epochs", "3"], "give iters or epochs, not both"),
        (["--dataset", "cityscapes", "--data-root", "/nonexistent/x"], "--data-root /nonexistent/x is not a folder"),
    ],
)
def test_command_line_refusals_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv, datasets=("cityscapes", "synthetic"), description="x", prog="train")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage: train") and f"train: error: {message}" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"amp": "fp32"}, r"amp must be one of \('none', 'bf16', 'fp16'\), got 'fp32'"),
        ({"limit": -1}, "limit must be a positive int or None, got -1"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"workers": -2}, "workers must be a non-negative int, got -2"),
    ],
)
def test_evaluate_refuses_bad_options_before_it_evaluates(options, message):
    """Checked first: a bad amp was a bare KeyError, a negative limit an empty matrix (every IoU NaN)."""
    with pytest.raises(ValueError, match=message):
        evaluate(torch.nn.Identity(), [], 2, context=None, **options)


def test_command_line_help_names_the_defaults():
    text = " ".join(build_parser(("cityscapes", "synthetic"), "x").format_help().split())
    for shown in ("--model {hrnet_v1,hrnet_v2,deeplabv3} (default: hrnet_v2)", "(default: dropclass)",
                  "--alpha ALPHA weight of L_sup (default: 10.0)", "(default: 1000)", "(default: cityscapes)"):
        assert shown in text, shown
    assert "(default: False)" not in text and "(default: True)" not in text  # switches say nothing


def test_poly_lr_matches_the_formula():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
    with pytest.raises(ValueError, match=r"iteration must be an int in \[0, 100\] \(total\), got 101"):
        poly_lr(0.01, 101, 100)  # the formula would give a complex number
    with pytest.raises(ValueError, match="total must be a positive int, got 0"):
        poly_lr(0.01, 0, 0)


def test_config_rejects_a_non_bool_switch():
    with pytest.raises(TypeError, match="per_sample must be a bool, got 'yes'"):
        TrainConfig(per_sample="yes")


def test_sampler_shards_disjointly_and_resumes_mid_epoch():
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(20, batch_size=2, num_replicas=3, rank=rank, seed=5)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [6, 6, 6]  # 20 // (2 * 3) = 3 global batches
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 18 and set(flat) <= set(range(20))
    again = ResumableSampler(20, batch_size=2, num_replicas=3, rank=1, seed=5)
    again.set_epoch(1, skip=4)
    assert list(again) == shards[1][4:]
    again.set_epoch(2)
    assert list(again) != shards[1]  # a new epoch, a new order
    ordered = ResumableSampler(7, batch_size=3, shuffle=False)
    assert list(ordered) == [0, 1, 2, 3, 4, 5]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableSampler(5, batch_size=4, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\) \(num_replicas\), got 2"):
        ResumableSampler(50, batch_size=4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ResumableSampler(50, batch_size=0)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="num_replicas must be a positive int, got 1.0"):
        ResumableSampler(50, batch_size=4, num_replicas=1.0)
    with pytest.raises(ValueError, match=r"skip must be an int in \[0, 48\] \(this rank's samples per epoch\), got 49"):
        ResumableSampler(50, batch_size=4).set_epoch(0, skip=49)


@pytest.mark.parametrize(
    ("epoch", "skip", "message"),
    [
        (-1, 0, "epoch must be a non-negative int, got -1"),  # was drawn as a valid epoch of its own
        (1.0, 0, "epoch must be a non-negative int, got 1.0"),  # was a TypeError from the seed mixing
        (1, True, r"skip must be an int in \[0, 48\] .*, got True"),  # was read as skip=1
        (1, 2.0, r"skip must be an int in \[0, 48\] .*, got 2.0"),  # was a TypeError from slicing
    ],
)
def test_sampler_set_epoch_refuses_what_is_not_a_count(epoch, skip, message):
    sampler = ResumableSampler(50, batch_size=4, seed=3)
    with pytest.raises(ValueError, match=message):
        sampler.set_epoch(epoch, skip=skip)
    assert (sampler.epoch, sampler.skip) == (0, 0)  # a refused call changes nothing


def test_sampler_set_epoch_takes_numpy_ints():
    sampler = ResumableSampler(50, batch_size=4, seed=3)
    sampler.set_epoch(2, skip=5)
    expected = list(sampler)
    sampler.set_epoch(np.int64(2), skip=np.int64(5))  # was an OverflowError from the seed mixing
    assert list(sampler) == expected and len(expected) == 48 - 5
    assert (type(sampler.epoch), type(sampler.skip)) == (int, int)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("refuses to be pickled")


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt" / "checkpoint.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "iteration": 3}, path)
    assert load_checkpoint(path)["iteration"] == 3
    with pytest.raises(RuntimeError, match="refuses to be pickled"):  # fails halfway through writing
        save_atomic({"model": {"w": torch.ones(2)}, "iteration": 4, "bad": _Unpicklable()}, path)
    assert load_checkpoint(path)["iteration"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(()))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = _draws()
    set_rng_state(legacy)  # the NumPy state tuple that checkpoints of earlier versions hold
    assert _draws() == expected


def test_cuda_rng_states_are_restored_on_the_devices_visible_now(monkeypatch):
    """A checkpoint saved with two GPUs visible resumes with one: its first state goes to device 0."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    saved = [torch.full((4,), 1, dtype=torch.uint8), torch.full((4,), 2, dtype=torch.uint8)]
    set_rng_state({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                   "cuda": saved})  # fmt: skip
    assert len(restored) == 1 and restored[0][1] == 0 and torch.equal(restored[0][0], saved[0])


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_csv_log_drops_rows_after_the_resumed_iteration(tmp_path):
    log = CsvLog(tmp_path / "log.csv")
    for i in range(1, 6):
        log.write({"iteration": i, "loss": 1.0 / i})
    CsvLog(tmp_path / "log.csv", resume_from=3).write({"iteration": 4, "loss": 9.0})
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) == 9.0


@pytest.mark.parametrize("header", ["step,loss", "iteration,loss,aux", "iteration,loss"])
def test_csv_log_refuses_to_resume_a_file_with_other_columns(tmp_path, header):
    path = tmp_path / "log.csv"
    text = f"{header}\n1,0.5,0.1\n"
    path.write_text(text)
    columns = re.escape(str(header.split(",")))
    with pytest.raises(ValueError, match=rf"^cannot resume the log .*log\.csv: its columns are {columns}, not the log"):
        CsvLog(path, resume_from=1)
    assert path.read_text() == text


def test_csv_log_resumes_an_empty_file_as_a_new_log(tmp_path):
    (tmp_path / "log.csv").write_text("")
    CsvLog(tmp_path / "log.csv", resume_from=3).write({"iteration": 4})
    with (tmp_path / "log.csv").open() as f:
        assert [r["iteration"] for r in csv.DictReader(f)] == ["4"]


def test_csv_log_refuses_keys_that_are_not_columns(tmp_path):
    log = CsvLog(tmp_path / "log.csv")
    with pytest.raises(ValueError, match=r"row has keys \['aux', 'los'\] that are not log columns"):
        log.write({"iteration": 1, "los": 0.5, "aux": 0.1})
    with (tmp_path / "log.csv").open() as f:
        assert list(csv.DictReader(f)) == []


@pytest.fixture
def no_launch_environment(monkeypatch):
    """No torchrun variables, whatever the environment the tests run in holds."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE must be a positive int, got 'two'"),
        ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE must be a positive int, got 0"),
        ({"RANK": "-1"}, "environment variable RANK must be a non-negative int, got -1"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 without RANK and LOCAL_RANK: launch with torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE is 2 without LOCAL_RANK: launch with torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
         r"environment variable RANK must be an int in \[0, 1\] \(WORLD_SIZE - 1\), got 2"),
    ],
)  # fmt: skip
def test_init_distributed_refuses_a_bad_launch_environment(monkeypatch, no_launch_environment, environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{message}$"):
        init_distributed("cpu")


def test_init_distributed_without_torchrun_is_one_process(no_launch_environment):
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.local_rank, context.device) == (0, 1, 0, torch.device("cpu"))
    assert context.is_main and not context.distributed
