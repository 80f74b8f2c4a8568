"""A shuffling sampler that can start in the middle of an epoch (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .._checks import check_bool, check_int, check_int_in, is_int
from ..module import mix_seed


class ResumableSampler(Sampler[int]):
    """Shuffles ``range(dataset_size)`` per epoch and gives rank ``rank`` its share.

    The order of epoch ``e`` is a permutation drawn from a generator seeded by
    ``(seed, e)``, so it is the same on every rank and in every run; rank ``r``
    of ``num_replicas`` takes positions ``r, r + num_replicas, ...``. The tail
    that does not fill a whole global batch is dropped, as with
    ``drop_last=True``. :meth:`set_epoch` takes the number of this rank's
    samples to skip, so a resumed run starts at the exact sample it stopped at.

    Args:
        dataset_size: number of samples in the dataset.
        batch_size: samples per rank and step.
        num_replicas: number of ranks.
        rank: this rank.
        seed: seeds the shuffles.
        shuffle: ``False`` keeps the dataset order (each rank still takes every ``num_replicas``-th sample).
    """

    def __init__(
        self, dataset_size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        dataset_size = check_int("dataset_size", dataset_size, minimum=0)
        batch_size, num_replicas = check_int("batch_size", batch_size), check_int("num_replicas", num_replicas)
        if not is_int(rank) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, {num_replicas}) (num_replicas), got {rank!r}")
        if not is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.batches_per_epoch = dataset_size // (batch_size * num_replicas)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset of {dataset_size} samples is smaller than one global batch "
                f"({batch_size} per rank x {num_replicas} ranks)"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = check_bool("shuffle", shuffle)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch`` (a non-negative int, as the dataset's ``set_epoch`` takes), leaving out this
        rank's first ``skip`` samples (an int in ``[0, len(self)]``)."""
        epoch = check_int("epoch", epoch, minimum=0)
        self.skip = check_int_in("skip", skip, 0, len(self), "this rank's samples per epoch")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.dataset_size, generator=generator)
        else:
            order = torch.arange(self.dataset_size)
        mine = order[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        return iter(mine[self.skip :].tolist())
