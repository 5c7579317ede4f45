"""DALI's ResNet-50 example's loader calls, replayed on dali_relabel.compat.dali_resnet50:
create_dali_pipeline(...).build(), DALIClassificationIterator(...), data[0]["data"],
data[0]["label"].squeeze(-1).long(), _size, reset()."""

from __future__ import annotations

import math

import pytest
import torch
from nvidia.dali.plugin.pytorch import LastBatchPolicy

from dali_relabel.compat.dali_resnet50 import (
    EXAMPLE_RATIO,
    EXAMPLE_SCALE,
    DALIClassificationIterator,
    create_dali_pipeline,
)

CROP = 48


def _iterator(root, store, *, training, policy=LastBatchPolicy.PARTIAL, **extra):
    pipe = create_dali_pipeline(batch_size=5, num_threads=2, device_id=0, seed=12,
                                data_dir=root / ("train" if training else "val"), crop=CROP,
                                size=56, dali_cpu=False, shard_id=0, num_shards=1,
                                is_training=training, **extra)  # fmt: skip
    pipe.build()
    return DALIClassificationIterator(pipe, reader_name="Reader", last_batch_policy=policy,
                                      auto_reset=True)  # fmt: skip


def test_two_epochs_as_the_example_reads_them(trainer_root, sample_store):
    it = _iterator(trainer_root, sample_store, training=True, label_maps=sample_store)
    loader = it.loader
    assert (loader.scale, loader.ratio) == (EXAMPLE_SCALE, EXAMPLE_RATIO)
    for epoch in range(2):
        train_loader_len = math.ceil(it._size / 5)
        batches = 0
        for data in it:
            images = data[0]["data"]
            target = data[0]["label"].squeeze(-1).long()
            soft = data[0]["soft"]
            assert images.shape[1:] == (3, CROP, CROP) and images.dtype == torch.float32
            assert target.shape == (len(images),) and target.dtype == torch.int64
            assert torch.allclose(soft.sum(1), torch.ones(len(soft)), atol=1e-5)
            batches += 1
        assert batches == train_loader_len == len(it) == 8
        if epoch == 0:
            it.reset()  # older versions of the example reset after each epoch
    assert it.size == it._size == 40


def test_evaluation_and_last_batch_policies(trainer_root, sample_store):
    val = _iterator(trainer_root, sample_store, training=False, label_maps=sample_store)
    batches = list(val)
    assert set(batches[0][0]) == {"data", "label"} and len(batches) == 5 == len(val)
    labels = torch.cat([b[0]["label"].squeeze(-1).long() for b in batches])
    assert labels.tolist() == val.loader.dataset.targets and val.loader.resize_size == 56
    drop = _iterator(trainer_root, sample_store, training=False, policy=LastBatchPolicy.DROP)
    assert len(drop) == 4 == sum(1 for _ in drop) and math.ceil(drop._size / 5) == 4
    with pytest.raises(ValueError, match="FILL"):
        _iterator(trainer_root, sample_store, training=False, policy=LastBatchPolicy.FILL)


def test_training_needs_the_label_maps(trainer_root):
    with pytest.raises(ValueError, match="label_maps="):
        _iterator(trainer_root, None, training=True)
