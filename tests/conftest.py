"""Shared fixtures: real-photo sample data and a small label-map store, made at test time."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session", autouse=True)
def _node_tables_in_a_temporary_folder(tmp_path_factory):
    """Loaders under several local ranks (torchrun) keep one label table per node, by
    default in /dev/shm and kept for the next run: the tests' tables go to a temporary
    folder instead (the variable reaches the processes the tests start)."""
    old = os.environ.get("DALI_RELABEL_CACHE")
    os.environ["DALI_RELABEL_CACHE"] = str(tmp_path_factory.mktemp("node_tables"))
    yield
    if old is None:
        del os.environ["DALI_RELABEL_CACHE"]
    else:
        os.environ["DALI_RELABEL_CACHE"] = old


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


# -- S3: a real S3-compatible server (moto in server mode) on loopback -----------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free loopback port for the session (objects in memory)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request else
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path):
    """A new empty bucket, and the usual AWS variables pointing at the server for this test
    and the processes it starts (as a user's job would get them)."""
    import uuid

    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "DALI_RELABEL_CACHE": str(tmp_path / "cache"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return bucket


def s3_copy(path, bucket: str, name: str) -> str:
    """Every file of the local store ``path`` copied as it is to ``s3://bucket/name`` (a
    plain copy, damage included); the URL."""
    import boto3

    client = boto3.client("s3")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        key = f"{name}/{file.relative_to(path).as_posix()}"
        client.put_object(Bucket=bucket, Key=key, Body=file.read_bytes())
    return f"s3://{bucket}/{name}"


def timm_set_loader_epoch(loader, epoch: int) -> None:
    """timm main's train.py ``_set_loader_epoch``, replayed: it reads the loader's
    dataset, batch_sampler and sampler unguarded."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, "set_epoch"):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def cutmix_samples(plain, mixed, mode: str, seed: int, size: int):
    """A plain and a CutMix loader of one seed side by side, sample by sample: (mixed
    image, its plain image, its partner's plain image, the box as a mask, the box as
    (y1, y2, x1, x2)), the box being the Mixer's draw for (seed, epoch 0, rank 0,
    batch); empty where the sample was not cut."""
    from dali_relabel.loader._mixing import Mixer, mix_generator

    mixer = Mixer(1000, cutmix_alpha=1.0, mode=mode)
    for b, ((x, _), (y, _)) in enumerate(zip(plain, mixed, strict=True)):
        params = mixer.draw(mix_generator(seed, 0, 0, b), len(x), size, size)
        for i in range(len(x)):
            yl, yh, xl, xh = params.boxes[i] if params.cutmix[i] else (0, 0, 0, 0)
            inside = torch.zeros(size, size, dtype=torch.bool, device=x.device)
            inside[yl:yh, xl:xh] = True
            yield y[i], x[i], x[len(x) - 1 - i], inside, (yl, yh, xl, xh)
