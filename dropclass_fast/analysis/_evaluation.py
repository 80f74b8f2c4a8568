"""How the analyses call the training engine's :func:`~dropclass_fast.train.evaluate`: one set of options."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .._checks import check_choice, check_int, check_optional_int
from ..metrics import ConfusionMatrix
from ..train import evaluate
from ..train.config import AMP_MODES
from ..train.distributed import DistributedContext


@dataclass(frozen=True)
class EvalOptions:
    """Evaluation settings shared by every pass of an analysis.

    Attributes:
        batch_size: images per forward.
        workers: DataLoader worker processes.
        limit: evaluate on the first ``limit`` images only (``None``: all).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
    """

    batch_size: int = 8
    workers: int = 0
    limit: int | None = None
    amp: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size))
        object.__setattr__(self, "limit", check_optional_int("limit", self.limit))
        check_choice("amp", self.amp, AMP_MODES)
        object.__setattr__(self, "workers", check_int("workers", self.workers, minimum=0))


#: the defaults: batch 8, no workers, every image, full precision
DEFAULT_EVAL = EvalOptions()


def context_for(model: nn.Module) -> DistributedContext:
    """This process's place in the default process group (one process without one), on ``model``'s device."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        local_rank = device.index if device.index is not None else 0
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistributedContext(0, 1, 0, device)


def confusion_of(model: nn.Module, dataset: Dataset, num_classes: int, options: EvalOptions) -> ConfusionMatrix:
    """``evaluate`` of ``model`` on ``dataset`` with ``options``, summed over the ranks of the process group."""
    return evaluate(
        model, dataset, num_classes, context_for(model), batch_size=options.batch_size, workers=options.workers,
        amp=options.amp, ignore_index=getattr(dataset, "ignore_index", 255), limit=options.limit,
    )
