"""Fault injection: a store damaged as copies, disks and editors damage them is refused.

Each fault is done to a copy of a small finished store (40 samples of the sample photos,
16 per shard, so 3 shard files per array): a shard deleted, emptied or cut short, bits
flipped, random bytes written over a chunk, a chunk dropped from a shard index, the
metadata truncated, every attribute edited. For each, `dali-relabel verify` exits
non-zero naming the damaged file, `LabelMapStore.read` raises, read locally and from S3
(a copy on a real S3 server on loopback, moto), and the loader raises (at construction
in host mode, during the epoch when streaming) instead of yielding a single batch of
wrong targets.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import google_crc32c
import numpy as np
import pytest
from conftest import s3_copy, write_store_from_pt

from dali_relabel import LabelMapStore, ReLabelLoader
from dali_relabel.cli import main
from dali_relabel.errors import (
    DaliRelabelError,
    DaliRelabelWarning,
    StoreCorruptError,
    StoreMismatchError,
)
from dali_relabel.store import LabelMapWriter, rewrite, verify_store

SHARD = 16  # samples per shard: 40 samples make shards 0-15, 16-31, 32-39


@pytest.fixture(scope="module")
def pristine(sample_data, tmp_path_factory):
    return write_store_from_pt(
        sample_data, tmp_path_factory.mktemp("faults") / "maps.zarr", shard_size=SHARD
    )


@pytest.fixture
def store_copy(pristine, tmp_path):
    path = tmp_path / "maps.zarr"
    shutil.copytree(pristine.path, path)
    return path


# -- what is done to the store ---------------------------------------------------------------
def _shard(path, name, shard=1):
    return path / name / "c" / str(shard) / "0" / "0" / "0"


def _chunk_span(shard_file, j):
    """(offset, length) of the j-th chunk in a shard file (index at the end, crc32c last)."""
    raw = shard_file.read_bytes()
    index = np.frombuffer(raw[-(16 * SHARD + 4) : -4], "<u8").reshape(SHARD, 2)
    return int(index[j, 0]), int(index[j, 1])


def _flip_bits(path):
    f = _shard(path, "scores")
    offset, length = _chunk_span(f, 20 - SHARD)  # sample 20's chunk
    raw = bytearray(f.read_bytes())
    for i, bit in ((length // 4, 1), (length // 2, 5), (3 * length // 4, 7)):
        raw[offset + i] ^= 1 << bit
    f.write_bytes(bytes(raw))
    return f


def _random_bytes(path):
    f = _shard(path, "classes")
    offset, length = _chunk_span(f, 25 - SHARD)
    raw = bytearray(f.read_bytes())
    raw[offset : offset + min(100, length)] = np.random.default_rng(0).bytes(min(100, length))
    f.write_bytes(bytes(raw))
    return f


def _drop_chunk(path):
    """Sample 20's entry of the scores shard index emptied, the index checksum made to fit."""
    f = _shard(path, "scores")
    raw = bytearray(f.read_bytes())
    base = len(raw) - (16 * SHARD + 4)
    index = np.frombuffer(bytes(raw[base:-4]), "<u8").copy().reshape(SHARD, 2)
    index[20 - SHARD] = 2**64 - 1
    raw[base:-4] = index.tobytes()
    raw[-4:] = np.uint32(google_crc32c.value(index.tobytes())).tobytes()
    f.write_bytes(bytes(raw))
    return f


def _flip_index_bit(path):
    f = _shard(path, "classes")
    raw = bytearray(f.read_bytes())
    raw[-40] ^= 0x08
    f.write_bytes(bytes(raw))
    return f


def _delete(name):
    def fault(path):
        f = _shard(path, name)
        f.unlink()
        return f

    return fault


def _empty(path):
    f = _shard(path, "scores")
    f.write_bytes(b"")
    return f


def _halve(path):
    f = _shard(path, "classes")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


# (name, fault) -> the file that is damaged; every read of the store must name it
DATA_FAULTS = {
    "scores shard deleted": _delete("scores"),
    "classes shard deleted": _delete("classes"),
    "shard emptied": _empty,
    "shard cut in half": _halve,
    "3 bits flipped in a chunk": _flip_bits,
    "100 random bytes over a chunk": _random_bytes,
    "a chunk dropped from the shard index": _drop_chunk,
    "a bit flipped in the shard index": _flip_index_bit,
}


def _truncate(relative):
    def fault(path):
        f = path / relative
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return f

    return fault


def _keys_chunk_deleted(path):
    f = path / "keys" / "c" / "0"
    f.unlink()
    return path / "keys"


METADATA_FAULTS = {
    "group zarr.json truncated": _truncate("zarr.json"),
    "scores zarr.json truncated": _truncate("scores/zarr.json"),
    "classes zarr.json truncated": _truncate("classes/zarr.json"),
    "keys chunk deleted": _keys_chunk_deleted,
}


def _edit(**changes):
    def fault(path):
        doc = json.loads((path / "zarr.json").read_text())
        attrs = doc["attributes"]
        for name, change in changes.items():
            attrs[name] = change(attrs[name]) if callable(change) else change
        (path / "zarr.json").write_text(json.dumps(doc))
        return path / "zarr.json"

    return fault


# every attribute, edited; the message names the attribute (or says they were changed)
ATTRIBUTE_EDITS = {
    "format": (_edit(format="something.else"), "not a dali_relabel label map store"),
    "format_version as a string": (_edit(format_version="2"), "format_version='2'"),
    "format_version as a float": (_edit(format_version=2.0), "format_version=2.0"),
    "format_version 1": (_edit(format_version=1), "attributes were changed"),
    "complete as a string": (_edit(complete="false"), "complete='false'"),
    "num_samples": (_edit(num_samples=39), r"shape \[40, 5, 15, 15\]"),
    "num_classes": (_edit(num_classes=999), "class_names"),
    "k": (_edit(k=4), r"\[num_samples, k, H, W\] = \[40, 4, 15, 15\]"),
    "grid": (_edit(grid=[15, 14]), r"\[40, 5, 15, 14\]"),
    "grid as strings": (_edit(grid=["15", "15"]), "grid="),
    "score_dtype": (_edit(score_dtype="float32"), "holds float16"),
    "class_dtype": (_edit(class_dtype="int32"), "holds int16"),
    "shard_size": (_edit(shard_size=8), "shard_size=8"),
    "keys_sha256": (_edit(keys_sha256="0" * 64), "attributes were changed"),
    "class_names": (_edit(class_names=lambda names: names[::-1]), "attributes were changed"),
    "score_kind": (_edit(score_kind="probabilities"), "attributes were changed"),
    "layout": (_edit(layout="official"), "attributes were changed"),
    "provenance": (_edit(provenance={"source": "elsewhere"}), "attributes were changed"),
    "attributes_sha256": (_edit(attributes_sha256="0" * 64), "attributes were changed"),
}


def _verify_fails(path, capsys, named):
    assert main(["verify", str(path), "--quiet"]) == 1
    out = capsys.readouterr()
    assert named in out.out + out.err


# -- the suite -------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", list(DATA_FAULTS), ids=list(DATA_FAULTS))
def test_damaged_data_is_refused_by_verify_read_and_s3_read(store_copy, fault, capsys, s3_bucket):
    damaged = DATA_FAULTS[fault](store_copy)
    shard = os.path.relpath(damaged, store_copy)  # e.g. scores/c/1/0/0/0

    report = verify_store(store_copy, progress=False)
    assert [os.path.relpath(p.path, store_copy) for p in report.problems] == [shard]
    _verify_fails(store_copy, capsys, str(damaged))

    with pytest.raises(StoreCorruptError) as error:  # at open when a whole file is gone
        store = LabelMapStore.open(store_copy)
        store.read(np.arange(len(store)))
    assert error.value.path == str(damaged) and str(damaged) in str(error.value)
    with pytest.raises(StoreCorruptError, match=shard):
        LabelMapStore.open(store_copy).load(progress=False)

    url = s3_copy(store_copy, s3_bucket, "maps.zarr")
    with pytest.raises(StoreCorruptError) as error:  # at open when a whole object is gone
        LabelMapStore.open(url).read(np.arange(40))
    assert error.value.path == f"{url}/{shard}" and f"{url}/{shard}" in str(error.value)
    assert [p.path for p in verify_store(url, progress=False).problems] == [f"{url}/{shard}"]


@pytest.mark.parametrize("fault", list(METADATA_FAULTS), ids=list(METADATA_FAULTS))
def test_damaged_metadata_is_refused_naming_the_file(store_copy, fault, capsys, s3_bucket):
    damaged = METADATA_FAULTS[fault](store_copy)
    _verify_fails(store_copy, capsys, str(damaged))
    with pytest.raises(StoreCorruptError, match=str(damaged)):
        store = LabelMapStore.open(store_copy)
        store.read(np.arange(len(store)))
        store.keys  # noqa: B018
    url = s3_copy(store_copy, s3_bucket, "maps.zarr")
    with pytest.raises(StoreCorruptError, match=f"{url}/{os.path.relpath(damaged, store_copy)}"):
        store = LabelMapStore.open(url)
        store.read(np.arange(len(store)))
        store.keys  # noqa: B018


@pytest.mark.parametrize("edit", list(ATTRIBUTE_EDITS), ids=list(ATTRIBUTE_EDITS))
def test_every_edited_attribute_is_refused_at_open(store_copy, edit, capsys, s3_bucket):
    fault, message = ATTRIBUTE_EDITS[edit]
    fault(store_copy)
    for memory in (False, True):  # every memory mode opens through the same checks
        with pytest.raises(DaliRelabelError, match=message):
            LabelMapStore.open(store_copy, in_memory=memory)
    with pytest.raises(DaliRelabelError, match=message):
        LabelMapStore.open(s3_copy(store_copy, s3_bucket, "maps.zarr"))
    assert main(["verify", str(store_copy), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fault",
    ["scores shard deleted", "3 bits flipped in a chunk", "a chunk dropped from the shard index"],
)
@pytest.mark.parametrize("memory", ["host", "stream"])
def test_loader_refuses_damaged_data(sample_data, store_copy, fault, memory):
    damaged = DATA_FAULTS[fault](store_copy)
    with pytest.raises(StoreCorruptError, match=str(damaged)):
        loader = ReLabelLoader(
            sample_data.train, store_copy, 8, device="cpu", label_map_memory=memory
        )
        assert memory == "stream"  # host mode reads the whole table at construction
        for _ in loader:  # the epoch stops at the batch whose maps are damaged
            pass


@pytest.mark.parametrize("edit", ["k", "grid", "complete as a string", "score_kind"])
@pytest.mark.parametrize("memory", ["host", "stream"])
def test_loader_refuses_edited_attributes(sample_data, store_copy, edit, memory):
    fault, message = ATTRIBUTE_EDITS[edit]
    fault(store_copy)
    with pytest.raises(StoreMismatchError, match=message):
        ReLabelLoader(sample_data.train, store_copy, 8, device="cpu", label_map_memory=memory)


def test_a_pristine_store_verifies(pristine, capsys):
    report = verify_store(pristine.path, progress=False)
    assert report.ok and report.shards == 6 and report.format_version == 2
    assert main(["verify", pristine.path, "--quiet"]) == 0
    assert "0 damaged shards" in capsys.readouterr().out


def test_all_zero_maps_are_stored_and_read_strictly(tmp_path):
    # k=1, class 0, score 0: every chunk equals the fill value; format 2 stores it anyway,
    # so a strict read finds every chunk.
    writer = LabelMapWriter.create(
        tmp_path / "z.zarr", ["a", "b", "c"], num_classes=3, k=1, grid=(2, 2), shard_size=2
    )
    for start, stop in writer.missing_blocks():
        zeros = np.zeros((stop - start, 1, 2, 2))
        writer.write_block(start, zeros.astype(np.float32), zeros.astype(np.int64))
    store = writer.finalize()
    assert verify_store(store.path, progress=False).ok
    scores, classes = store.read([0, 1, 2])
    assert not scores.any() and not classes.any()


# -- format 1: read-only, with a note; rewritten into format 2 ------------------------------
def _format1_store(sample_data, path):
    import torch

    maps = np.stack(
        [
            torch.load(sample_data.label_maps / f"{k}.pt", weights_only=True).numpy()
            for k in sample_data.keys
        ]
    )
    writer = LabelMapWriter.create(
        path,
        sample_data.keys,
        num_classes=1000,
        k=5,
        grid=(15, 15),
        shard_size=SHARD,
        _format_version=1,
    )
    for start, stop in writer.missing_blocks():
        writer.write_block(start, maps[start:stop, 0], maps[start:stop, 1].astype(np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaliRelabelWarning)
        writer.finalize()
    return maps


def test_format1_store_opens_with_a_note_and_is_rewritten(sample_data, tmp_path, capsys):
    old = tmp_path / "v1.zarr"
    maps = _format1_store(sample_data, old)
    meta = json.loads((old / "scores" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes", "zstd"]  # no checksum in format 1
    with pytest.warns(DaliRelabelWarning, match=r"format version 1.*dali-relabel rewrite"):
        store = LabelMapStore.open(old)
    np.testing.assert_array_equal(store.read([7])[0], maps[[7], 0].astype(np.float16))
    with pytest.raises(StoreMismatchError, match="format version 1"):
        LabelMapWriter.create(
            old, sample_data.keys, num_classes=1000, k=5, grid=(15, 15), shard_size=SHARD
        )

    assert main(["rewrite", str(old), str(tmp_path / "v2.zarr"), "--quiet"]) == 0
    assert "note: label map store" not in capsys.readouterr().err  # rewrite is the fix
    new = LabelMapStore.open(tmp_path / "v2.zarr")
    assert new.format_version == 2 and new.keys == store.keys
    np.testing.assert_array_equal(new.read(np.arange(40))[1], store.read(np.arange(40))[1])
    assert verify_store(new.path, progress=False).ok

    _shard(old, "scores").unlink()  # format 1 would read zeros: verify and rewrite refuse
    with pytest.warns(DaliRelabelWarning):
        assert not verify_store(old, progress=False).ok
    with pytest.raises(StoreCorruptError, match="scores/c/1/0/0/0"):
        rewrite(old, tmp_path / "v2b.zarr", progress=False)


def test_the_cli_prints_the_format1_note_as_one_line(sample_data, tmp_path, capsys):
    _format1_store(sample_data, tmp_path / "v1.zarr")
    assert main(["info", str(tmp_path / "v1.zarr")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dali-relabel info: note: label map store")


@pytest.mark.parametrize("name", ["scores", "classes"])
def test_a_missing_shard_file_is_found_at_open_and_by_info(store_copy, name, capsys):
    # an incomplete copy: refused before any read (a streaming loader at construction),
    # and info, which exited 0, says so
    gone = _delete(name)(store_copy)
    with pytest.raises(StoreCorruptError, match=rf"1 of 6 shard files are missing .*{name}/c/1"):
        LabelMapStore.open(store_copy)
    assert main(["info", str(store_copy)]) == 1
    assert f"MISSING        1 shard files (first: {gone})" in capsys.readouterr().out
