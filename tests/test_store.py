"""LabelMapStore and LabelMapWriter: format, reads in any order, memory mode, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import s3_copy

from dali_relabel import LabelMapStore
from dali_relabel.errors import (
    ArgumentError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
)
from dali_relabel.store import STORE_FORMAT, LabelMapWriter


def _random_maps(n, k=5, grid=(15, 11), num_classes=1000, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 4, (n, k, *grid)).astype(np.float32)
    classes = rng.integers(0, num_classes, (n, k, *grid))
    return scores, classes


def _write(path, n=50, shard_size=16, **kwargs):
    params = {"num_classes": 1000, "k": 5, "grid": (15, 11), **kwargs}
    scores, classes = _random_maps(n, params["k"], params["grid"], params["num_classes"])
    keys = [f"c{i % 3}/img_{i:04d}" for i in range(n)]
    writer = LabelMapWriter.create(path, keys, shard_size=shard_size, **params)
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    return writer.finalize(), keys, scores, classes


def test_round_trip_any_order_with_repeats(tmp_path):
    store, keys, scores, classes = _write(tmp_path / "s.zarr")
    assert len(store) == 50 and store.keys == tuple(keys)
    assert (store.k, store.grid, store.num_classes) == (5, (15, 11), 1000)
    idx = [49, 0, 17, 17, 33, 16, 15]
    s, c = store.read(idx)
    assert s.shape == (7, 5, 15, 11) and s.dtype == np.float16 and c.dtype == np.int16
    np.testing.assert_array_equal(s, scores[idx].astype(np.float16))
    np.testing.assert_array_equal(c, classes[idx])


def test_memory_mode_equals_disk_and_zarr_python(tmp_path):
    import zarr

    path = tmp_path / "s.zarr"
    _write(path)
    idx = np.array([3, 40, 3, 21])
    disk = LabelMapStore.open(path).read(idx)
    memory = LabelMapStore.open(path, in_memory=True)
    assert memory.in_memory
    group = zarr.open_group(path, mode="r")  # another library's reading of the same files
    reference = group["scores"][...][idx], group["classes"][...][idx]
    for other in (memory.read(idx), reference):
        np.testing.assert_array_equal(disk[0], other[0])
        np.testing.assert_array_equal(disk[1], other[1])
    tables = memory.tables()
    assert tables[0].shape == (50, 5, 15, 11)


def test_read_torch(tmp_path):
    store, _, _scores, classes = _write(tmp_path / "s.zarr")
    s, c = store.read_torch([1, 2])
    assert s.shape == (2, 5, 15, 11) and str(s.device) == "cpu"
    np.testing.assert_array_equal(c.numpy(), classes[[1, 2]])


def test_float32_and_int32_class_dtype(tmp_path):
    store, _, scores, _ = _write(tmp_path / "s.zarr", score_dtype="float32", num_classes=40000)
    s, c = store.read([5])
    assert s.dtype == np.float32 and c.dtype == np.int32
    np.testing.assert_array_equal(s[0], scores[5])


@pytest.mark.parametrize(("score_dtype", "num_classes"), [("float16", 1000), ("float32", 40000)])
def test_bytes_per_sample_is_what_the_tables_take(tmp_path, score_dtype, num_classes):
    store, *_ = _write(tmp_path / "s.zarr", score_dtype=score_dtype, num_classes=num_classes)
    tables = store.tables()
    assert store.bytes_per_sample * len(store) == sum(table.nbytes for table in tables)
    assert (store.score_dtype, store.class_dtype) == (tables[0].dtype, tables[1].dtype)


def test_index_and_indices(tmp_path):
    store, keys, _, _ = _write(tmp_path / "s.zarr")
    assert store.index(keys[7]) == 7
    np.testing.assert_array_equal(store.indices([keys[9], keys[2]]), [9, 2])
    with pytest.raises(KeyError, match="no key 'nope'"):
        store.index("nope")
    with pytest.raises(KeyError, match="2 keys are not in"):
        store.indices([keys[0], "a/x", "b/y"])


def test_bad_indices(tmp_path):
    store, *_ = _write(tmp_path / "s.zarr")
    with pytest.raises(IndexError, match="50 is out of range"):
        store.read([50])
    with pytest.raises(IndexError, match="-1"):
        store.read([-1])
    with pytest.raises(TypeError, match="1-D sequence of integers"):
        store.read(np.zeros((2, 2), int))
    assert store.read([])[0].shape == (0, 5, 15, 11)


def test_format_attributes_on_disk(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, class_names=[f"n{i:08d}" for i in range(1000)], provenance={"teacher": "t"})
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["format"] == STORE_FORMAT and attrs["format_version"] == 2
    assert attrs["complete"] is True
    assert attrs["grid"] == [15, 11] and attrs["k"] == 5 and attrs["num_classes"] == 1000
    assert attrs["score_kind"] == "logits" and attrs["provenance"] == {"teacher": "t"}
    scores_meta = json.loads((path / "scores" / "zarr.json").read_text())
    assert scores_meta["shape"] == [50, 5, 15, 11]
    assert scores_meta["codecs"][0]["name"] == "sharding_indexed"
    sharding = scores_meta["codecs"][0]["configuration"]
    assert sharding["chunk_shape"] == [1, 5, 15, 11]
    # format 2: a checksum over every stored chunk and over the shard index
    assert [c["name"] for c in sharding["codecs"]] == ["bytes", "zstd", "crc32c"]
    assert [c["name"] for c in sharding["index_codecs"]] == ["bytes", "crc32c"]


def test_incomplete_store_is_refused_then_resumed(tmp_path):
    path = tmp_path / "s.zarr"
    scores, classes = _random_maps(40)
    keys = [f"a/{i}" for i in range(40)]
    writer = LabelMapWriter.create(path, keys, num_classes=1000, k=5, grid=(15, 11), shard_size=16)
    start, stop = writer.missing_blocks()[0]
    writer.write_block(start, scores[start:stop], classes[start:stop])
    with pytest.raises(StoreIncompleteError, match="interrupted"):
        LabelMapStore.open(path)
    with pytest.raises(StoreIncompleteError, match="2 of 3 blocks"):
        writer.finalize()
    assert LabelMapStore.open(path, allow_incomplete=True).complete is False
    again = LabelMapWriter.create(path, keys, num_classes=1000, k=5, grid=(15, 11), shard_size=16)
    assert again.missing_blocks() == [(16, 32), (32, 40)]
    for start, stop in again.missing_blocks():
        again.write_block(start, scores[start:stop], classes[start:stop])
    np.testing.assert_array_equal(again.finalize().read([39])[1], classes[[39]])


def test_writer_refuses_other_parameters_and_foreign_paths(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path)
    keys = [f"c{i % 3}/img_{i:04d}" for i in range(50)]
    with pytest.raises(StoreMismatchError, match=r"other parameters.*k: 5 there, 3 now"):
        LabelMapWriter.create(path, keys, num_classes=1000, k=3, grid=(15, 11), shard_size=16)
    with pytest.raises(
        StoreMismatchError, match=r"other images: 1 are gone \(first: c1/img_0049\)"
    ):
        LabelMapWriter.create(path, keys[:-1], num_classes=1000, k=5, grid=(15, 11), shard_size=16)
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x")
    with pytest.raises(StoreMismatchError, match="exists and is not a label map store"):
        LabelMapWriter.create(other, keys, num_classes=1000, k=5, grid=(15, 11))


def test_writer_checks_blocks(tmp_path):
    writer = LabelMapWriter.create(
        tmp_path / "s.zarr", ["a", "b", "c"], num_classes=10, k=2, grid=(3, 3), shard_size=2
    )
    scores = np.zeros((2, 2, 3, 3), np.float32)
    classes = np.zeros((2, 2, 3, 3), np.int64)
    with pytest.raises(ValueError, match="start=1 is not the start of a block"):
        writer.write_block(1, scores, classes)
    with pytest.raises(ValueError, match=r"must have shape \(1, 2, 3, 3\)"):
        writer.write_block(2, scores, classes)
    bad = scores.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        writer.write_block(0, bad, classes)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        writer.write_block(0, scores, classes + 10)
    big = scores.copy()
    big[1, 0, 2, 2] = -7e4  # float16 would store -inf: NaN targets
    with pytest.raises(ValueError, match=r"reach 70000, beyond the largest float16.*float32"):
        writer.write_block(0, big, classes)
    with pytest.raises(ValueError, match="unique"):
        LabelMapWriter.create(tmp_path / "d.zarr", ["a", "a"], num_classes=10, k=2, grid=(3, 3))
    with pytest.raises(ValueError, match="k must be in"):
        LabelMapWriter.create(tmp_path / "e.zarr", ["a"], num_classes=10, k=11, grid=(3, 3))


def test_open_errors(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        LabelMapStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFoundError, match=r"has no zarr\.json"):
        LabelMapStore.open(tmp_path / "plain")
    import zarr

    zarr.open_group(tmp_path / "g.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(StoreMismatchError, match="not a dali_relabel label map store"):
        LabelMapStore.open(tmp_path / "g.zarr")
    assert isinstance(StoreNotFoundError("x"), FileNotFoundError)


def test_open_s3_url(tmp_path, s3_bucket):
    path = tmp_path / "s.zarr"
    _, keys, scores, classes = _write(path)
    url = s3_copy(path, s3_bucket, "runs/s.zarr")
    store = LabelMapStore.open(url + "/")  # a trailing slash names the same store
    assert store.path == url and store.keys == tuple(keys) and store.location.bucket == s3_bucket
    s, c = store.read([4, 2])
    np.testing.assert_array_equal(c, classes[[4, 2]])
    np.testing.assert_array_equal(s, scores[[4, 2]].astype(np.float16))


@pytest.mark.parametrize("url", ["memory:///s.zarr", "gs://bucket/s.zarr", "https://x/s.zarr"])
def test_other_urls_are_refused_naming_what_is_supported(url):
    with pytest.raises(ArgumentError, match=r"is not supported; a store is a local path or an S3"):
        LabelMapStore.open(url)


def test_relative_paths_survive_a_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores, classes = _random_maps(20)
    writer = LabelMapWriter.create(
        "rel.zarr", [f"k{i}" for i in range(20)], num_classes=1000, k=5, grid=(15, 11), shard_size=8
    )
    for i, (start, stop) in enumerate(writer.missing_blocks()):
        if i == 1:
            (tmp_path / "elsewhere").mkdir()
            monkeypatch.chdir(tmp_path / "elsewhere")
        writer.write_block(start, scores[start:stop], classes[start:stop])
    store = writer.finalize()
    monkeypatch.chdir(tmp_path)
    opened = LabelMapStore.open("rel.zarr")
    monkeypatch.chdir(tmp_path / "elsewhere")
    for s in (store, opened):
        np.testing.assert_array_equal(s.read([19])[1], classes[[19]])
    assert not (tmp_path / "elsewhere" / "rel.zarr").exists()


def test_a_writer_killed_while_creating_the_arrays_is_resumed(tmp_path, monkeypatch):
    from dali_relabel.store import _writer

    path = tmp_path / "s.zarr"
    keys = [f"k{i}" for i in range(20)]
    params = {"num_classes": 1000, "k": 5, "grid": (15, 11), "shard_size": 8}
    real = _writer._create_arrays

    def killed(root, attrs, keys):  # dies after the attributes, with half the arrays made
        import zarr

        zarr.open_group(root, mode="r+").create_array("scores", shape=(1,), dtype="uint8")
        raise KeyboardInterrupt

    monkeypatch.setattr(_writer, "_create_arrays", killed)
    with pytest.raises(KeyboardInterrupt):
        LabelMapWriter.create(path, keys, **params)
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["complete"] is False and attrs["k"] == 5  # labelled from the start
    with pytest.raises(StoreIncompleteError):
        LabelMapStore.open(path)
    monkeypatch.setattr(_writer, "_create_arrays", real)
    scores, classes = _random_maps(20)
    writer = LabelMapWriter.create(path, keys, **params)  # resumes, makes the arrays again
    assert writer.missing_blocks() == [(0, 8), (8, 16), (16, 20)]
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    np.testing.assert_array_equal(writer.finalize().read([19])[1], classes[[19]])


def test_an_unlabelled_group_left_by_a_format1_writer_is_taken_over(tmp_path):
    import zarr

    path = tmp_path / "s.zarr"
    group = zarr.open_group(path, mode="w")  # format 1 made the group before its attributes
    group.create_array("scores", shape=(3,), dtype="uint8")
    _write(path, n=20)
    assert LabelMapStore.open(path).format_version == 2
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w").create_array("images", shape=(3,), dtype="uint8")
    with pytest.raises(StoreMismatchError, match="not a label map store"):
        _write(foreign, n=20)


def test_refusals_name_the_differing_entry_not_whole_records(tmp_path):
    path = tmp_path / "s.zarr"
    provenance = {"teacher": "a", "weights_sha256": "f" * 64, "notes": "x" * 500}
    _write(path, provenance=provenance)
    keys = [f"c{i % 3}/img_{i:04d}" for i in range(50)]
    with pytest.raises(StoreMismatchError) as error:
        LabelMapWriter.create(
            path,
            keys,
            num_classes=1000,
            k=5,
            grid=(15, 11),
            shard_size=16,
            provenance={**provenance, "teacher": "b"},
        )
    message = str(error.value)
    assert "provenance.teacher: 'a' there, 'b' now" in message
    assert "weights_sha256" not in message and "xxxx" not in message and len(message) < 300


def test_fingerprint_of_a_local_store_follows_its_files(tmp_path):
    path = tmp_path / "s.zarr"
    store = _write(path)[0]
    first = store.fingerprint()
    assert LabelMapStore.open(path).fingerprint() == first  # stable across opens
    shard = path / "scores" / "c" / "1" / "0" / "0" / "0"
    os.utime(shard, ns=(1, 1))  # a shard rewritten (same size, another time)
    second = store.fingerprint()
    assert second != first
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["provenance"]["note"] = "edited"
    (path / "zarr.json").write_text(json.dumps(doc))
    assert store.fingerprint() not in (first, second)
