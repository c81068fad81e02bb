"""The training sampler: epoch-aware items, shuffling, a share per process, and resuming mid-epoch.

It yields ``(epoch, index)`` pairs. The dataset draws a clip's crop and augmentation from
``(seed, epoch, index)``, so loader worker processes (persistent ones included, which never see a
``set_epoch`` call on the dataset) draw differently every epoch and reproducibly on a rerun.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Items of one epoch as ``(epoch, index)``.

    Args:
        size: items in the dataset.
        shuffle: a permutation drawn from ``(seed, epoch)``; else index order.
        rank, world: this process's share of a distributed run: the (padded) order split
            round-robin, so the ``world`` shares cover every item once per epoch (a few items
            repeat when ``size`` is not a multiple of ``world``) and have equal length.
        batch_size: for :meth:`set_epoch`'s ``skip_batches``.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 batch_size: int = 1) -> None:
        if size < 1:
            raise ValueError("an empty dataset cannot be sampled")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Sample epoch ``epoch``, leaving out its first ``skip_batches`` batches (already trained
        on before an interruption)."""
        self.epoch, self.skip = epoch, skip_batches * self.batch_size

    def share(self) -> np.ndarray:
        """This process's whole share of the current epoch, in order."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        per_rank = math.ceil(self.size / self.world)
        padded = np.resize(order, per_rank * self.world)  # repeats the first items to even the shares
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.share()[self.skip :]:
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(math.ceil(self.size / self.world) - self.skip, 0)
