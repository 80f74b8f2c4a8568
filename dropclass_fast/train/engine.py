"""The training loop shared by the examples: DDP, mixed precision, exact resume, logs and evaluation."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import functional as dcf
from .._checks import check_choice, check_int, check_int_in, check_optional_int
from ..data import EvalTransform, build_dataset
from ..loss import DropClassLoss
from ..metrics import ConfusionMatrix, format_iou_table, mean_iou
from ..models import (
    build_model,
    check_backbone_loaded,
    load_official_checkpoint,
    load_torchvision_checkpoint,
    predict,
)
from ..module import DropClassOutput, mix_seed
from .batchnorm import recalibrate_batchnorm
from .checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from .config import AMP_MODES, TrainConfig
from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .logger import CsvLog
from .sampler import ResumableSampler

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainResult:
    """What a run ends with: the trained model, per-class IoU ``[K]`` (float64, NaN for absent classes), where it wrote.

    ``iou`` is ``None`` when the run stopped early (``stop_after``) without evaluating.
    """

    model: nn.Module
    iteration: int
    total_iterations: int
    iou: torch.Tensor | None
    class_names: tuple[str, ...]
    output: Path

    @property
    def miou(self) -> float:
        """The mean of ``iou`` (NaN without a final evaluation)."""
        return mean_iou(self.iou) if self.iou is not None else float("nan")


def train(config: TrainConfig) -> TrainResult:
    """Runs one training job as :class:`TrainConfig` describes; under ``torchrun``, one rank of it."""
    joined = not (dist.is_available() and dist.is_initialized())
    context = init_distributed(config.device)
    try:
        return _Run(config, context).run()
    finally:
        if joined:
            shutdown_distributed()


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9) -> float:
    """The poly schedule of the official HRNet code: ``base_lr * (1 - iteration / total) ** power`` for
    ``iteration`` in ``[0, total]``."""
    total = check_int("total", total)
    iteration = check_int_in("iteration", iteration, 0, total, "total")
    return base_lr * (1.0 - iteration / total) ** power


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    context: DistributedContext,
    batch_size: int = 1,
    workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    ignore_index: int = 255,
    progress_bar: bool = False,
    limit: int | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of ``model`` (in eval mode) on ``dataset``, summed over all ranks.

    Each rank predicts every ``world_size``-th sample of the first ``limit``
    (default: all; no padding, so no sample counts twice); predictions are
    upsampled to the label size.
    """
    batch_size = check_int("batch_size", batch_size)
    workers = check_int("workers", workers, minimum=0)
    check_choice("amp", amp, AMP_MODES)
    limit = check_optional_int("limit", limit)
    was_training = model.training
    model.eval()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    indices = list(range(context.rank, count, context.world_size))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
        pin_memory=context.device.type == "cuda", generator=torch.Generator(),
    )
    confusion = ConfusionMatrix(num_classes, ignore_index)
    bar = _bar(loader, len(loader), "eval", progress_bar and context.is_main)
    with torch.no_grad(), _autocast(context.device, amp):
        for images, labels in bar:
            images = _to_device(images, context.device, channels_last)
            labels = labels.to(context.device, non_blocking=True)
            logits = predict(model, images)
            confusion.update(logits.argmax(1), labels)
    confusion.matrix = confusion.matrix.to(context.device)
    confusion.all_reduce()
    model.train(was_training)
    return confusion


class _Run:
    """One training run on one rank."""

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.output = Path(config.output)
        self.batch_size = config.per_process_batch()
        # SyncBatchNorm (CUDA DDP) normalises over every rank's batch; otherwise each process's batch alone
        norm_batch = self.batch_size * (context.world_size if context.device.type == "cuda" else 1)
        if config.model == "deeplabv3" and norm_batch < 2:
            raise ValueError(
                f"batch_size must be at least 2 for model 'deeplabv3' (the BatchNorm of its ASPP image-pooling "
                f"branch sees one value per sample and channel), got {self.batch_size}"
                + (f" on each of {context.world_size} processes" if context.world_size > 1 else "")
            )
        _seed_everything(config.seed)

        self.train_set = _dataset(config, "train")
        self.val_set = _dataset(config, "val")
        self.num_classes = self.train_set.num_classes
        self.class_names = tuple(self.train_set.class_names)
        self.ignore_index = self.train_set.ignore_index
        self.sampler = ResumableSampler(
            len(self.train_set), self.batch_size, context.world_size, context.rank, seed=config.seed
        )
        self.iters_per_epoch = self.sampler.batches_per_epoch
        self.total = config.iters or config.num_epochs() * self.iters_per_epoch

        self.model = self._build_model()
        self.net: nn.Module = self.model
        if context.distributed:
            if context.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = DistributedDataParallel(
                self.model, device_ids=[context.local_rank] if context.device.type == "cuda" else None
            )
        self.base_lr = config.learning_rate(context.world_size)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.base_lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=config.amp == "fp16")
        self.loss_fn = DropClassLoss(alpha=config.alpha, ignore_index=self.ignore_index)
        self.iteration = 0
        # distinct dropout streams per rank; identical model initialisation came first
        torch.manual_seed(mix_seed(config.seed, context.rank))

    def _build_model(self) -> nn.Module:
        config = self.config
        dropclass = config.method == "dropclass"
        kwargs = {"seed": config.seed, "per_sample": config.per_sample} if dropclass else {}
        model = build_model(config.model, num_classes=self.num_classes, dropclass=dropclass, **kwargs)
        if config.pretrained:
            loader = load_torchvision_checkpoint if config.model == "deeplabv3" else load_official_checkpoint
            report = loader(model, config.pretrained)
            check_backbone_loaded(model, report, f"pretrained={config.pretrained!r}")
            if self.context.is_main:
                print(f"loaded {config.pretrained}: {report}")
        model = model.to(self.context.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ----------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        rngs: list[Any] = [rng_state()]
        if self.context.distributed:
            rngs = [None] * self.context.world_size
            dist.all_gather_object(rngs, rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "total_iterations": self.total,
            "world_size": self.context.world_size,
            "batch_size": self.batch_size,
            "config": self.config.to_dict(),
            "rng": rngs,
        }

    def save(self) -> None:
        """Writes ``checkpoint.pt`` atomically (every rank takes part: the RNG states are gathered)."""
        state = self._state()
        if self.context.is_main:
            save_atomic(state, self.output / "checkpoint.pt")

    def restore(self, path: str) -> None:
        state = load_checkpoint(path)
        saved = TrainConfig.saved(state["config"]).resume_settings()
        ours = self.config.resume_settings()
        for key, value in ours.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, this run has "
                    f"{key}={value!r}"
                )
        if (state["world_size"], state["batch_size"], state["total_iterations"]) != (
            self.context.world_size, self.batch_size, self.total,
        ):
            raise ValueError(
                f"cannot resume exactly from {path}: it ran {state['world_size']} process(es) x batch "
                f"{state['batch_size']} for {state['total_iterations']} iterations, this run "
                f"{self.context.world_size} x {self.batch_size} for {self.total}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        set_rng_state(state["rng"][self.context.rank])

    # ------------------------------------------------------------------ loop

    def run(self) -> TrainResult:
        config, context = self.config, self.context
        resume_path = None
        if config.resume:
            resume_path = str(self.output / "checkpoint.pt") if config.resume == "auto" else config.resume
            self.restore(resume_path)
        log = None
        if context.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            log = CsvLog(self.output / "log.csv", resume_from=self.iteration if resume_path else None)
            print(
                f"{config.method} {config.model} on {config.dataset}: {self.total} iterations "
                f"({self.iters_per_epoch}/epoch), {context.world_size} process(es) x batch {self.batch_size}, "
                f"lr {self.base_lr:g}, amp {config.amp}, device {context.device}"
                + (f", resumed at iteration {self.iteration}" if resume_path else "")
            )
        stop = min(self.total, config.stop_after or self.total)
        bar = _bar(None, self.total, config.method, config.progress_bar and context.is_main, initial=self.iteration)
        self.net.train()
        while self.iteration < stop:
            epoch, position = divmod(self.iteration, self.iters_per_epoch)
            for images, labels in self._epoch_batches(epoch, position):
                logged = (self.iteration + 1) % config.log_every == 0 or self.iteration + 1 == stop
                timed_on_gpu = logged and context.device.type == "cuda"  # the GPU runs behind the queued work
                if timed_on_gpu:
                    torch.cuda.synchronize(context.device)  # earlier steps' work is not this step's
                started = time.perf_counter()
                parts = self._step(images, labels)
                self.iteration += 1
                if logged:
                    if timed_on_gpu:
                        torch.cuda.synchronize(context.device)  # the backward and the optimizer step have run
                    seconds = time.perf_counter() - started  # the step's, without the collective below
                    parts = self._mean_over_ranks(parts)  # every rank: a collective
                    if log is not None:
                        row = self._log_row(epoch, parts, seconds)
                        log.write(row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if config.checkpoint_every and self.iteration % config.checkpoint_every == 0 and self.iteration < stop:
                    self.save()
                if config.eval_every and self.iteration % (config.eval_every * self.iters_per_epoch) == 0:
                    if self.iteration < self.total:
                        self._evaluate_and_report(final=False)
                if self.iteration >= stop:
                    break
        if bar is not None:
            bar.close()
        self.save()
        iou = None
        if self.iteration >= self.total:
            if config.bn_recalibration:
                recalibrate_batchnorm(
                    self.model, self.train_set, config.bn_recalibration, self.batch_size, seed=config.seed
                )
            if context.is_main:
                torch.save(self.model.state_dict(), self.output / "model.pt")
            iou = self._evaluate_and_report(final=True)
        return TrainResult(self.model, self.iteration, self.total, iou, self.class_names, self.output)

    def _epoch_batches(self, epoch: int, position: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, skip=position * self.batch_size)
        self.train_set.set_epoch(epoch)
        loader = DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.config.workers,
            pin_memory=self.context.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(mix_seed(self.config.seed, epoch)),
        )
        return iter(loader)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        config, device = self.config, self.context.device
        progress = self.iteration / self.total
        lr = poly_lr(self.base_lr, self.iteration, self.total, config.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = _to_device(images, device, config.channels_last)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, config.amp):
            out = self.net(images, progress=progress)
        if isinstance(out, DropClassOutput):
            loss, parts = self.loss_fn(out, labels, progress)
        else:
            loss = dcf.seg_cross_entropy(out, labels, ignore_index=self.ignore_index)
            parts = {"ce": loss}
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iteration}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def _mean_over_ranks(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms averaged over the processes (each rank's are those of its own shard of the batch)."""
        if not self.context.distributed:
            return parts
        stacked = torch.stack([value.float() for value in parts.values()])
        dist.all_reduce(stacked)
        return dict(zip(parts, stacked / self.context.world_size))

    def _log_row(self, epoch: int, parts: dict[str, torch.Tensor], seconds: float) -> dict[str, float | int]:
        done = self.iteration - 1
        return {
            "iteration": self.iteration,
            "epoch": epoch,
            "progress": round(done / self.total, 6),
            "lr": poly_lr(self.base_lr, done, self.total, self.config.poly_power),
            **{k: float(v) for k, v in parts.items()},
            "images_per_s": round(self.batch_size * self.context.world_size / seconds, 3),
            "seconds": round(seconds, 4),
        }

    def _evaluate_and_report(self, final: bool) -> torch.Tensor:
        config = self.config
        if self.context.distributed:
            # Without SyncBatchNorm (CPU) each rank's BatchNorm statistics follow its own shard since DDP's last
            # broadcast: every rank evaluates rank 0's model, the one model.pt holds.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        confusion = evaluate(
            self.model, self.val_set, self.num_classes, self.context, batch_size=config.eval_batch_size,
            workers=config.workers, amp=config.amp, channels_last=config.channels_last,
            ignore_index=self.ignore_index, progress_bar=config.progress_bar, limit=config.eval_limit,
        )
        iou = confusion.iou()
        if self.context.is_main:
            title = f"{config.method} @ {self.iteration}"
            table = format_iou_table(self.class_names, {title: iou})
            print(table)
            results = {
                "iteration": self.iteration,
                "class_names": list(self.class_names),
                "iou": [None if math.isnan(v) else v for v in iou.tolist()],
                "miou": mean_iou(iou),
                "pixel_accuracy": confusion.pixel_accuracy(),
            }
            name = "results" if final else f"results_{self.iteration}"
            (self.output / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
            (self.output / f"{name}.md").write_text(table + "\n")
        return iou


def _dataset(config: TrainConfig, split: str) -> Any:
    dataset = build_dataset(config.dataset, split, root=config.data_root, seed=config.seed, **config.dataset_options)
    if split == "train":
        dataset.use_training_augmentation(config.crop())
    else:
        dataset.transform = EvalTransform(mean=dataset.mean, std=dataset.std)
    return dataset


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPES[amp])


def _bar(iterable: Any, total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True)
