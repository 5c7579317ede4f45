"""Evaluation under torch.distributed: gloo processes on loopback, a per-batch all_reduce.

21 images, batch 5, 2 and 3 ranks, as a trainer's ``validate()`` runs them: every rank of
an evaluation loader must yield the same number of batches, or the per-batch collective
hangs (the processes get a deadline; a hang fails the test). Each image is a class of its
own, so the hard label of a sample is its sample index and the samples each rank saw can
be counted. The reference is ``DistributedSampler(shuffle=False)``.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

N, BATCH = 21, 5
#: loader arguments per mode; "exact" (uneven shards) runs no per-batch collective
MODES = {
    "pad": {},
    "drop": {"drop_last": True},
    "exact": {"even_shards": False},
}


def _evaluate(rank: int, world_size: int, root: str, port: int, out: str) -> None:
    from dali_relabel import ReLabelLoader

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    results = {}
    for mode, kwargs in MODES.items():
        loader = ReLabelLoader(
            root, None, BATCH, train=False, crop_size=32, num_threads=1, **kwargs
        )  # rank and world size from torch.distributed
        seen, batches = [], 0
        for _, labels in loader:
            if mode != "exact":
                count = torch.tensor([len(labels)])
                dist.all_reduce(count)  # what validate() does per batch
            seen += labels.tolist()
            batches += 1
        results[mode] = {
            "seen": seen,
            "batches": batches,
            "len": len(loader),
            "sampler_len": len(loader.sampler),
            "rank": loader.sampler.rank,
        }
        dist.barrier()
    Path(out, f"{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_image_per_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval21") / "val"
    rng = np.random.default_rng(0)
    for i in range(N):
        (root / f"c{i:02d}").mkdir(parents=True)
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i:02d}" / "x.JPEG", quality=90)
    return root


def _launch(world_size: int, root: Path, out: Path, deadline_s: float = 240) -> list[dict]:
    context = mp.start_processes(
        _evaluate,
        args=(world_size, str(root), _free_port(), str(out)),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    stop = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > stop:
                pytest.fail(f"{world_size} ranks did not finish in {deadline_s} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((out / f"{r}.json").read_text()) for r in range(world_size)]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_evaluates_the_same_number_of_batches(one_image_per_class, world_size, tmp_path):
    ranks = _launch(world_size, one_image_per_class, tmp_path)
    assert [r["pad"]["rank"] for r in ranks] == list(range(world_size))

    # default: padded with repeats of the first samples, as DistributedSampler
    pad = [r["pad"] for r in ranks]
    for rank, result in enumerate(pad):
        assert result["seen"] == list(DistributedSampler(range(N), world_size, rank, shuffle=False))
    assert len({r["batches"] for r in pad}) == 1 and pad[0]["batches"] == pad[0]["len"]
    seen = [i for r in pad for i in r["seen"]]
    assert set(seen) == set(range(N)) and len(seen) == -(-N // world_size) * world_size

    # drop_last: the last N mod world_size samples left out, which a script evaluates
    # through loader.dataset (pytorch/examples: range(len(sampler) * world_size, N))
    drop = [r["drop"] for r in ranks]
    for rank, result in enumerate(drop):
        reference = DistributedSampler(range(N), world_size, rank, shuffle=False, drop_last=True)
        assert result["seen"] == list(reference)
    assert len({r["batches"] for r in drop}) == 1
    seen = [i for r in drop for i in r["seen"]]
    rest = list(range(drop[0]["sampler_len"] * world_size, N))
    assert sorted(seen + rest) == list(range(N)) and len(rest) == N % world_size

    # even_shards=False: every sample exactly once, shards within one of each other
    exact = [r["exact"] for r in ranks]
    seen = [i for r in exact for i in r["seen"]]
    assert sorted(seen) == list(range(N))
    assert max(r["sampler_len"] for r in exact) - min(r["sampler_len"] for r in exact) <= 1
