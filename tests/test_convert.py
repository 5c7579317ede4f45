"""`dali-relabel convert`, `info` and `verify`: round trips, the official orientation, bad input."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torchvision.ops import roi_align

from dali_relabel import LabelMapStore
from dali_relabel.cli import main
from dali_relabel.labelmaps import convert


def _official_tree(root: Path, n: int, *, k=5, grid=(15, 15), seed=0, num_classes=1000):
    """n official-format files [2, k, H, W] under root/<wnid>/<stem>.pt; returns their arrays."""
    rng = np.random.default_rng(seed)
    maps = {}
    for i in range(n):
        wnid = f"n{(i % 4):08d}"
        key = f"{wnid}/{wnid}_{i}"
        scores = rng.normal(0, 3, (k, *grid)).astype(np.float32)
        classes = np.stack(
            [rng.choice(num_classes, k, replace=False) for _ in range(grid[0] * grid[1])]
        )
        classes = classes.T.reshape(k, *grid).astype(np.float32)
        (root / wnid).mkdir(parents=True, exist_ok=True)
        tensor = torch.from_numpy(np.stack([scores, classes]))
        torch.save(tensor, root / f"{key}.pt")
        maps[key] = tensor.numpy()
    return maps


def _dense(scores, classes, num_classes):
    out = torch.zeros(scores.shape[0], num_classes, *scores.shape[2:], dtype=torch.float64)
    return out.scatter_(1, classes.long(), scores.double())


@pytest.mark.parametrize("layout", ["official", "hw"])
def test_round_trip_of_hundreds_of_files(tmp_path, layout):
    maps = _official_tree(tmp_path / "src", 300, grid=(15, 13))
    store = convert(
        tmp_path / "src", tmp_path / "out.zarr", layout=layout, workers=2, shard_size=64
    )
    assert len(store) == 300 and set(store.keys) == set(maps)
    assert store.grid == ((13, 15) if layout == "official" else (15, 13))
    assert store.attrs["layout"] == layout and store.class_names[285] == "n02124075"
    scores, classes = store.read(np.arange(300))
    for i, key in enumerate(store.keys):
        want = maps[key]
        if layout == "official":
            want = want.swapaxes(-1, -2)
        np.testing.assert_allclose(scores[i], want[0], rtol=1e-3, atol=2e-3)  # float16
        np.testing.assert_array_equal(classes[i], want[1].astype(np.int64))


def test_official_layout_reproduces_official_targets(tmp_path):
    """The official code feeds (top, left, bottom, right) * 15 - 0.5 to roi_align: after the
    import transpose, boxes in (x1, y1, x2, y2) on the store reproduce those targets."""
    maps = _official_tree(tmp_path / "src", 8, num_classes=50)
    store = convert(
        tmp_path / "src", tmp_path / "out.zarr", num_classes=50, score_dtype="float32", workers=1
    )
    keys = list(store.keys)
    official = torch.from_numpy(np.stack([maps[key] for key in keys]))
    dense_official = _dense(official[:, 0], official[:, 1], 50)
    scores, classes = store.read(np.arange(len(keys)))
    dense_ours = _dense(torch.from_numpy(scores), torch.from_numpy(classes), 50)
    rng = np.random.default_rng(1)
    for _ in range(50):
        x1, x2 = np.sort(rng.uniform(0, 1, 2))
        y1, y2 = np.sort(rng.uniform(0, 1, 2))
        b = torch.arange(len(keys), dtype=torch.float64)[:, None]
        top_left = torch.tensor([y1, x1, y2, x2], dtype=torch.float64) * 15 - 0.5
        ours = torch.tensor([x1, y1, x2, y2], dtype=torch.float64) * 15 - 0.5
        want = roi_align(dense_official, torch.cat([b, top_left.expand(len(keys), 4)], 1), 1)
        got = roi_align(dense_ours, torch.cat([b, ours.expand(len(keys), 4)], 1), 1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_dense_maps_keep_topk(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(3, 20, 4, 6)).astype(np.float32)
    for i, d in enumerate(dense):
        (tmp_path / "src" / "c").mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(d), tmp_path / "src" / "c" / f"{i}.pt")
    store = convert(tmp_path / "src", tmp_path / "o.zarr", layout="hw", topk=3, workers=1)
    assert store.num_classes == 20 and store.k == 3 and store.class_names is None
    scores, classes = store.read([0, 1, 2])
    want_classes = np.argsort(-dense, axis=1)[:, :3]
    np.testing.assert_array_equal(classes, want_classes)
    np.testing.assert_allclose(
        scores, np.take_along_axis(dense, want_classes, 1), rtol=1e-3, atol=1e-3
    )


def _cli(*args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_not_complete(path):
    if (path / "zarr.json").exists():
        assert not LabelMapStore.open(path, allow_incomplete=True).complete


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("shape", lambda: torch.zeros(3, 5, 15, 15), r"shape \[3, 5, 15, 15\]"),
        ("nan", lambda: _one(scores_value=float("nan")), "NaN or inf"),
        ("inf", lambda: _one(scores_value=float("inf")), "NaN or inf"),
        ("range", lambda: _one(class_value=1000.0), r"class index 1000 is outside \[0, 1000\)"),
        ("negative", lambda: _one(class_value=-1.0), r"class index -1 is outside"),
        ("fraction", lambda: _one(class_value=2.5), "not all integers"),
        ("intdtype", lambda: torch.zeros(2, 5, 15, 15, dtype=torch.int64), "not floating point"),
        ("object", lambda: {"a": 1}, "holds a dict, not a tensor"),
    ],
)
def test_bad_files_name_the_file(tmp_path, capsys, name, make, message):
    _official_tree(tmp_path / "src", 6, num_classes=1000)
    bad = tmp_path / "src" / "n00000001" / f"bad_{name}.pt"
    torch.save(make(), bad)
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 1, capsys=capsys
    )
    assert code == 1
    assert f"bad_{name}.pt" in out and __import__("re").search(message, out), out
    _assert_not_complete(tmp_path / "o.zarr")


def _one(scores_value=0.0, class_value=0.0):
    t = torch.zeros(2, 5, 15, 15)
    t[1] = torch.arange(5.0)[:, None, None]
    t[0, 0, 3, 3] = scores_value
    if class_value != 0.0:
        t[1, 0, 3, 3] = class_value
    return t


def test_corrupt_and_pickled_files(tmp_path, capsys):
    _official_tree(tmp_path / "src", 3)
    (tmp_path / "src" / "n00000000" / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 1, capsys=capsys
    )
    assert code == 1 and "corrupt.pt: cannot be read as a tensor file" in out

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "src" / "n00000000" / "corrupt.pt").unlink()
    torch.save(Evil(), tmp_path / "src" / "n00000000" / "evil.pt")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o2.zarr", "--workers", 1, capsys=capsys
    )
    assert code == 1 and "evil.pt: cannot be read" in out
    assert not (tmp_path / "pwned").exists()  # weights_only: nothing was unpickled


def test_k_or_grid_differing_between_files(tmp_path, capsys):
    _official_tree(tmp_path / "src", 4)
    _official_tree(tmp_path / "src2", 1, k=3, seed=5)
    other = next((tmp_path / "src2").rglob("*.pt"))
    other.rename(tmp_path / "src" / "n00000003" / "zz_k3.pt")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 2, capsys=capsys
    )
    assert (
        code == 1 and "zz_k3.pt" in out and "differs from the [5, 15, 15] of the other files" in out
    )
    _assert_not_complete(tmp_path / "o.zarr")


def test_empty_source_and_bad_outputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = _cli("convert", tmp_path / "empty", tmp_path / "o.zarr", capsys=capsys)
    assert code == 1 and "holds no .pt label maps" in out
    code, out = _cli("convert", tmp_path / "nowhere", tmp_path / "o.zarr", capsys=capsys)
    assert code == 1 and "is not a folder" in out

    _official_tree(tmp_path / "src", 4)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, out = _cli("convert", tmp_path / "src", tmp_path / "taken", capsys=capsys)
    assert code == 1 and "exists and is not a label map store" in out
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

    assert _cli("convert", tmp_path / "src", tmp_path / "o.zarr", capsys=capsys)[0] == 0
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--layout", "hw", capsys=capsys
    )
    assert code == 1 and "store of other parameters" in out and "layout" in out


def test_info_and_verify(tmp_path, capsys, sample_data):
    store_path = tmp_path / "s.zarr"
    assert _cli("convert", sample_data.label_maps, store_path, capsys=capsys)[0] == 0
    code, out = _cli("info", store_path, capsys=capsys)
    assert code == 0 and "samples        40" in out and "5 of 1,000 classes" in out
    code, out = _cli("verify", store_path, "--images", sample_data.train, capsys=capsys)
    assert code == 0 and "0 images without a label map" in out

    extra = tmp_path / "train"
    import shutil

    shutil.copytree(sample_data.train, extra)
    (extra / "n02124075" / "n02124075_0.JPEG").unlink()
    shutil.copy(extra / "n02124075" / "n02124075_1.JPEG", extra / "n02124075" / "new_1.JPEG")
    code, out = _cli("verify", store_path, "--images", extra, capsys=capsys)
    assert code == 1
    assert "1 images without a label map\n  n02124075/new_1" in out
    assert "1 maps without an image\n  n02124075/n02124075_0" in out


def _run_convert(src, out, shard):
    cmd = [sys.executable, "-m", "dali_relabel.cli", "convert", str(src), str(out)]
    return [*cmd, "--workers", "1", "--shard-size", str(shard)]


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    _official_tree(tmp_path / "src", 240)
    reference = convert(tmp_path / "src", tmp_path / "ref.zarr", workers=1, shard_size=8)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_run_convert(tmp_path / "src", out, 8), stderr=subprocess.DEVNULL)
    flags = out / "blocks_done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # Count finished flag files only, not a writer's temporary file.
        if flags.is_dir() and sum(p.name.isdigit() for p in flags.iterdir()) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(ValueError, match="incomplete"):
        LabelMapStore.open(out)
    done = int(zarr.open_group(out, mode="r")["blocks_done"][...].sum())  # the format's flags
    assert 3 <= done < 30
    subprocess.run(_run_convert(tmp_path / "src", out, 8), check=True, stderr=subprocess.DEVNULL)
    resumed = LabelMapStore.open(out)
    assert resumed.keys == reference.keys
    for a, b in zip(resumed.tables(), reference.tables(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_scores_beyond_float16_are_refused_before_the_cast(tmp_path, capsys):
    _official_tree(tmp_path / "src", 6)
    big = _one()
    big[0, 0, 2, 7] = 7e4  # stored as inf in float16: NaN targets, silently, before
    torch.save(big, tmp_path / "src" / "n00000002" / "big.pt")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 0, capsys=capsys
    )
    assert code == 1 and "big.pt: score 70000 does not fit float16" in out and "--float32" in out
    _assert_not_complete(tmp_path / "o.zarr")
    code, _ = _cli(
        "convert",
        tmp_path / "src",
        tmp_path / "o32.zarr",
        "--float32",
        "--layout",
        "hw",
        "--workers",
        0,
        capsys=capsys,
    )
    store = LabelMapStore.open(tmp_path / "o32.zarr")
    assert code == 0 and float(store.read([store.index("n00000002/big")])[0].max()) == 7e4


def test_a_class_repeated_within_a_cell_is_refused(tmp_path, capsys):
    _official_tree(tmp_path / "src", 4)
    twice = _one()
    twice[1, 3, 4, 5] = twice[1, 0, 4, 5]  # class 0 listed twice in cell (4, 5)
    torch.save(twice, tmp_path / "src" / "n00000001" / "twice.pt")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 0, capsys=capsys
    )
    assert code == 1 and "twice.pt: class 0 appears more than once" in out
    assert "cell [:, 4, 5]" in out


def test_an_odd_first_file_is_the_one_named(tmp_path, capsys):
    _official_tree(tmp_path / "src", 8)
    odd = _official_tree(tmp_path / "src2", 1, k=3, seed=5)
    (tmp_path / "src2" / f"{next(iter(odd))}.pt").rename(tmp_path / "src" / "n00000000" / "a.pt")
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "o.zarr", "--workers", 0, capsys=capsys
    )
    assert code == 1 and "n00000000/a.pt: label map of shape [k, H, W] = [3, 15, 15]" in out
    assert "differs from the [5, 15, 15] of the other files" in out


def test_workers_zero_reads_in_process_and_negative_is_refused_first(tmp_path, capsys):
    maps = _official_tree(tmp_path / "src", 10)
    code, out = _cli(
        "convert", tmp_path / "src", tmp_path / "bad.zarr", "--workers", -1, capsys=capsys
    )
    assert code == 1 and "workers must be >= 0, got -1" in out
    assert not (tmp_path / "bad.zarr").exists()  # refused before anything was written
    store = convert(tmp_path / "src", tmp_path / "o.zarr", workers=0, layout="hw", progress=False)
    key = store.keys[3]
    np.testing.assert_array_equal(store.read([3])[1][0], maps[key][1])


def test_a_symlink_loop_in_the_source_is_named(tmp_path, capsys):
    _official_tree(tmp_path / "src", 4)
    (tmp_path / "src" / "n00000001" / "loop").symlink_to(tmp_path / "src")
    code, out = _cli("convert", tmp_path / "src", tmp_path / "o.zarr", capsys=capsys)
    assert code == 1 and "directory loop" in out and "n00000001/loop" in out


_SLOW_CONVERT = """
import sys, time
from dali_relabel.labelmaps import _convert
load = _convert._load_block
def slow(*args, **kwargs):
    time.sleep(0.5)
    return load(*args, **kwargs)
_convert._load_block = slow
_convert.convert(sys.argv[1], sys.argv[2], workers=2, shard_size=2, progress=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_reader_processes_exit_when_convert_is_killed(tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    _official_tree(tmp_path / "src", 40)
    parent = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CONVERT, str(tmp_path / "src"), str(tmp_path / "o.zarr")],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        children = []
        while time.time() < deadline and len(children) < 2 and parent.poll() is None:
            children = psutil.Process(parent.pid).children()
            time.sleep(0.05)
        assert len(children) == 2, "the reader processes did not start"
        parent.send_signal(sig)
        parent.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"reader processes {[p.pid for p in alive]} outlived convert"
    finally:  # only what this test started
        parent.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
