"""examples/train_imagenet.py under torchrun: shards, reruns, a killed rank resumed, faults.

Each job is ``python -m torch.distributed.run --standalone --nproc-per-node N`` of the
example, unchanged, on the CPU (gloo on loopback), with a tiny model (torchvision's
shufflenet_v2_x0_5 at 32 px) on 41 tiny JPEGs made here and a store written by
LabelMapWriter. ``--log-samples`` makes every rank log each step's sample indices and a
digest of the images and targets it trained on. The references are not the example's
own output: a ReLabelLoader with an explicit ``rank``/``world_size`` run in this process
(a rerun), set arithmetic on the logged shards (disjoint, covering, padded as
DistributedSampler pads), and an uninterrupted job for the killed one. Every job runs
under a subprocess timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from dali_relabel import ReLabelLoader
from dali_relabel.store import LabelMapWriter

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_imagenet.py"
N = 41  # 2 ranks: 21 each, 1 sample padded; 4 ranks: 11 each, 3 padded
BATCH = 3  # 2 ranks: 7 batches per epoch, the last of 3 (BatchNorm needs 2 or more)
EPOCHS = 3
SEED = 3
ARGS = ["--arch", "shufflenet_v2_x0_5", "--crop-size", "32", "--batch-size", str(BATCH)]
ARGS += ["--seed", str(SEED), "--lr", "0.01"]
JOB_TIMEOUT = 240  # seconds; a job takes about 10 s on 2 idle cores
SHARD = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """41 JPEGs of noise (24 x 32) in 3 class folders, label maps (k=2, 4 x 4) in a store
    of 3 shards per array."""
    root = tmp_path_factory.mktemp("torchrun")
    rng = np.random.default_rng(0)
    keys = sorted(f"class{i % 3}/img{i:03d}" for i in range(N))
    for key in keys:
        path = root / "train" / f"{key}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)
    writer = LabelMapWriter.create(
        root / "maps.zarr", keys, num_classes=3, k=2, grid=(4, 4), shard_size=SHARD
    )
    scores = rng.random((N, 2, 4, 4)).astype(np.float16)
    classes = rng.integers(0, 3, (N, 2, 4, 4))
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    writer.finalize()
    return root


# -- jobs and their logs -----------------------------------------------------------------
def _command(tiny: Path, world: int | None, *args: str) -> list[str]:
    launcher = [sys.executable]
    if world is not None:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    data = ["--data", str(tiny), "--label-maps", str(tiny / "maps.zarr")]
    return [*launcher, str(EXAMPLE), *data, *ARGS, *args]


class Job:
    """A job started in the background, its output in a file (a pipe that nobody reads
    could fill and block the workers). A test that fails before the job ends leaves
    nothing running (:func:`_no_job_left`)."""

    started: ClassVar[list[Job]] = []

    def __init__(self, command: list[str], out: Path) -> None:
        self.out = out
        self._file = open(out, "w")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(command, stdout=self._file, stderr=subprocess.STDOUT, env=env)
        Job.started.append(self)

    def wait(self, timeout: float = JOB_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(self.proc.pid)
            pytest.fail(f"the job did not end within {timeout} s:\n{self.output()[-3000:]}")
        finally:
            self._file.close()

    def output(self) -> str:
        return self.out.read_text(errors="replace")


@pytest.fixture(autouse=True)
def _no_job_left():
    yield
    while Job.started:
        job = Job.started.pop()
        if job.proc.poll() is None:
            _kill_tree(job.proc.pid)
            job.proc.wait()


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        for proc in [*parent.children(recursive=True), parent]:
            proc.kill()
    except psutil.NoSuchProcess:
        pass


def _run(command: list[str], out: Path) -> str:
    job = Job(command, out)
    code = job.wait()
    assert code == 0, job.output()[-3000:]
    return job.output()


def _segments(folder: Path, rank: int) -> list[list[dict]]:
    """The rank's log, one list of step records per process start (its "start" first)."""
    segments: list[list[dict]] = []
    path = folder / f"rank{rank}.jsonl"
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "start" in record:
            segments.append([record])
        else:
            segments[-1].append(record)
    return segments


def _steps(records: list[dict]) -> list[tuple[int, int, tuple[int, ...], str]]:
    return [
        (r["epoch"], r["batch"], tuple(r["samples"]), r["digest"])
        for r in records
        if "start" not in r
    ]


def _wait_for(condition, what: str, job: Job, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if job.proc.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{job.output()[-3000:]}")
        if time.monotonic() > deadline:
            _kill_tree(job.proc.pid)
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.005)


def _worker_pids(folder: Path, world: int) -> list[int]:
    pids = []
    for rank in range(world):
        path = folder / f"rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        starts = [json.loads(line) for line in lines if '"start"' in line]
        pids.append(starts[-1]["pid"] if starts else None)
    return pids


def _logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_REFERENCES: dict[tuple[int, int], dict[int, list]] = {}


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """(world, start epoch) -> rank -> the log of an uninterrupted torchrun job that runs
    epochs start .. EPOCHS - 1 (``--start-epoch``)."""

    def run(world: int, start: int = 0) -> dict[int, list]:
        if (world, start) not in _REFERENCES:
            folder = tmp_path_factory.mktemp(f"reference{world}")
            args = ("--start-epoch", str(start), "--epochs", str(EPOCHS))
            _run(_command(tiny, world, *args, "--log-samples", str(folder)), folder / "out.txt")
            _REFERENCES[world, start] = {r: _segments(folder, r) for r in range(world)}
        return _REFERENCES[world, start]

    return run


def _loader_steps(tiny: Path, epochs: int, **shard) -> list[tuple[int, int, tuple, str]]:
    """The example's loader, made here with an explicit shard: the steps it yields."""
    loader = ReLabelLoader(
        tiny / "train",
        tiny / "maps.zarr",
        BATCH,
        crop_size=32,
        seed=SEED,
        memory_format=torch.channels_last,
        device="cpu",
        **shard,
    )
    steps = []
    for epoch in range(epochs):  # no set_epoch: the epochs count up by themselves
        order = loader.sampler.indices(epoch).tolist()
        for b, (images, targets) in enumerate(loader):
            digest = hashlib.sha256()
            for tensor in (images, targets):
                digest.update(tensor.contiguous().numpy().tobytes())
            samples = tuple(order[b * BATCH : b * BATCH + len(images)])
            steps.append((epoch, b, samples, digest.hexdigest()))
    return steps


# -- the tests -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("world", "start"), [(2, 0), (4, 1)])
def test_torchrun_shards_cover_the_dataset_each_epoch_in_new_orders(tiny, reference, world, start):
    """Per epoch, the ranks' shards are disjoint and cover the dataset (padded as
    DistributedSampler pads), every rank steps len(loader) times, the order changes each
    epoch, and a rerun gives the same batches. With 4 ranks the job starts at
    --start-epoch 1 (the example calls set_epoch(1) once): its epochs are those of the
    rerun that ran epoch 0 first."""
    logs = reference(world, start)
    epochs = range(start, EPOCHS)
    per_rank = -(-N // world)
    batches = -(-per_rank // BATCH)
    pad = per_rank * world - N
    for rank in range(world):
        (segment,) = logs[rank]  # one process start per rank
        assert segment[0]["start"] == [start, 0]
        # every rank makes the same number of steps: len(loader) per epoch
        assert [(e, b) for e, b, _, _ in _steps(segment)] == [
            (e, b) for e in epochs for b in range(batches)
        ]
    orders = []
    for epoch in epochs:
        shards = [
            [i for e, _, samples, _ in _steps(logs[r][0]) if e == epoch for i in samples]
            for r in range(world)
        ]
        assert [len(s) for s in shards] == [per_rank] * world
        # rank r read positions r, r + world, ... of the epoch's (padded) permutation
        order = [shards[p % world][p // world] for p in range(per_rank * world)]
        assert sorted(order[:N]) == list(range(N))  # disjoint, their union the dataset
        assert order[N:] == order[:pad]  # padded with the permutation's first samples
        orders.append(order)
    assert len(orders) >= 2 and len({tuple(o) for o in orders}) == len(orders)  # new orders
    # a rerun, here, with the rank given explicitly and epochs from 0 counting up by
    # themselves: the same batches, pixel for pixel
    for rank in range(world):
        rerun = _loader_steps(tiny, EPOCHS, rank=rank, world_size=world)
        assert [step for step in rerun if step[0] >= start] == _steps(logs[rank][0])


@pytest.mark.slow
def test_a_job_killed_mid_epoch_resumes_with_the_uninterrupted_batches(tiny, reference, tmp_path):
    world = 2
    want = {r: _steps(reference(world)[r][0]) for r in range(world)}
    logs, checkpoint = tmp_path / "logs", tmp_path / "ckpt.pt"
    command = _command(
        tiny,
        world,
        *("--epochs", str(EPOCHS), "--log-samples", str(logs)),
        *("--checkpoint", str(checkpoint), "--checkpoint-every", "2"),
    )
    job = Job(command, tmp_path / "killed.txt")
    _wait_for(checkpoint.exists, "checkpoint", job)
    pids = _worker_pids(logs, world)
    os.kill(pids[1], signal.SIGKILL)  # rank 1, mid-epoch 0, after the first checkpoint
    killed_at = time.monotonic()
    # torchrun's agent sees the dead worker and ends the others: every rank is gone
    assert job.wait() != 0
    assert time.monotonic() - killed_at < 60
    assert not any(_alive(pid) for pid in pids)
    assert "exitcode  : -9" in job.output()  # the agent names the killed rank's signal

    _run(command, tmp_path / "resumed.txt")  # the same command: it resumes from the file
    for rank in range(world):
        killed, resumed = _segments(logs, rank)
        # the killed job took the reference's first batches (a rerun is the same)
        taken = _steps(killed)
        assert taken == want[rank][: len(taken)]
        # the restart resumed mid-epoch, at a checkpoint (every 2 steps) at or before the
        # kill, and took exactly the rest of the uninterrupted job's batches
        epoch, batch = resumed[0]["start"]
        position = [(e, b) for e, b, _, _ in want[rank]].index((epoch, batch))
        assert batch > 0 and position % 2 == 0 and position <= len(taken) + 1
        assert _steps(resumed) == want[rank][position:]


def _check_same_samples(rank: int, roots: list[str], store: str, port: int, out: str) -> None:
    import datetime
    import importlib.util

    import torch.distributed as dist

    spec = importlib.util.spec_from_file_location("train_imagenet", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    outcome = []
    for root in (roots[0], roots[rank]):  # the same folder, then one per rank
        loader = ReLabelLoader(root, store, BATCH, crop_size=32, device="cpu", num_threads=1)
        try:
            example.check_same_samples(loader, Path(root))
            outcome.append("ok")
        except RuntimeError as e:
            outcome.append(str(e))
    Path(out, f"{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_that_list_different_images_stop_at_startup(tiny, tmp_path):
    """A node whose copy of train/ lacks a file would shift every shard: the example
    compares the ranks' lists (2 gloo processes, rank 1 missing one image)."""
    import socket

    import torch.multiprocessing as mp

    other = tmp_path / "train"
    shutil.copytree(tiny / "train", other)
    (other / "class1" / "img004.JPEG").unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    roots = [str(tiny / "train"), str(other)]
    args = (roots, str(tiny / "maps.zarr"), port, str(tmp_path))
    context = mp.start_processes(
        _check_same_samples, args=args, nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOB_TIMEOUT
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the ranks did not finish: a hang"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    for rank in range(2):
        same, different = json.loads((tmp_path / f"{rank}.json").read_text())
        assert same == "ok"
        assert different.startswith("the ranks list different images under ")
        assert f"rank 0: {N} images" in different and f"rank 1: {N - 1} images" in different


def _store_shards(tiny: Path, name: str) -> list[Path]:
    return sorted((tiny / "maps.zarr" / name / "c").glob("*/0/0/0"))


@pytest.fixture
def tiny_copy(tiny, tmp_path):
    """A copy of the tiny data (the tests damage it)."""
    for name in ("train", "maps.zarr"):
        shutil.copytree(tiny / name, tmp_path / name)
    return tmp_path


@pytest.mark.slow
def test_a_store_deleted_mid_run_ends_every_rank_naming_the_shard(tiny_copy, tmp_path):
    logs = tmp_path / "logs"
    world = 2
    command = _command(
        tiny_copy,
        world,
        *("--epochs", "50", "--label-map-memory", "stream", "--log-samples", str(logs)),
    )
    job = Job(command, tmp_path / "out.txt")
    _wait_for(lambda: _logged(logs / "rank0.jsonl", '"batch"'), "a step", job)
    pids = _worker_pids(logs, world)
    shards = _store_shards(tiny_copy, "scores")
    for shard in shards:  # every batch reads one of them
        shard.unlink()
    deleted_at = time.monotonic()
    assert job.wait() != 0
    assert time.monotonic() - deleted_at < 60
    assert not any(_alive(pid) for pid in pids)
    # the agent's summary names the first rank that failed, with its error (@record)
    root_cause = job.output().rsplit("Root Cause", 1)[-1]
    assert "StoreCorruptError" in root_cause
    assert any(f"{shard} is missing" in root_cause for shard in shards), root_cause


@pytest.mark.slow
def test_a_store_that_stops_answering_ends_every_rank_after_the_batch_timeout(tiny_copy, tmp_path):
    """The shards replaced by named pipes: a read blocks for ever, as on a hung mount,
    on every rank, inside the loader (no collective to time out). The example's
    --batch-timeout ends the rank, torchrun the others."""
    logs = tmp_path / "logs"
    world, timeout = 2, 3
    args = ("--epochs", "50", "--label-map-memory", "stream", "--log-samples", str(logs))
    command = _command(tiny_copy, world, *args, "--batch-timeout", str(timeout))
    job = Job(command, tmp_path / "out.txt")
    _wait_for(lambda: _logged(logs / "rank0.jsonl", '"batch"'), "a step", job)
    pids = _worker_pids(logs, world)
    for shard in _store_shards(tiny_copy, "scores"):
        # in one step (a rename), so that no read finds the shard missing in between;
        # opened for reading, a pipe waits for a writer that never comes
        pipe = shard.with_name(shard.name + ".pipe")
        os.mkfifo(pipe)
        os.replace(pipe, shard)
    stalled_at = time.monotonic()
    assert job.wait() != 0
    assert time.monotonic() - stalled_at < timeout + 60
    assert not any(_alive(pid) for pid in pids)
    root_cause = job.output().rsplit("Root Cause", 1)[-1]
    assert "TimeoutError: rank" in root_cause and "(--batch-timeout)" in root_cause, root_cause
    assert "Thread 0x" in job.output()  # the stacks, to see where it hung


_LOADER_SCRIPT = """
import glob, os, sys
from dali_relabel import ReLabelLoader
from dali_relabel.errors import StoreCorruptError
root, shards = sys.argv[1], sys.argv[2:]
loader = ReLabelLoader(root + "/train", root + "/maps.zarr", 3, crop_size=32, device="cpu",
                       label_map_memory="stream", num_threads=2)
epoch = iter(loader)
next(epoch)  # batches in flight in DALI and on the read-ahead thread
for shard in shards:  # cut to half their size in place, as a crashed copy leaves them
    os.truncate(shard, os.path.getsize(shard) // 2)
try:
    for _ in epoch:
        pass
except StoreCorruptError as e:
    print("truncated:", e.path)
for shard in shards:
    os.unlink(shard)
try:
    for _ in loader:  # the next epoch
        pass
except StoreCorruptError as e:
    print("deleted:", e.path)
for image in glob.glob(root + "/train/*/*.JPEG"):
    os.unlink(image)
for _ in loader:  # uncaught: the process ends with it
    pass
"""


@pytest.mark.slow
def test_the_loader_raises_and_exits_when_its_files_break_mid_run(tiny_copy):
    """No torchrun, a streaming loader with batches in flight: the store's shards are
    truncated, then deleted, then the images are. Each is an error naming a file; none
    hangs the epoch, the next epoch or the process's exit on the loader's threads
    (DALI's, the read-ahead)."""
    shards = [str(s) for s in _store_shards(tiny_copy, "scores")]
    run = subprocess.run(
        [sys.executable, "-c", _LOADER_SCRIPT, str(tiny_copy), *shards],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    (truncated, deleted) = (line.split() for line in run.stdout.splitlines())
    assert truncated[0] == "truncated:" and truncated[1] in shards
    assert deleted[0] == "deleted:" and deleted[1] in shards
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dali_relabel.errors.ImageDecodeError: cannot decode image {tiny_copy}")
