"""ShardSampler: each epoch's shards, against DistributedSampler's contract."""

from __future__ import annotations

import numpy as np
import pytest

from dali_relabel.loader import ShardSampler


@pytest.mark.parametrize("n", [1, 7, 30, 41])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_partition_each_epoch(n, world_size, drop_last):
    def shards(even, epoch):
        out = []
        for rank in range(world_size):
            sampler = ShardSampler(
                n,
                shuffle=True,
                seed=7,
                rank=rank,
                world_size=world_size,
                drop_last=drop_last,
                even=even,
            )
            sampler.set_epoch(epoch)
            assert len(list(sampler)) == len(sampler)
            out.append(sampler.indices())
        return out

    # evaluation: disjoint, every sample once, sizes within one
    ev = shards(False, 0)
    assert sorted(np.concatenate(ev).tolist()) == list(range(n))
    assert max(map(len, ev)) - min(map(len, ev)) <= 1
    # training: equal sizes; padding repeats < world_size samples, cutting drops < world_size
    tr = shards(True, 0)
    assert len({len(s) for s in tr}) == 1
    flat = np.concatenate(tr)
    if drop_last:
        assert len(set(flat.tolist())) == len(flat) == (n // world_size) * world_size
    else:
        assert set(flat.tolist()) == set(range(n)) and len(flat) - n < world_size
    # a seeded order: the same for the same epoch, another for the next
    assert all(np.array_equal(a, b) for a, b in zip(tr, shards(True, 0), strict=True))
    if n > 2 and world_size == 1:
        assert not np.array_equal(tr[0], shards(True, 1)[0])


def test_sampler_rejects_bad_epochs():
    sampler = ShardSampler(
        4, shuffle=False, seed=0, rank=0, world_size=1, drop_last=False, even=True
    )
    assert list(sampler) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        sampler.set_epoch(-1)
