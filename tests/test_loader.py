"""ReLabelLoader on the CPU: shapes, epochs, shards, the join by identity, crop geometry, bad input.

Two synthetic folders pin the conventions (STYLE.md): images whose pixels encode their
sample index, with label maps stored in another order whose top class is that index
(a wrong join fails), and images split into a red and a blue half with label maps
favouring class A on the red half (an x/y swap or a wrong mirror fails).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import threading
import time
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from dali_relabel import ReLabelLoader
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import (
    ArgumentError,
    ImageDecodeError,
    StoreCorruptError,
    StoreMismatchError,
)
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.loader import EVAL_OUTPUTS, TRAIN_OUTPUTS
from dali_relabel.loader._epoch import PREFETCH_DEPTH
from dali_relabel.store import LabelMapStore, LabelMapWriter

CROP = 64
FAST = {"crop_size": CROP, "num_threads": 2}
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW images back to 0-255 RGB."""
    return images.float() * _STD + _MEAN


def _write_store(path, keys, scores, classes, num_classes, class_names=None):
    writer = LabelMapWriter.create(
        path,
        keys,
        num_classes=num_classes,
        k=scores.shape[1],
        grid=scores.shape[2:],
        class_names=class_names,
        shard_size=16,
    )
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    return writer.finalize()


def _save_jpeg(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95)


# -- coded data: colour = sample index, label map top class = sample index ---------------
LEVELS = np.array([32, 96, 160, 224])
CODED_CLASSES, CODED_PER_CLASS = 3, 10
CODED_N = CODED_CLASSES * CODED_PER_CLASS


def _code_colour(i: int) -> np.ndarray:
    return LEVELS[[i % 4, (i // 4) % 4, (i // 16) % 4]].astype(np.uint8)


def _decode_ids(images: torch.Tensor) -> list[int]:
    rgb = _pixels(images).mean(dim=(2, 3)).numpy()
    digits = np.clip(np.rint((rgb - 32) / 64), 0, 3).astype(int)
    return (digits[:, 0] + 4 * digits[:, 1] + 16 * digits[:, 2]).tolist()


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    rng = np.random.default_rng(0)
    keys = []
    for c in range(CODED_CLASSES):
        for j in range(CODED_PER_CLASS):
            i = len(keys)
            h, w = rng.integers(60, 160, 2)
            _save_jpeg(
                root / "train" / f"c{c:02d}" / f"{j:02d}.JPEG", np.full((h, w, 3), _code_colour(i))
            )
            keys.append(f"c{c:02d}/{j:02d}")
    # Rows in another order than the folder's: only a join by key gives the right map.
    perm = rng.permutation(CODED_N)
    stored_keys = [keys[i] for i in perm]
    classes = np.broadcast_to(perm[:, None, None, None], (CODED_N, 1, 2, 2)).copy()
    scores = np.full((CODED_N, 1, 2, 2), 8.0, np.float32)
    names = [f"c{i:02d}" for i in range(64)]
    _write_store(root / "maps.zarr", stored_keys, scores, classes, 64, names)
    return root


def _run(loader) -> tuple[list[int], list[torch.Tensor]]:
    """One epoch: sample ids decoded from pixels; checks every batch's join on the way."""
    ids, outs = [], []
    for images, soft, hard in loader:
        batch_ids = _decode_ids(images.cpu())
        assert soft.argmax(1).tolist() == batch_ids  # the map joined to this very image
        assert hard.tolist() == [i // CODED_PER_CLASS for i in batch_ids]
        ids += batch_ids
        outs.append(images)
    return ids, outs


def _coded_loader(coded, **kwargs):
    args = {"batch_size": 8, "targets": "both", **FAST, **kwargs}
    return ReLabelLoader(coded / "train", coded / "maps.zarr", **args)


class _Spy:
    """Wraps a loader's public build_pipeline: counts the pipelines built, and records the
    sample indices fed to each DALI iteration and the outputs (by name, images left out)
    of each iteration taken from DALI, whether yielded or dropped."""

    def __init__(self, loader, monkeypatch):
        self.built = 0
        self.batch_size = None
        self.fed: list[list[int]] = []
        self.taken: list[dict[str, np.ndarray]] = []
        build = loader.build_pipeline
        names = TRAIN_OUTPUTS if loader.train else EVAL_OUTPUTS

        def spying(**kwargs):
            pipe = build(**kwargs)
            self.built += 1
            self.batch_size = pipe.max_batch_size
            feed_input, outputs = pipe.feed_input, pipe.outputs

            def feeding(name, data, *args, **kw):
                if name == "indices":
                    self.fed.append(np.asarray(data).tolist())
                return feed_input(name, data, *args, **kw)

            def taking(*args, **kw):
                out = outputs(*args, **kw)
                named = dict(zip(names, out, strict=True))
                self.taken.append(
                    {n: np.array(o.as_array()) for n, o in named.items() if n != "images"}
                )
                return out

            pipe.feed_input, pipe.outputs = feeding, taking
            return pipe

        monkeypatch.setattr(loader, "build_pipeline", spying)

    def taken_indices(self) -> list[list[int]]:
        return [t["indices"].reshape(-1).tolist() for t in self.taken]


def _threads() -> int:
    """Threads of this process, DALI's native ones included, tensorstore's shared pool
    left out (it grows on demand up to its own bound, whoever reads)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:
            names.append(f.read().strip())
    return sum(name != "ts_pool_worker" for name in names)


def test_two_epochs_cover_everything_in_new_orders(coded):
    loader = _coded_loader(coded)
    assert len(loader) == 4 and len(loader.sampler) == CODED_N
    first, _ = _run(loader)
    second, _ = _run(loader)  # no reset, no set_epoch: the next epoch
    assert sorted(first) == sorted(second) == list(range(CODED_N))
    assert first != second


def test_batches_stay_intact_while_later_batches_and_epochs_are_made(coded):
    """Images reach torch without a copy: later batches, the next epoch's pipeline
    started ahead, and the old pipeline's shutdown must not touch a batch still held."""
    loader = _coded_loader(coded)
    held = []
    for _ in range(3):
        for images, soft, hard in loader:
            held.append(([t.clone() for t in (images, soft, hard)], (images, soft, hard)))
    del loader
    gc.collect()
    for copies, originals in held:
        for copy, original in zip(copies, originals, strict=True):
            assert torch.equal(copy, original)
    assert len({originals[0].data_ptr() for _, originals in held}) == len(held)


def test_set_epoch_after_a_pipeline_was_started_ahead(coded):
    loader = _coded_loader(coded, seed=2)
    _run(loader)  # epoch 0; epoch 1's pipeline is started ahead
    loader.set_epoch(7)
    ids_7, _ = _run(loader)
    fresh = _coded_loader(coded, seed=2)
    fresh.set_epoch(7)
    assert ids_7 == _run(fresh)[0]


def test_one_pipeline_runs_every_epoch_fed_ahead_across_epoch_ends(coded, monkeypatch):
    loader = _coded_loader(coded, seed=3)  # 30 samples: batches of 8, 8, 8, 6
    spy = _Spy(loader, monkeypatch)
    epochs = [_run(loader) for _ in range(3)]
    assert spy.built == 1  # built at the first epoch, kept for the others
    # every iteration fed was yielded, in order, the last one of an epoch smaller (no
    # padding); only epoch 3's first batches are in flight, fed while epoch 2 ended
    yielded = spy.taken_indices()
    assert spy.fed[: len(yielded)] == yielded and len(spy.fed) == len(yielded) + PREFETCH_DEPTH
    assert [len(b) for b in yielded] == [8, 8, 8, 6] * 3
    assert [i for b in yielded for i in b] == [i for ids, _ in epochs for i in ids]  # pixels
    order_3 = loader.sampler.indices(3).tolist()
    assert spy.fed[len(yielded) :] == [order_3[:8], order_3[8:16]]
    # an epoch from batches fed ahead is a fresh loader's epoch: same order, crops, flips
    fresh = _coded_loader(coded, seed=3)
    fresh.set_epoch(1)
    fresh_ids, fresh_images = _run(fresh)
    assert epochs[1][0] == fresh_ids
    for x, y in zip(epochs[1][1], fresh_images, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("batch_size", "kwargs", "sizes"),
    [
        (CODED_N, {}, [CODED_N]),
        (1000, {}, [CODED_N]),  # above the dataset: one batch, never decoded as padding
        (16, {"drop_last": True}, [16]),
        (16, {}, [16, 14]),
        (1000, {"train": False}, [CODED_N]),
    ],
)
def test_nothing_is_padded_or_decoded_twice(coded, batch_size, kwargs, sizes, monkeypatch):
    loader = _coded_loader(coded, batch_size=batch_size, **kwargs)
    spy = _Spy(loader, monkeypatch)
    for _ in range(2):
        _, outs = _run(loader)
        assert (
            [len(x) for x in outs] == sizes == [len(b) for b in spy.taken_indices()[-len(sizes) :]]
        )
    assert spy.batch_size == min(batch_size, CODED_N)  # the pipeline's batch is clamped
    assert len(spy.fed) == 2 * len(sizes) + PREFETCH_DEPTH  # the two epochs, the next in flight


def test_eval_batches_fed_ahead_serve_any_epoch(coded, monkeypatch):
    loader = _coded_loader(coded, train=False)
    spy = _Spy(loader, monkeypatch)
    for _ in range(3):
        loader.set_epoch(0)  # scripts often pin their eval loader's epoch
        assert _run(loader)[0] == list(range(CODED_N))
    assert spy.built == 1
    assert len(spy.taken) == 3 * len(loader)  # no batch in flight was dropped


def test_a_new_iter_ends_the_previous_one(coded):
    loader = _coded_loader(coded, seed=6)
    first = iter(loader)
    next(first)
    second = iter(loader)  # epoch 1: one pipeline runs one epoch at a time
    images, soft, _ = next(second)
    assert soft.argmax(1).tolist() == _decode_ids(images.cpu())
    with pytest.raises(RuntimeError, match="left for a later iter"):
        next(first)
    assert len(list(second)) == len(loader) - 1


@pytest.mark.parametrize(
    "where",
    [
        {"label_map_memory": "host", "device": "cpu"},
        {"label_map_memory": "stream", "device": "cpu"},
        pytest.param({"label_map_memory": "device", "device": "cuda"}, marks=pytest.mark.gpu),
    ],
    ids=["host", "stream", "device"],
)
def test_broken_off_epochs_are_freed_at_once_and_drop_at_most_the_queue(coded, where, monkeypatch):
    loader = _coded_loader(coded, seed=4, **where)
    spy = _Spy(loader, monkeypatch)
    gc.collect()
    gc.disable()  # nothing may rely on the cyclic garbage collector
    try:
        for k in range(20):
            epoch = iter(loader)
            images, soft, _ = next(epoch)
            assert soft.argmax(1).tolist() == _decode_ids(images.cpu())
            alive = weakref.ref(epoch)
            del epoch, images, soft
            assert alive() is None  # no reference cycle keeps an abandoned epoch
            if k == 4:
                threads = _threads()
        # no thread per epoch: 15 more breaks add none (torch's OpenMP teams may still
        # start one late, for an op that runs in parallel for the first time)
        assert _threads() <= threads + 1
        # each break dropped the batches in flight, at most the queue's depth
        assert spy.built == 1 and len(spy.taken) <= 20 * (1 + PREFETCH_DEPTH)
        # and left nothing behind: the next epoch is a fresh loader's epoch 20
        fresh = _coded_loader(coded, seed=4, **where)
        fresh.set_epoch(20)
        assert _run(loader)[0] == _run(fresh)[0]
        running = _threads()
        next(iter(fresh))  # broken off, batches of epoch 21 in flight
        dropped = weakref.ref(fresh)
        del fresh
        assert dropped() is None  # a dropped loader goes at once, with its pipeline
        assert _threads() <= running - 4  # and its threads (DALI's, the pooling thread)
    finally:
        gc.enable()


def test_same_seed_and_epoch_same_batches(coded):
    a, b = _coded_loader(coded, seed=5), _coded_loader(coded, seed=5)
    a.set_epoch(3)
    b.sampler.set_epoch(3)  # what distributed trainers call
    ids_a, images_a = _run(a)
    ids_b, images_b = _run(b)
    assert ids_a == ids_b
    for x, y in zip(images_a, images_b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # same crops and flips
    a.set_epoch(4)
    assert _run(a)[0] != ids_a
    assert _run(_coded_loader(coded, seed=6))[0] != _run(_coded_loader(coded, seed=5))[0]


@pytest.mark.parametrize("drop_last", [False, True])
def test_len_is_exact(coded, drop_last):
    loader = _coded_loader(coded, batch_size=7, drop_last=drop_last)
    sizes = [len(batch[0]) for batch in loader]
    assert len(sizes) == len(loader) == (4 if drop_last else 5)
    assert sizes == ([7] * 4 if drop_last else [7, 7, 7, 7, 2])


def test_train_shards_disjoint_and_covering(coded):
    shards = [_run(_coded_loader(coded, rank=r, world_size=2, seed=1))[0] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == CODED_N // 2
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(CODED_N))
    # 30 samples on 4 ranks: equal steps for DDP by repeating at most world_size - 1
    loaders = [_coded_loader(coded, rank=r, world_size=4, batch_size=4) for r in range(4)]
    ids = [_run(loader)[0] for loader in loaders]
    assert {len(x) for x in ids} == {8} and {len(x) for x in loaders} == {2}
    assert set().union(*ids) == set(range(CODED_N))


def test_eval_shards_every_sample_once_without_padding(coded):
    ids = []
    for rank in range(4):
        loader = _coded_loader(
            coded, train=False, rank=rank, world_size=4, batch_size=4, even_shards=False
        )
        got, outs = _run(loader)
        assert len(outs) == len(loader) == 2
        assert got == list(range(rank, CODED_N, 4))  # sample order, no shuffle
        ids += got
    assert sorted(ids) == list(range(CODED_N))


@pytest.mark.parametrize("world_size", [2, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_eval_shards_are_distributed_samplers(coded, world_size, drop_last):
    """Evaluation under world_size > 1: every rank the same number of batches, the samples
    of DistributedSampler(shuffle=False) (padded with the first samples, or cut)."""
    lengths = set()
    for rank in range(world_size):
        loader = _coded_loader(
            coded, train=False, rank=rank, world_size=world_size, batch_size=3, drop_last=drop_last
        )
        reference = DistributedSampler(
            range(CODED_N), world_size, rank, shuffle=False, drop_last=drop_last
        )
        ids, outs = _run(loader)
        assert ids == list(reference) and len(loader.sampler) == len(reference)
        assert len(outs) == len(loader) == -(-len(reference) // 3)  # the last batch kept
        lengths.add(len(loader))
    assert len(lengths) == 1


def test_streamed_maps_join_the_same(coded):
    host = _coded_loader(coded, seed=2, label_map_memory="host")
    stream = _coded_loader(coded, seed=2, label_map_memory="stream", rank=1, world_size=2)
    assert host.label_map_memory == "host" and stream.label_map_memory == "stream"
    assert sorted(_run(host)[0]) == list(range(CODED_N))
    assert len(_run(stream)[0]) == CODED_N // 2


def test_shared_maps_join_the_same_and_are_one_file(coded, tmp_path, monkeypatch):
    """label_map_memory="auto" under several local ranks maps one table per node; a
    second loader of the same store maps the same file instead of decoding again."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cache = tmp_path / "cache"
    first = _coded_loader(coded, seed=2, label_map_cache=cache)
    assert first.label_map_memory == "shared"
    assert sorted(_run(first)[0]) == list(range(CODED_N))
    table = list(cache.glob("*.bin"))
    assert len(table) == 1
    written = table[0].stat().st_mtime_ns
    second = _coded_loader(coded, seed=3, label_map_memory="shared", label_map_cache=cache)
    assert sorted(_run(second)[0]) == list(range(CODED_N))
    assert list(cache.glob("*.bin")) == table and table[0].stat().st_mtime_ns == written


def test_a_table_read_in_the_background_serves_the_same_batches(coded, monkeypatch):
    """label_map_load="background": while the table is read (held back here until the
    first epoch is done), batches read their maps from the store; then from the table.
    Every epoch equals a loader that read its table before its first batch."""
    release = threading.Event()
    load = LabelMapStore.load

    def held_back(self, **kwargs):
        assert release.wait(60)
        return load(self, **kwargs)

    monkeypatch.setattr(LabelMapStore, "load", held_back)
    release.set()  # the reference reads its table in its constructor
    now = _coded_loader(coded, seed=4, label_map_memory="host", label_map_load="now")
    assert not now.label_maps_loading and now.wait_for_label_maps(timeout=0)
    release.clear()
    background = _coded_loader(coded, seed=4, label_map_memory="host", label_map_load="background")
    assert background.label_maps_loading and not background.wait_for_label_maps(timeout=0.05)
    first = _run(background)  # every batch read from the store
    assert background.label_maps_loading
    release.set()
    assert background.wait_for_label_maps(timeout=60) and not background.label_maps_loading
    second = _run(background)  # from the table
    for (ids, images), (want_ids, want_images) in zip(
        (first, second), (_run(now), _run(now)), strict=True
    ):
        assert ids == want_ids
        assert all(torch.equal(a, b) for a, b in zip(images, want_images, strict=True))


def test_a_failed_background_read_is_raised_at_the_next_batch(coded, monkeypatch):
    def broken(self, **kwargs):
        raise StoreCorruptError(f"{self.path}/scores/c/0/0/0/0: digest mismatch")

    monkeypatch.setattr(LabelMapStore, "load", broken)
    loader = _coded_loader(coded, label_map_memory="host", label_map_load="background")
    with pytest.raises(StoreCorruptError, match="scores/c/0/0/0/0"):
        loader.wait_for_label_maps(timeout=60)
    with pytest.raises(StoreCorruptError, match="scores/c/0/0/0/0"):
        _run(loader)


@pytest.mark.parametrize("memory", ["host", "shared", "stream"])
def test_a_folder_with_part_of_the_store_joins_by_key(coded, tmp_path, memory):
    """Half the images of 2 of the store's 3 classes, in a store whose rows are in another
    order: each mode maps every image to its own row (host loads only those rows)."""
    root = tmp_path / "part"
    kept = {"c00": range(0, 10, 2), "c02": range(1, 10, 2)}
    for folder, images in kept.items():
        (root / folder).mkdir(parents=True)
        for j in images:
            os.link(coded / "train" / folder / f"{j:02d}.JPEG", root / folder / f"{j:02d}.JPEG")
    loader = ReLabelLoader(
        root,
        coded / "maps.zarr",
        batch_size=8,
        targets="both",
        label_map_memory=memory,
        label_map_cache=tmp_path / "cache",
        **FAST,
    )
    want = [int(f[1:]) * CODED_PER_CLASS + j for f, images in kept.items() for j in images]
    assert sorted(_run(loader)[0]) == want


# -- geometry: red/blue halves, label maps favouring A on red -----------------------------
def _halves(tmp_path_factory, axis: str):
    root = tmp_path_factory.mktemp(f"halves_{axis}")
    rng = np.random.default_rng(1)
    keys = []
    for c in ("a", "b"):
        for j in range(12):
            h, w = (2 * rng.integers(40, 120, 2)).tolist()
            img = np.zeros((h, w, 3), np.uint8)
            if axis == "x":
                img[:, : w // 2, 0] = 255
                img[:, w // 2 :, 2] = 255
            else:
                img[: h // 2, :, 0] = 255
                img[h // 2 :, :, 2] = 255
            _save_jpeg(root / "train" / c / f"{j}.JPEG", img)
            keys.append(f"{c}/{j}")
    grid = 16
    a_side = np.zeros((grid, grid), bool)
    if axis == "x":
        a_side[:, : grid // 2] = True
    else:
        a_side[: grid // 2] = True
    classes = np.stack([np.where(a_side, 0, 1), np.where(a_side, 1, 0)])  # k=2
    scores = np.stack([np.full((grid, grid), 8.0), np.zeros((grid, grid))])
    n = len(keys)
    _write_store(
        root / "maps.zarr",
        keys,
        np.broadcast_to(scores, (n, 2, grid, grid)).astype(np.float32),
        np.broadcast_to(classes, (n, 2, grid, grid)).copy(),
        num_classes=2,  # no class table: the folders a, b are the classes
    )
    return root


def _redness(images: torch.Tensor) -> torch.Tensor:
    rgb = _pixels(images).clamp(0, 255)
    return (rgb[:, 0] / (rgb[:, 0] + rgb[:, 2] + 1e-3)).mean(dim=(1, 2))


@pytest.mark.parametrize("axis", ["x", "y"])
def test_targets_follow_the_crop(tmp_path_factory, axis):
    root = _halves(tmp_path_factory, axis)
    loader = ReLabelLoader(root / "train", root / "maps.zarr", batch_size=8, seed=3, **FAST)
    checked = {True: 0, False: 0}
    for _ in range(3):
        for images, soft in loader:
            red = _redness(images)
            clear = (red - 0.5).abs() > 0.1  # away from the tie, where blur decides
            favours_a = soft[:, 0] > soft[:, 1]
            assert torch.equal(favours_a[clear], (red > 0.5)[clear])
            for value in (True, False):
                checked[value] += int(((red > 0.5) == value)[clear].sum())
    assert min(checked.values()) >= 5  # both outcomes were exercised


def test_local_targets_are_mirrored_with_the_image(tmp_path_factory):
    root = _halves(tmp_path_factory, "x")
    loader = ReLabelLoader(
        root / "train", root / "maps.zarr", 8, targets="local", local_size=(1, 2), seed=4, **FAST
    )
    checked = 0
    for _ in range(3):
        for images, local in loader:
            assert local.shape == (len(images), 2, 1, 2)
            torch.testing.assert_close(local.sum(1), torch.ones(len(images), 1, 2))
            for side in range(2):
                half = images[..., side * CROP // 2 : (side + 1) * CROP // 2]
                red = _redness(half)
                clear = (red - 0.5).abs() > 0.1
                favours_a = local[:, 0, 0, side] > local[:, 1, 0, side]
                assert torch.equal(favours_a[clear], (red > 0.5)[clear])
                checked += int(clear.sum())
    assert checked >= 40


# -- the real-photo sample ---------------------------------------------------------------
def test_soft_batches_on_sample_photos(sample_data, sample_store):
    loader = ReLabelLoader(sample_data.train, sample_store.path, 16, **FAST)
    assert (loader.num_classes, loader.batch_size, len(loader), len(loader.dataset)) == (
        1000,
        16,
        3,
        40,
    )
    assert loader.dataset.classes == list(imagenet_wnids())
    assert [t for _, t in loader.dataset.samples] == list(sample_data.labels)
    sizes = []
    for images, soft in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, CROP, CROP)
        assert soft.dtype == torch.float32 and soft.shape == (len(images), 1000)
        torch.testing.assert_close(soft.sum(1), torch.ones(len(images)))
        sizes.append(len(images))
    assert sizes == [16, 16, 8]
    hard = {"batch_size": 40, "train": False, "targets": "hard", **FAST}
    _, labels = next(iter(ReLabelLoader(sample_data.train, sample_store, **hard)))
    assert labels.dtype == torch.int64 and labels.tolist() == list(sample_data.labels)
    _, labels = next(iter(ReLabelLoader(sample_data.train, None, **hard)))  # folder order
    assert labels.tolist() == [i // 8 for i in range(40)]


@pytest.mark.parametrize(
    ("dtype", "memory_format"),
    [(torch.float16, torch.contiguous_format), (torch.bfloat16, torch.channels_last)],
)
def test_image_dtype_and_memory_format(sample_data, dtype, memory_format):
    args = {"dtype": dtype, "memory_format": memory_format, "train": False, **FAST}
    images, _ = next(iter(ReLabelLoader(sample_data.train, None, 8, **args)))
    reference, _ = next(iter(ReLabelLoader(sample_data.train, None, 8, train=False, **FAST)))
    assert images.dtype == dtype and images.shape == (8, 3, CROP, CROP)
    assert images.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(images.float(), reference, atol=0.05, rtol=0.01)


# -- bad input ---------------------------------------------------------------------------
@pytest.fixture
def folder(sample_data, tmp_path):
    """Three good sample photos in one class folder; tests add files to it."""
    root = tmp_path / "train"
    (root / "n02124075").mkdir(parents=True)
    for n in range(3):
        name = f"n02124075_{n}.JPEG"
        shutil.copy(sample_data.train / "n02124075" / name, root / "n02124075" / name)
    return root


def _photo(sample_data) -> Image.Image:
    return Image.open(sample_data.train / "n02124075" / "n02124075_0.JPEG").convert("RGB")


@pytest.mark.parametrize("kind", ["truncated", "not_an_image"])
def test_undecodable_file_raises_naming_it_or_is_skipped(sample_data, folder, kind):
    raw = (folder / "n02124075" / "n02124075_0.JPEG").read_bytes()
    bad = folder / "n02124075" / "zz_bad.JPEG"
    bad.write_bytes(raw[: len(raw) // 2] if kind == "truncated" else b"not an image\n" * 50)
    loader = ReLabelLoader(folder, None, 2, **FAST)
    for _ in range(3):  # later epochs too, whose pipelines may have been started ahead
        with pytest.raises(ImageDecodeError, match=r"zz_bad\.JPEG"):
            for _ in loader:
                pass
    with pytest.warns(UserWarning, match="left out 1 of 4 images"):
        loader = ReLabelLoader(folder, None, 2, on_bad_image="skip", **FAST)
    assert [p.endswith("zz_bad.JPEG") for p, _ in loader.skipped_images] == [True]
    assert sum(len(images) for images, _ in loader) == 3 == len(loader.dataset)


def test_a_folder_of_undecodable_files_names_its_root(tmp_path):
    root = tmp_path / "train"
    (root / "c").mkdir(parents=True)
    for n in range(2):
        (root / "c" / f"{n}.JPEG").write_bytes(b"not an image\n" * 8)
    with pytest.warns(UserWarning), pytest.raises(ImageDecodeError) as e:
        ReLabelLoader(root, None, 2, on_bad_image="skip", **FAST)
    assert f"none of the 2 images under {str(root)!r}" in str(e.value)
    assert "0.JPEG is not an image" in str(e.value)


def test_gray_cmyk_png_named_jpeg_and_tiny_images_decode_to_rgb(sample_data, folder):
    photo = _photo(sample_data)
    cls = folder / "n02124075"
    photo.save(cls / "x_rgb.JPEG", "JPEG", quality=95)
    photo.convert("L").save(cls / "x_gray.JPEG", "JPEG", quality=95)
    photo.convert("CMYK").save(cls / "x_cmyk.JPEG", "JPEG", quality=95)
    photo.save(cls / "x_png.JPEG", "PNG")  # ImageNet holds one such file
    photo.resize((20, 15)).save(cls / "x_tiny.JPEG", "JPEG")  # smaller than the crop
    loader = ReLabelLoader(folder, None, 16, train=False, **FAST)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, CROP, CROP)
    by_name = {
        os.path.basename(p): _pixels(images[i : i + 1])[0]
        for i, p in enumerate(loader.dataset.paths)
    }
    gray = by_name["x_gray.JPEG"]
    assert (gray - gray.mean(0)).abs().max() < 1.0  # three equal channels
    rgb = by_name["x_rgb.JPEG"]
    assert (by_name["x_cmyk.JPEG"] - rgb).abs().mean() < 4
    assert (by_name["x_png.JPEG"] - rgb).abs().mean() < 4
    train = ReLabelLoader(folder, None, 16, **FAST)  # RandomResizedCrop upsamples the tiny one
    assert next(iter(train))[0].shape == (8, 3, CROP, CROP)


def _maps_for(keys, num_classes, class_names=None, path=None):
    n = len(keys)
    scores = np.ones((n, 1, 2, 2), np.float32)
    classes = np.zeros((n, 1, 2, 2), np.int64)
    return _write_store(path, keys, scores, classes, num_classes, class_names)


def test_images_without_label_maps_fail_at_construction(sample_data, tmp_path):
    keys = list(sample_data.keys)
    store = _maps_for(keys[3:], 1000, imagenet_wnids(), tmp_path / "m.zarr")
    with pytest.raises(StoreMismatchError) as e:
        ReLabelLoader(sample_data.train, store, 8, **FAST)
    message = str(e.value)
    assert "has 37 keys but 40 images were found" in message
    assert f"3 images have no label map (first: {keys[0]}" in message
    assert "dali-relabel verify" in message
    # hard targets need no maps: the same store still serves its class table
    assert len(ReLabelLoader(sample_data.train, store, 8, targets="hard", **FAST)) == 5


def test_store_classes_must_match_the_folders(sample_data, tmp_path):
    keys = list(sample_data.keys)
    no_table = _maps_for(keys, 3, None, tmp_path / "a.zarr")
    with pytest.raises(StoreMismatchError, match="num_classes=3 and no class table"):
        ReLabelLoader(sample_data.train, no_table, 8, **FAST)
    names = [f"x{i}" for i in range(1000)]
    names[285] = "n02124075"
    other_table = _maps_for(keys, 1000, names, tmp_path / "b.zarr")
    with pytest.raises(StoreMismatchError, match=r"4 class folders .* are not in"):
        ReLabelLoader(sample_data.train, other_table, 8, **FAST)


def test_empty_folders_and_bad_arguments(sample_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        ReLabelLoader(tmp_path, None, 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="hold no images"):
        ReLabelLoader(tmp_path, None, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReLabelLoader(tmp_path / "missing", None, 8)
    with pytest.raises(ValueError, match="needs label maps"):
        ReLabelLoader(sample_data.train, None, 8, targets="soft")
    with pytest.raises(ValueError, match="pass one of them"):
        ReLabelLoader(sample_data.train, None, 8, drop_last=True, even_shards=False)
    with pytest.raises(ValueError, match=r"batch_size=64 with drop_last=True and 40 samples"):
        ReLabelLoader(sample_data.train, None, 64, drop_last=True)
    with pytest.raises(ValueError, match="targets must be one of"):
        ReLabelLoader(sample_data.train, None, 8, targets="dense")
    with pytest.raises(ValueError, match="rank must be in"):
        ReLabelLoader(sample_data.train, None, 8, rank=2, world_size=2)

    # found at construction, not at the first batch, naming the argument and the value
    bad = [
        ({"train": False, "resize_size": 8}, r"resize_size=8 is smaller than crop_size=64"),
        ({"resize_size": 0}, r"resize_size must be a positive int, got 0"),
        ({"temperature": 0.0}, r"temperature must be a finite number > 0, got 0\.0"),
        ({"temperature": float("nan")}, r"temperature must be a finite number > 0, got nan"),
        ({"mean": (0.5, 0.5)}, r"mean must be three numbers .*got \(0\.5, 0\.5\)"),
        ({"std": (0.2, 0.0, 0.2)}, r"std must be three numbers > 0 .*got \(0\.2, 0\.0, 0\.2\)"),
        ({"device": "xyz"}, r"device must be a torch device such as 'cpu'.*got 'xyz'"),
        ({"seed": -1}, r"seed must be >= 0, got -1"),
        ({"scale": (1.0, 0.08)}, r"scale must be \(low, high\) with 0 < low <= high <= 1"),
        ({"ratio": (0.0, 1.0)}, r"ratio must be \(low, high\) .*got \(0\.0, 1\.0\)"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ArgumentError, match=message):  # also a ValueError
            ReLabelLoader(sample_data.train, None, 8, **{**FAST, **kwargs})


def test_jpeg_bytes_round_trip_helper():
    # _save_jpeg keeps coded colours within a level's reach, which the join tests rely on
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), _code_colour(37))).save(buf, "JPEG", quality=95)
    decoded = np.asarray(Image.open(buf)).reshape(-1, 3).mean(0)
    assert np.abs(decoded - _code_colour(37)).max() < 8


# -- GPU: "mixed" decoding, maps on the device or streamed, pooling on the device ---------
@pytest.mark.gpu
@pytest.mark.parametrize("memory", ["device", "stream"])
def test_gpu_batches_join_by_identity(coded, memory):
    loader = _coded_loader(coded, device="cuda", label_map_memory=memory, seed=1)
    assert loader.label_map_memory == memory
    ids = []
    for images, soft, hard in loader:
        assert images.is_cuda and soft.is_cuda and hard.is_cuda
        batch_ids = _decode_ids(images.cpu())
        assert soft.argmax(1).tolist() == batch_ids
        assert hard.tolist() == [i // CODED_PER_CLASS for i in batch_ids]
        ids += batch_ids
    assert sorted(ids) == list(range(CODED_N))
    half = _coded_loader(
        coded, device="cuda", dtype=torch.float16, memory_format=torch.channels_last
    )
    images = next(iter(half))[0]
    assert images.dtype == torch.float16 and images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("memory", ["device", "host"])
def test_gpu_batches_do_not_wait_for_queued_gpu_work(coded, memory):
    """The trainer's GPU work runs while the loader makes the next batch: no stream sync."""
    loader = _coded_loader(coded, device="cuda", label_map_memory=memory, batch_size=4)
    batches = iter(loader)
    next(batches)  # the first batch compiles and warms up
    torch.cuda.synchronize()
    time.sleep(0.5)  # DALI's prefetched batches are ready
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time on the current stream
    images, soft, _ = next(batches)
    still_busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert still_busy, "next(loader) waited for the GPU work queued before it"
    assert soft.argmax(1).tolist() == _decode_ids(images.cpu())
