"""The DataLoader surface trainers touch: batch_sampler, sampler, dataset[i], len, drop_last,
and timm main's epoch hook replayed as written in its train.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import timm_set_loader_epoch
from torch.utils.data import DataLoader, Subset

from dali_relabel import ReLabelLoader

CROP = 48
FAST = {"crop_size": CROP, "num_threads": 2}


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sampler_is_the_loaders_batches(sample_data, sample_store, drop_last):
    loader = ReLabelLoader(
        sample_data.train, sample_store, 12, targets="hard", drop_last=drop_last, **FAST
    )
    assert len(loader.batch_sampler) == len(loader) == (3 if drop_last else 4)
    assert loader.batch_sampler.sampler is loader.sampler and loader.drop_last == drop_last
    for epoch in (0, 3):
        timm_set_loader_epoch(loader, epoch)
        timm_set_loader_epoch(loader, epoch)  # idempotent, as timm may call two hooks
        batches = list(loader.batch_sampler)
        order = loader.sampler.indices(epoch).tolist()
        assert [i for b in batches for i in b] == order[: 36 if drop_last else 40]
        labels = [labels.tolist() for _, labels in loader]  # runs epoch `epoch`
        targets = loader.dataset.targets
        assert labels == [[targets[i] for i in b] for b in batches]
        assert loader.sampler.epoch == epoch + 1


def test_dataset_items_are_imagefolder_eval_items(sample_data, sample_store):
    """dataset[i] is the evaluation transform of image i: the eval loader's image up to
    Pillow's and DALI's resampling, and the same class index."""
    crop = 112  # from photos of 350-500 px: a downscale like ImageNet's 256 of ~400
    loader = ReLabelLoader(
        sample_data.train, sample_store, 8, train=False, crop_size=crop, resize_size=128,
        num_threads=2,
    )  # fmt: skip
    images = torch.cat([x for x, _ in loader])
    std = torch.tensor(loader.dataset.std).view(3, 1, 1) * 255
    for i in range(len(loader.dataset)):
        image, label = loader.dataset[i]
        assert image.shape == (3, crop, crop) and image.dtype == torch.float32
        assert label == loader.dataset.targets[i] == sample_data.labels[i]
        diff = ((image - images[i]).abs() * std).numpy()  # 0-255 levels
        # the same geometry; Pillow's and DALI's antialiased bilinear filters differ by a
        # level or two on average (measured: 0.48), up to 8 at the 99th percentile
        assert diff.mean() < 1.2 and np.percentile(diff, 99) < 10, (i, diff.mean())
    # as pytorch/examples wraps it: a Subset in a DataLoader with worker processes
    pickle.dumps(loader.dataset)
    rest = DataLoader(Subset(loader.dataset, range(37, 40)), batch_size=2, num_workers=2)
    got = [(x.shape, y.dtype, y.tolist()) for x, y in rest]
    assert got[0][0] == (2, 3, crop, crop) and got[0][1] == torch.int64
    assert [y for _, _, ys in got for y in ys] == list(sample_data.labels[37:40])


def test_a_relative_root_gives_paths_under_it(sample_data, monkeypatch):
    # `dali-relabel demo` passes runs/demo/data/train: each path is the root joined once
    monkeypatch.chdir(sample_data.train.parent)
    loader = ReLabelLoader("train", None, 16, train=False, **FAST)
    assert loader.dataset.paths[0] == "train/n02124075/n02124075_0.JPEG"
    image, label = loader.dataset[0]  # decoded by Pillow from that path
    assert image.shape == (3, CROP, CROP) and label == 0
    assert sum(len(images) for images, _ in loader) == 40


def test_len_is_exact_and_set_epoch_reaches_every_entry_point(sample_data, sample_store):
    loader = ReLabelLoader(sample_data.train, sample_store, 16, **FAST)
    assert len(loader) == 3 and sum(1 for _ in loader) == 3
    loader.batch_sampler.set_epoch(5)
    assert loader.sampler.epoch == 5 and loader.batch_sampler.epoch == 5
    loader.set_epoch(2)
    assert loader.batch_sampler.epoch == 2
