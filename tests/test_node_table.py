"""node_table: one decoded label table per node, mapped by every local rank.

The data each process sees is compared with the maps the test wrote (not with the
store's own reader); "one copy" is the proportional set size of the table's mappings
(/proc/<pid>/smaps) summed over four live processes, which is the table's size once
when they share it and four times when each holds its own.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from dali_relabel.errors import TableCacheError
from dali_relabel.store import (
    LabelMapStore,
    LabelMapWriter,
    _node_table,
    clear_node_tables,
    fill_table,
    node_table,
)

K, GRID, SHARD = 3, (5, 5), 256


def _maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, K, *GRID)).astype(np.float16)
    classes = rng.integers(0, 1000, (n, K, *GRID)).astype(np.int16)
    return scores, classes


def _write(path, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    scores, classes = _maps(n, seed)
    keys = [f"n{i % 10:08d}/img_{i:06d}" for i in range(n)]
    writer = LabelMapWriter.create(path, keys, num_classes=1000, k=K, grid=GRID, shard_size=SHARD)
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    writer.finalize()
    return scores, classes


@pytest.fixture()
def written(tmp_path):
    scores, classes = _write(tmp_path / "maps.zarr")
    return tmp_path / "maps.zarr", scores, classes


def _files(folder, pattern="*") -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, pattern)))


# -- the copy-free load -----------------------------------------------------------------------
def test_fill_table_whole_and_rows(written):
    path, scores, classes = written
    store = LabelMapStore.open(path)
    out_s = np.full(scores.shape, np.nan, np.float16)
    out_c = np.full(classes.shape, -1, np.int16)
    _node_table._STEP, step = 300, _node_table._STEP  # several ranges, one not aligned
    try:
        fill_table(store, out_s, out_c, progress=False)
        np.testing.assert_array_equal(out_s, scores)
        np.testing.assert_array_equal(out_c, classes)
        rows = np.array([0, 5, 255, 256, 700, 999])
        sub_s, sub_c = np.zeros((6, K, *GRID), np.float16), np.zeros((6, K, *GRID), np.int16)
        fill_table(store, sub_s, sub_c, rows=rows, progress=False)
    finally:
        _node_table._STEP = step
    np.testing.assert_array_equal(sub_s, scores[rows])
    np.testing.assert_array_equal(sub_c, classes[rows])
    loaded = LabelMapStore.open(path).load(progress=False)
    np.testing.assert_array_equal(loaded.tables()[0], scores)
    np.testing.assert_array_equal(loaded.tables()[1], classes)


# -- one process --------------------------------------------------------------------------------
def test_decoded_then_attached(written, tmp_path):
    path, scores, classes = written
    cache = tmp_path / "cache"
    first = node_table(LabelMapStore.open(path), cache, progress=False)
    assert first.role == "decoded"
    np.testing.assert_array_equal(first.scores, scores)
    np.testing.assert_array_equal(first.classes, classes)
    assert not first.scores.flags.writeable
    second = node_table(LabelMapStore.open(path), cache, progress=False)
    assert second.role == "attached" and second.path == first.path
    np.testing.assert_array_equal(second.classes, classes)
    assert _files(cache, "*.bin") == [os.path.basename(first.path)]
    assert _files(cache, "*.tmp.*") == []


def test_changed_store_is_not_served_stale(written, tmp_path):
    path, scores, _ = written
    cache = tmp_path / "cache"
    old = node_table(LabelMapStore.open(path), cache, progress=False)
    np.testing.assert_array_equal(old.scores, scores)
    # rewrite one block with other maps, as a regenerated store would have them
    new_scores, new_classes = _maps(SHARD, seed=7)
    keys = LabelMapStore.open(path).keys
    writer = LabelMapWriter.create(path, keys, num_classes=1000, k=K, grid=GRID, shard_size=SHARD)
    writer.forget_blocks([SHARD])
    writer.write_block(SHARD, new_scores, new_classes)
    writer.finalize()
    fresh = node_table(LabelMapStore.open(path), cache, progress=False)
    assert fresh.role == "decoded" and fresh.path != old.path
    np.testing.assert_array_equal(fresh.scores[SHARD : 2 * SHARD], new_scores)
    np.testing.assert_array_equal(fresh.classes[SHARD : 2 * SHARD], new_classes)
    np.testing.assert_array_equal(fresh.scores[:SHARD], scores[:SHARD])
    assert _files(cache, "*.bin") == [os.path.basename(fresh.path)]  # the old one unlinked
    np.testing.assert_array_equal(old.scores, scores)  # still mapped: its pages stay valid


def test_clear_removes_one_stores_tables_only(written, tmp_path):
    path, _, _ = written
    other = tmp_path / "other.zarr"
    _write(other, n=300, seed=3)
    cache = tmp_path / "cache"
    mine = node_table(LabelMapStore.open(path), cache, progress=False)
    kept = node_table(LabelMapStore.open(other), cache, progress=False)
    assert clear_node_tables(LabelMapStore.open(path), cache) == [mine.path]
    assert _files(cache, "*.bin") == [os.path.basename(kept.path)]
    assert node_table(LabelMapStore.open(path), cache, progress=False).role == "decoded"
    assert sorted(clear_node_tables(cache_dir=cache)) == sorted([mine.path, kept.path])
    assert _files(cache, "*.bin") == []


def test_foreign_file_under_the_name_is_not_accepted(written, tmp_path):
    path, scores, _ = written
    cache = tmp_path / "cache"
    table = node_table(LabelMapStore.open(path), cache, progress=False)
    name = table.path
    del table
    with open(name, "r+b") as f:  # same size, another store's header
        f.write(b'{"fingerprint": "0000"}')
    again = node_table(LabelMapStore.open(path), cache, progress=False)
    assert again.role == "decoded"
    np.testing.assert_array_equal(again.scores, scores)


def test_no_room_names_the_folder_and_the_fix(written, tmp_path, monkeypatch):
    path, _, _ = written
    cache = tmp_path / "cache"
    monkeypatch.setattr(_node_table, "_free", lambda folder: 1000)
    with pytest.raises(TableCacheError, match=r"no room for the label table.*cache_dir"):
        node_table(LabelMapStore.open(path), cache, progress=False)
    assert _files(cache, "*.bin") == [] and _files(cache, "*.tmp.*") == []


def test_a_folder_filling_up_meanwhile_is_an_error_not_a_half_table(written, tmp_path, monkeypatch):
    """The space is reserved before decoding: ENOSPC then (another job took the room
    after the free-space check) is the same clear error, and nothing is left."""
    path, _, _ = written
    cache = tmp_path / "cache"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(TableCacheError, match=r"no room for the label table in .*cache"):
        node_table(LabelMapStore.open(path), cache, progress=False)
    assert _files(cache, "*.bin") == [] and _files(cache, "*.tmp.*") == []


def test_default_folders_shm_then_disk(written, tmp_path, monkeypatch):
    """Without a cache_dir, /dev/shm when it has room, else the disk folder of
    DALI_RELABEL_CACHE's default; with too little everywhere the error says --shm-size."""
    path, scores, _ = written
    shm, disk = tmp_path / "shm", tmp_path / "home_cache"
    shm.mkdir()
    monkeypatch.setattr(_node_table, "_SHM", str(shm))
    monkeypatch.delenv(_node_table.CACHE_ENV, raising=False)
    monkeypatch.setattr(_node_table, "default_cache_dir", lambda: str(disk))
    real_free = _node_table._free
    monkeypatch.setattr(
        _node_table, "_free", lambda f: 64 * 2**20 // 1000 if f == str(shm) else real_free(f)
    )
    table = node_table(LabelMapStore.open(path), progress=False)
    assert os.path.dirname(table.path) == str(disk)  # /dev/shm too small
    np.testing.assert_array_equal(table.scores, scores)
    monkeypatch.setattr(_node_table, "_free", lambda f: 1000)
    store2 = tmp_path / "other.zarr"
    _write(store2, n=300, seed=3)
    with pytest.raises(TableCacheError, match="--shm-size"):
        node_table(LabelMapStore.open(store2), progress=False)


def test_a_store_on_s3_is_read_once_into_the_node_table(written, s3_bucket, tmp_path):
    """The same function on a store served by an S3 server on loopback: decoded once, then
    mapped; a rewritten object (another ETag) gives a new table."""
    import boto3
    from conftest import s3_copy

    path, scores, classes = written
    url = s3_copy(path, s3_bucket, "maps.zarr")
    cache = tmp_path / "cache_s3"
    first = node_table(LabelMapStore.open(url), cache, progress=False)
    assert first.role == "decoded"
    np.testing.assert_array_equal(first.scores, scores)
    np.testing.assert_array_equal(first.classes, classes)
    assert node_table(LabelMapStore.open(url), cache, progress=False).role == "attached"
    client = boto3.client("s3")
    key = "maps.zarr/zarr.json"
    body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=body + b" ")  # same attributes
    again = node_table(LabelMapStore.open(url), cache, progress=False)
    assert again.role == "decoded" and again.path != first.path


# -- processes ------------------------------------------------------------------------------------
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def _pss_of(path: str) -> tuple[int, int]:
    """(Rss, Pss) in bytes of this process's mappings of ``path``."""
    rss = pss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(path)
            elif inside and first == "Rss:":
                rss += int(line.split()[1]) * 1024
            elif inside and first == "Pss:":
                pss += int(line.split()[1]) * 1024
    return rss, pss


def _rank(store_path, cache, barrier, results, rank) -> None:
    table = node_table(LabelMapStore.open(store_path), cache, progress=False)
    sums = (
        float(np.asarray(table.scores, np.float64).sum()),
        int(np.asarray(table.classes, np.int64).sum()),
    )
    digest = _digest(table.scores, table.classes)  # every page touched
    barrier.wait(timeout=120)  # all four map the file now
    rss, pss = _pss_of(table.path)
    barrier.wait(timeout=120)
    results.put((rank, table.role, table.path, sums, digest, rss, pss))


def test_four_processes_share_one_copy(written, tmp_path):
    path, scores, classes = written
    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(str(path), str(cache), barrier, results, r))
        for r in range(4)
    ]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    roles = sorted(r[1] for r in got)
    assert roles == ["attached", "attached", "attached", "decoded"]
    assert len({r[2] for r in got}) == 1  # one file
    want = (float(scores.astype(np.float64).sum()), int(classes.astype(np.int64).sum()))
    want_hash = _digest(scores, classes)
    for _, _, _, sums, digest, _, _ in got:
        assert sums == want and digest == want_hash
    table_bytes = os.path.getsize(got[0][2])
    for *_, rss, _ in got:  # each maps the whole table ...
        assert rss >= 0.9 * table_bytes
    total_pss = sum(r[6] for r in got)  # ... and the node holds it once
    assert 0.9 * table_bytes <= total_pss <= 1.1 * table_bytes, (total_pss, table_bytes)
    assert _files(cache, "*.bin") == [os.path.basename(got[0][2])]


def _die_decoding(store_path, cache) -> None:
    _node_table._STEP = 128

    def killed(done: int) -> None:
        if done >= 256:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-decode, holding the lock

    node_table(LabelMapStore.open(store_path), cache, progress=False, _on_range=killed)


def test_rank_killed_holding_the_lock(written, tmp_path):
    path, scores, classes = written
    cache = tmp_path / "cache"
    child = mp.get_context("spawn").Process(target=_die_decoding, args=(str(path), str(cache)))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert _files(cache, "*.bin") == []  # nothing that looks finished
    assert len(_files(cache, "*.tmp.*")) == 1  # its half table
    start = time.monotonic()
    table = node_table(LabelMapStore.open(path), cache, progress=False)
    assert time.monotonic() - start < 60  # the lock died with its holder
    assert table.role == "decoded"
    np.testing.assert_array_equal(table.scores, scores)
    np.testing.assert_array_equal(table.classes, classes)
    assert _files(cache, "*.tmp.*") == []  # the orphan was removed
