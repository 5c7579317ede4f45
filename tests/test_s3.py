"""Stores on S3, against a real S3-compatible server on loopback (moto in server mode).

Converted into the server, read back equal to the same conversion on disk, trained from
(a loader epoch whose targets equal those from the local store), an upload killed midway
(SIGKILL of the converting process) refused as unfinished and then resumed, and the
endpoint, region and credentials taken from the usual AWS variables or storage_options.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from conftest import s3_copy

from dali_relabel import LabelMapStore, ReLabelLoader
from dali_relabel.cli import main
from dali_relabel.errors import (
    ArgumentError,
    StorageAccessError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
)
from dali_relabel.labelmaps import convert
from dali_relabel.store import LabelMapWriter, publish
from dali_relabel.store._s3 import S3Location

SHARD = 4  # 40 sample maps: 10 shards per array


@pytest.fixture
def local_maps(sample_data, tmp_path):
    """The sample's maps converted on disk: what every S3 copy is compared with."""
    return convert(sample_data.label_maps, tmp_path / "local.zarr", workers=0, shard_size=SHARD)


def _objects(bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix`` (listed with boto3, not the library)."""
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _batches(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_convert_into_s3_then_train_from_it(sample_data, local_maps, s3_bucket, capsys):
    url = f"s3://{s3_bucket}/relabel/maps.zarr"
    args = ["convert", str(sample_data.label_maps), url, "--workers", "0"]
    assert main([*args, "--shard-size", str(SHARD)]) == 0
    assert url in capsys.readouterr().out  # the summary names the store
    remote = LabelMapStore.open(url)
    assert remote.complete and remote.keys == local_maps.keys
    for a, b in zip(remote.load(progress=False).tables(), local_maps.tables(), strict=True):
        np.testing.assert_array_equal(a, b)
    keys = _objects(s3_bucket, "relabel/maps.zarr/")
    assert f"relabel/maps.zarr/scores/c/{40 // SHARD - 1}/0/0/0" in keys
    assert not any(os.scandir(os.path.join(os.environ["DALI_RELABEL_CACHE"], "staging")))

    kwargs = {"crop_size": 64, "num_threads": 2, "device": "cpu", "seed": 3}
    from_s3 = ReLabelLoader(sample_data.train, url, 8, **kwargs)
    assert from_s3.label_map_memory == "host"  # read once, shard by shard, not per batch
    from_disk = ReLabelLoader(sample_data.train, local_maps.path, 8, **kwargs)
    streamed = ReLabelLoader(sample_data.train, url, 8, label_map_memory="stream", **kwargs)
    expected = _batches(from_disk)
    assert len(expected) == 5
    for loader in (from_s3, streamed):
        got = _batches(loader)
        assert len(got) == len(expected)
        for (images, soft), (want_images, want_soft) in zip(got, expected, strict=True):
            assert torch_equal(images, want_images) and torch_equal(soft, want_soft)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


_SLOW_CONVERT = textwrap.dedent(
    """
    import sys, threading, time
    from dali_relabel.store import _s3

    lock, put = threading.Lock(), _s3.S3Location.put

    def slow_put(self, relative, data):  # one object at a time, 0.1 s each
        with lock:
            time.sleep(0.1)
            return put(self, relative, data)

    _s3.S3Location.put = slow_put
    from dali_relabel.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_upload_killed_midway_is_refused_then_resumed(
    sample_data, local_maps, s3_bucket, tmp_path, monkeypatch
):
    url = f"s3://{s3_bucket}/maps.zarr"
    args = ["convert", str(sample_data.label_maps), url, "--workers", "0"]
    args += ["--shard-size", str(SHARD)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CONVERT, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(_objects(s3_bucket, "maps.zarr/")) >= 12:  # zarr.json and 11 others
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the upload ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    landed = _objects(s3_bucket, "maps.zarr/")
    total = len(_objects_of(local_maps.path)) + 1  # and the group's zarr.json
    assert 12 <= len(landed) < total
    # what a loader sees: a store that says it is unfinished
    with pytest.raises(StoreIncompleteError, match="incomplete"):
        LabelMapStore.open(url)
    with pytest.raises(StoreIncompleteError):
        ReLabelLoader(sample_data.train, url, 8, crop_size=64, device="cpu")

    # The same command again resumes: only what had not landed goes up, then the document.
    puts = []
    put = S3Location.put
    monkeypatch.setattr(
        S3Location, "put", lambda self, rel, data: puts.append(rel) or put(self, rel, data)
    )
    assert main(args) == 0
    assert sorted(puts[1:-1]) == sorted(
        rel for rel in _objects_of(local_maps.path) if f"maps.zarr/{rel}" not in landed
    )
    assert puts[0] == puts[-1] == "zarr.json"  # "unfinished" first, "complete" last
    resumed = LabelMapStore.open(url)
    for a, b in zip(resumed.load(progress=False).tables(), local_maps.tables(), strict=True):
        np.testing.assert_array_equal(a, b)
    # and once more: the finished store is found, nothing is written
    puts.clear()
    assert main(args) == 0 and puts == []


def _objects_of(path) -> list[str]:
    """Relative keys of a local store's files, its group zarr.json left out."""
    root = os.fspath(path)
    out = []
    for folder, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if rel != "zarr.json":
                out.append(rel)
    return out


def test_a_store_of_other_parameters_at_the_url_is_refused(sample_data, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/maps.zarr"
    convert(sample_data.label_maps, url, workers=0, shard_size=SHARD, progress=False)
    with pytest.raises(StoreMismatchError, match=r"other parameters \(attributes .*shard_size"):
        convert(sample_data.label_maps, url, workers=0, shard_size=8, progress=False)
    assert LabelMapStore.open(url).shard_size == SHARD  # left as it was
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="junk/a.txt", Body=b"x")
    with pytest.raises(StoreMismatchError, match=r"holds objects but no zarr\.json"):
        convert(sample_data.label_maps, f"s3://{s3_bucket}/junk", workers=0, progress=False)


def test_publish_refuses_an_unfinished_local_store(tmp_path, s3_bucket):
    writer = LabelMapWriter.create(tmp_path / "w.zarr", ["a", "b"], num_classes=3, k=1, grid=(2, 2))
    with pytest.raises(StoreIncompleteError, match="not finished"):
        publish(writer.path, f"s3://{s3_bucket}/w.zarr")
    assert _objects(s3_bucket, "w.zarr/") == {}


def test_endpoint_and_region_from_the_environment_or_storage_options(
    local_maps, s3_bucket, s3_endpoint, monkeypatch, capsys
):
    url = s3_copy(Path(local_maps.path), s3_bucket, "maps.zarr")
    closed = "http://127.0.0.1:9"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    with pytest.raises(StorageAccessError, match=r"127\.0\.0\.1:9 could not be reached"):
        LabelMapStore.open(url, storage_options={"max_retries": 0})
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the S3-specific one wins
    assert LabelMapStore.open(url).read([3])[0].shape == (1, 5, 15, 15)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    options = {"endpoint_url": s3_endpoint, "region": "eu-west-1"}
    store = LabelMapStore.open(url, storage_options=options)  # options beat the variables
    assert store.location.endpoint == s3_endpoint and store.location.region == "eu-west-1"
    np.testing.assert_array_equal(store.read([7])[1], local_maps.read([7])[1])
    assert main(["info", url, "--storage-option", f"endpoint_url={s3_endpoint}"]) == 0
    assert f"label map store  {url}" in capsys.readouterr().out
    option = ["--storage-option", f"endpoint_url={s3_endpoint}"]
    assert main(["verify", url, "--quiet", *option]) == 0
    assert main(["report", url, "--samples", "8", *option]) == 0
    assert "top-1" in capsys.readouterr().out
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert S3Location.parse(url).region == "ap-south-1"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"endpoint": "x"}, r"'endpoint' not understood for S3; accepted: endpoint_url"),
        ({"key": "a", "secret": "b"}, "Access keys are not options: set AWS_ACCESS_KEY_ID"),
        ({"anonymous": "yes"}, "anonymous must be true or false"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
    ],
)
def test_bad_storage_options_are_refused_naming_them(options, message):
    with pytest.raises(ArgumentError, match=message):
        LabelMapStore.open("s3://bucket/maps.zarr", storage_options=options)


@pytest.mark.parametrize(
    "url, message",
    [("s3://B/x.zarr", "not an S3 bucket name"), ("s3://bucket", "names a bucket but no store")],
)
def test_bad_s3_urls_are_refused(url, message):
    with pytest.raises(ArgumentError, match=message):
        LabelMapStore.open(url)


def test_missing_store_and_bucket_are_named(s3_bucket):
    with pytest.raises(StoreNotFoundError, match=f"no label map store at 's3://{s3_bucket}/no"):
        LabelMapStore.open(f"s3://{s3_bucket}/no.zarr")
    with pytest.raises(StorageAccessError, match="bucket 'no-such-bucket' does not exist"):
        LabelMapStore.open("s3://no-such-bucket/maps.zarr")


def test_fingerprint_changes_when_an_object_is_rewritten(local_maps, s3_bucket):
    url = s3_copy(Path(local_maps.path), s3_bucket, "maps.zarr")
    store = LabelMapStore.open(url)
    first = store.fingerprint()
    assert LabelMapStore.open(url).fingerprint() == first  # stable
    client = boto3.client("s3")
    key = "maps.zarr/classes/c/2/0/0/0"
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[10] ^= 1
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    assert store.fingerprint() != first


def test_a_store_that_becomes_unreachable_fails_within_seconds(local_maps, s3_bucket, monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    boto3.client("s3").create_bucket(Bucket="short-lived")
    url = s3_copy(Path(local_maps.path), "short-lived", "maps.zarr")
    store = LabelMapStore.open(url, storage_options={"max_retries": 2})
    np.testing.assert_array_equal(store.read([0])[1], local_maps.read([0])[1])
    server.stop()  # the server goes away mid-run
    start = time.perf_counter()
    with pytest.raises(StorageAccessError, match=f"cannot be read from {endpoint}"):
        store.read([5])
    assert time.perf_counter() - start < 30


def test_without_boto3_the_error_names_the_extra(monkeypatch):
    from dali_relabel.errors import MissingDependencyError
    from dali_relabel.store import _s3

    monkeypatch.setitem(sys.modules, "boto3", None)  # as where it is not installed
    _s3._client.cache_clear()
    with pytest.raises(MissingDependencyError, match=r"pip install 'dali_relabel\[s3\]'"):
        LabelMapStore.open("s3://bucket/maps.zarr")
    _s3._client.cache_clear()


def test_ensemble_reads_and_writes_s3(local_maps, s3_bucket, tmp_path):
    from dali_relabel.labelmaps import ensemble_label_maps

    remote_input = s3_copy(Path(local_maps.path), s3_bucket, "in.zarr")
    on_disk = ensemble_label_maps([local_maps.path, local_maps.path], tmp_path / "e.zarr")
    url = f"s3://{s3_bucket}/ensemble.zarr"
    remote = ensemble_label_maps([local_maps.path, remote_input], url, progress=False)
    assert remote.path == url and remote.keys == on_disk.keys
    for a, b in zip(remote.tables(), on_disk.tables(), strict=True):
        np.testing.assert_array_equal(a, b)
