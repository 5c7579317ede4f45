"""Which sample indices one process reads in one epoch, in which order.

:class:`ShardSampler` has ``torch.utils.data.DistributedSampler``'s contract (seeded
permutation per epoch, shard ``rank`` of ``world_size``, equal shard sizes); the loader
feeds each epoch's batches to DALI in its order. docs/LOADER.md ("Sharding").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError

__all__ = ["ShardBatchSampler", "ShardSampler", "resolve_shard"]


class ShardSampler:
    """The sample indices one rank reads in one epoch, with DistributedSampler's contract.

    Epoch ``e`` permutes all samples with ``seed`` and ``e`` (the same on every rank),
    and rank ``r`` takes every ``world_size``-th index from position ``r``. With
    ``even=True`` (the loader's ``even_shards``, its default in training and evaluation)
    every rank gets the same count, as DistributedSampler gives: the permutation is
    padded by repeating its start (at most ``world_size - 1`` samples, so that ranks step
    in lockstep under per-batch collectives) or, with ``drop_last``, cut to a multiple of
    ``world_size``. With ``even=False`` the shards are disjoint and cover every sample
    exactly once; their sizes differ by at most one.

    Args:
        num_samples: samples in the dataset.
        shuffle: permute per epoch; False keeps sample order.
        seed: seed of the permutations.
        rank: this process's shard, in [0, world_size).
        world_size: number of shards.
        drop_last: with ``even``, cut instead of pad.
        even: equal shard sizes (see above).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        even: bool,
    ) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.even = even
        #: The epoch the next iteration of the loader runs.
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (its order depends on seed and epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ArgumentError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's sample indices of ``epoch`` (default: :attr:`epoch`), int64."""
        epoch = self.epoch if epoch is None else epoch
        n, w = self.num_samples, self.world_size
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        if self.even and w > 1:
            total = (n // w) * w if self.drop_last else -(-n // w) * w
            order = np.resize(order, total)  # cut, or pad by repeating from the start
        return order[self.rank :: w].astype(np.int64)

    def __len__(self) -> int:
        n, w = self.num_samples, self.world_size
        if self.even and w > 1:
            return n // w if self.drop_last else -(-n // w)
        return len(range(self.rank, n, w))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class ShardBatchSampler:
    """The batches of sample indices one rank reads per epoch: the loader's
    ``batch_sampler``, as a DataLoader always has one.

    Iterating gives lists of sample indices, the batches of :attr:`sampler`'s current
    epoch in the loader's order; ``len`` is the loader's. ``set_epoch`` sets the
    sampler's epoch (timm's ``_set_loader_epoch`` calls it on the batch sampler when it
    has one, instead of the sampler's; calling both, or twice, is the same).

    Args:
        sampler: the loader's sampler.
        batch_size: samples per batch.
        drop_last: leave out each epoch's last, smaller batch.
    """

    def __init__(self, sampler: ShardSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    @property
    def epoch(self) -> int:
        """The epoch the loader runs next (the sampler's)."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the loader's next iteration run epoch ``epoch``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        samples = len(self.sampler)
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.indices().tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


def resolve_shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size), each defaulting to torch.distributed's when it is initialized.

    Args:
        rank: this process's shard, or None (torch.distributed's rank, else 0).
        world_size: number of shards, or None (torch.distributed's world size, else 1).
    """
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    world_size = _checks.positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ArgumentError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if rank >= world_size:
        raise ArgumentError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return int(rank), world_size
