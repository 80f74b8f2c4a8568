"""Process-group set-up for single-process and ``torchrun`` training."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._checks import check_int, check_int_in


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedContext:
    """Joins the process group that ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), if any.

    ``device`` is ``"cpu"`` or ``"cuda"``: NCCL and ``cuda:LOCAL_RANK`` on GPU,
    gloo on CPU. Without ``torchrun`` (no ``WORLD_SIZE``) it is one process.
    A launch environment that ``torchrun`` would not set (a ``RANK`` outside
    ``[0, WORLD_SIZE)``, a non-integer value, ...) is a ValueError naming the
    variable.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    world_size, rank, local_rank = _launch_ranks()
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, torch_device)


def _launch_ranks() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` from the environment (``(1, 0, 0)`` without ``torchrun``).

    ValueError naming the variable for a value that is not a count, a ``RANK``
    outside ``[0, WORLD_SIZE)``, or a missing ``RANK``/``LOCAL_RANK`` beside a
    ``WORLD_SIZE`` above 1 (every process would take rank 0 and wait for the
    others).
    """
    world_size, rank, local_rank = _env_count("WORLD_SIZE", 1), _env_count("RANK", 0), _env_count("LOCAL_RANK", 0)
    world_size = 1 if world_size is None else world_size
    missing = [name for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank)) if value is None]
    if world_size > 1 and missing:
        raise ValueError(f"WORLD_SIZE is {world_size} without {' and '.join(missing)}: launch with torchrun")
    rank = 0 if rank is None else check_int_in("environment variable RANK", rank, 0, world_size - 1, "WORLD_SIZE - 1")
    return world_size, rank, 0 if local_rank is None else local_rank


def _env_count(name: str, minimum: int) -> int | None:
    """The integer in environment variable ``name`` (None when unset); ValueError unless it is one >= ``minimum``."""
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        value: object = int(text)
    except ValueError:
        value = text  # refused by check_int, which names it
    return check_int(f"environment variable {name}", value, minimum)


def shutdown_distributed() -> None:
    """Leaves the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
