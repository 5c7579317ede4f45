"""Shared fixtures: real-photo sample data and a small label-map store, made at test time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.store import LabelMapStore, LabelMapWriter
from dali_relabel.tools import SampleData, make_sample_data


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> SampleData:
    """40 real photos (5 ImageNet classes x 8) with official-format synthetic .pt maps."""
    return make_sample_data(tmp_path_factory.mktemp("sample"), images_per_class=8, label_maps=True)


def write_store_from_pt(data: SampleData, path, *, shard_size: int = 16) -> LabelMapStore:
    """A store of the sample's .pt maps, as `convert` (layout "official") writes it, directly."""
    maps = np.stack(
        [torch.load(data.label_maps / f"{key}.pt", weights_only=True).numpy() for key in data.keys]
    )
    maps = np.ascontiguousarray(maps.swapaxes(-1, -2))  # the official layout, undone
    writer = LabelMapWriter.create(
        path,
        data.keys,
        num_classes=1000,
        k=maps.shape[2],
        grid=maps.shape[3:],
        class_names=imagenet_wnids(),
        provenance={"source": "test fixture"},
        shard_size=shard_size,
    )
    for start, stop in writer.missing_blocks():
        writer.write_block(start, maps[start:stop, 0], maps[start:stop, 1].astype(np.int64))
    return writer.finalize()


@pytest.fixture(scope="session")
def sample_store(sample_data, tmp_path_factory) -> LabelMapStore:
    """The sample's label maps in a store (sample order = sorted keys)."""
    return write_store_from_pt(sample_data, tmp_path_factory.mktemp("store") / "maps.zarr")


@pytest.fixture(scope="session")
def trainer_root(sample_data, tmp_path_factory):
    """An ImageNet-layout root as the trainers expect it: train/ (the 40 sample photos)
    and val/ with 21 images, one per class folder (21 ImageNet classes), so that a hard
    label names its sample: 21 = 2 * 10 + 1 = 3 * 7, batch 5 (issue 9's numbers)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("trainer_root")
    (root / "train").symlink_to(sample_data.train)
    wnids = imagenet_wnids()
    photos = sorted(sample_data.train.rglob("*.JPEG"))
    for i in range(21):
        folder = root / "val" / wnids[40 * i]
        folder.mkdir(parents=True)
        with Image.open(photos[i]) as img:
            img.resize((96, 72)).save(folder / f"{wnids[40 * i]}_val.JPEG", quality=90)
    return root
