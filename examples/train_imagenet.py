"""Train an ImageNet classifier on ReLabel targets with ReLabelLoader: a short drop-in example.

What changes against a torchvision training script is the loader (one line each for
train and val) and the loss, a cross-entropy against soft targets
(``dali_relabel.SoftTargetCrossEntropy``, ``sum(-targets * log_softmax(logits), 1).mean()``).

``--local`` trains on the paper's localized labels: the loader yields a distribution per
cell of a grid (``targets="local"``), the grid of the model's last feature map, and the
model's classifier is applied to every cell of that map (a ResNet's ``fc`` as a 1x1
convolution), trained with the per-cell loss ``LocalSoftTargetCrossEntropy``. Evaluation
averages the cells' logits, which is the model's own global output (the classifier is
linear, so it commutes with the average pooling).

    # ImageNet, one GPU or torchrun --nproc-per-node 8 ...
    python examples/train_imagenet.py --data /data/imagenet --label-maps relabel_imagenet.zarr
    # a few steps on the real-photo sample data, on the CPU, in a temporary folder
    python examples/train_imagenet.py --sample --steps 3 --crop-size 64 --batch-size 8
    python examples/train_imagenet.py --sample --local --steps 3 --crop-size 64 --batch-size 8

Under torchrun (one node or several, docs/DISTRIBUTED.md) each process takes its rank and
world size from torch.distributed, its device from ``LOCAL_RANK``; the loader shards by
them. ``--checkpoint PATH --checkpoint-every N`` saves the model, optimizer, scheduler and
``train_loader.state_dict()`` every N steps (rank 0, written to a temporary file and
renamed over PATH, so a kill never leaves half a checkpoint); a restart with the same
arguments resumes from PATH when it exists, in the middle of an epoch with exactly the
batches the uninterrupted run would have taken.

    torchrun --nproc-per-node 8 examples/train_imagenet.py --data /data/imagenet \
        --label-maps relabel_imagenet.zarr --checkpoint ckpt.pt --checkpoint-every 1000
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record

from dali_relabel import LocalSoftTargetCrossEntropy, ReLabelLoader, SoftTargetCrossEntropy


class LocalLogits(nn.Module):
    """A torchvision ResNet whose ``fc`` is applied to every cell of the last feature map:
    logits [B, C, h, w] in training, their mean over the cells (the ResNet's own output)
    in evaluation."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(resnet, "fc", None), nn.Linear):
            raise SystemExit("--local needs a torchvision ResNet (its fc on every cell)")
        self.features = nn.Sequential(*list(resnet.children())[:-2])  # up to the last stage
        self.fc = resnet.fc

    def grid(self, crop_size: int) -> tuple[int, int]:
        """(h, w) of the feature map at ``crop_size``: the loader's local_size."""
        with torch.no_grad():
            shape = self.features(torch.zeros(1, 3, crop_size, crop_size)).shape
        return int(shape[2]), int(shape[3])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = torch.einsum("bchw,kc->bkhw", self.features(images), self.fc.weight)
        cells = cells + self.fc.bias[:, None, None]
        return cells if self.training else cells.mean((2, 3))


def sample_data(folder: Path) -> tuple[Path, Path]:
    """The real-photo sample and its label maps in a store: (train folder, store path)."""
    from dali_relabel.labelmaps import convert
    from dali_relabel.tools import make_sample_data

    data = make_sample_data(folder, images_per_class=8, label_maps=True)
    # in the official release's layout, as convert's default expects
    store = convert(data.label_maps, folder / "maps.zarr", workers=1, progress=False)
    return data.train, Path(store.path)


@record  # under torchrun, the agent's summary of a failed job shows the error
def main() -> None:
    args = parse_args()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # torchrun; ReLabelLoader takes rank and world size from here
        torch.distributed.init_process_group(
            "nccl" if torch.cuda.is_available() else "gloo",
            timeout=datetime.timedelta(seconds=args.dist_timeout),
        )
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = train_device()
    rank = torch.distributed.get_rank() if distributed else 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.sample:
            train_dir, label_maps = sample_data(Path(tmp))
            val_dir = train_dir
        else:
            train_dir, label_maps, val_dir = args.data / "train", args.label_maps, args.data / "val"

        common = {"crop_size": args.crop_size, "memory_format": torch.channels_last}
        model = torchvision.models.get_model(args.arch, num_classes=_num_classes(label_maps))
        criterion: nn.Module = SoftTargetCrossEntropy()
        local = {}
        if args.local:
            model = LocalLogits(model)
            local = {"targets": "local", "local_size": model.grid(args.crop_size)}
            criterion = LocalSoftTargetCrossEntropy()
            print(f"local targets on the model's {local['local_size']} feature map")
        train_loader = ReLabelLoader(
            train_dir,
            label_maps,
            args.batch_size,
            seed=args.seed,
            label_map_memory=args.label_map_memory,
            **common,
            **local,
        )
        if distributed:
            check_same_samples(train_loader, train_dir)
        val_loader = None
        if val_dir.is_dir():
            # hard labels; every image exactly once across processes (even_shards=False:
            # evaluate() has no per-batch collective, so ranks may run different numbers of
            # batches); the store's class table gives val's folders the soft targets' classes
            val_loader = ReLabelLoader(
                val_dir,
                train_loader.store,
                args.batch_size,
                train=False,
                targets="hard",
                even_shards=False,
                **common,
            )

        model = model.to(device, memory_format=torch.channels_last)
        bare = model  # what is saved and evaluated, without DDP's wrapper
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        steps = len(train_loader) if args.steps is None else min(args.steps, len(train_loader))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps)
        start_epoch, start_batch = args.start_epoch, 0
        resume_from = args.resume or (
            args.checkpoint if args.checkpoint and args.checkpoint.exists() else None
        )
        if resume_from is not None:
            start_epoch, start_batch = load_checkpoint(
                resume_from, bare, optimizer, scheduler, train_loader
            )
            print(
                f"rank {rank}: resumed from {resume_from}, epoch {start_epoch} batch {start_batch}"
            )
        else:
            # once: the loader's epochs count on from here (set_epoch every epoch is fine too)
            train_loader.set_epoch(start_epoch)
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(model)
        log = SampleLog(args.log_samples, rank, train_loader)
        watchdog = BatchWatchdog(args.batch_timeout, rank)
        log.event(start_epoch, start_batch)

        for epoch in range(start_epoch, args.epochs):
            first = start_batch if epoch == start_epoch else 0
            model.train()
            start = time.perf_counter()
            # islice, not break: a break would make the loader fetch one batch too many
            batches = watchdog.watch(itertools.islice(train_loader, steps - first), epoch, first)
            for step, (images, targets) in enumerate(batches, start=first):
                loss = criterion(model(images), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                log.batch(epoch, step, images, targets)
                if step % 100 == 0 or step == steps - 1:
                    rate = (step + 1 - first) * len(images) / (time.perf_counter() - start)
                    print(
                        f"epoch {epoch} step {step + 1}/{steps} loss {loss.item():.4f} "
                        f"{rate:.0f} img/s"
                    )
                done = epoch * steps + step + 1  # steps taken since epoch 0
                last = step + 1 == steps
                every = args.checkpoint_every
                if args.checkpoint and rank == 0 and (last or (every and done % every == 0)):
                    position = (epoch + 1, 0) if last else (epoch, step + 1)
                    save_checkpoint(
                        args.checkpoint, bare, optimizer, scheduler, train_loader, *position
                    )
            if val_loader is not None:
                # the bare module: DDP's forward would sync buffers with every process, and
                # one with no validation batch would never join
                print(f"epoch {epoch} val top-1 {evaluate(bare, val_loader, distributed):.2%}")

    if distributed:
        torch.distributed.destroy_process_group()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="ImageNet root holding train/ (and val/)")
    parser.add_argument("--label-maps", help="label map store of the train/ images")
    parser.add_argument("--sample", action="store_true", help="use the real-photo sample data")
    parser.add_argument("--arch", default="resnet18", help="torchvision model (default resnet18)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--start-epoch", type=int, default=0, help="first epoch (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="stop each epoch after N steps")
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="the loader's seed (default 0)")
    parser.add_argument("--local", action="store_true", help="train on per-cell targets")
    parser.add_argument(
        "--label-map-memory",
        default="auto",
        choices=("auto", "host", "device", "stream", "shared"),
        help="where the label maps live (ReLabelLoader's label_map_memory; default auto)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="save to PATH (rank 0, atomically) at each epoch's end and every "
        "--checkpoint-every steps; resume from it when it exists",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: epoch ends)"
    )
    parser.add_argument("--resume", type=Path, help="resume from this checkpoint (must exist)")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=600,
        help="seconds a collective waits for the other processes before failing (default 600)",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=600,
        help="seconds to wait for the loader's next batch before ending the process with "
        "every thread's stack (0: wait forever; default 600)",
    )
    parser.add_argument(
        "--log-samples",
        type=Path,
        help="folder: each rank appends a JSON line per step (epoch, batch, sample indices, "
        "a digest of images and targets) to rank<r>.jsonl",
    )
    args = parser.parse_args()
    if not args.sample and (args.data is None or args.label_maps is None):
        parser.error("pass --data and --label-maps, or --sample")
    if args.checkpoint_every < 0 or args.start_epoch < 0:
        parser.error("--checkpoint-every and --start-epoch must be >= 0")
    if args.checkpoint_every and args.checkpoint is None:
        parser.error("--checkpoint-every needs --checkpoint PATH")
    if args.dist_timeout <= 0:
        parser.error(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.resume is not None and not args.resume.is_file():
        parser.error(f"--resume {args.resume}: no such checkpoint file")
    return args


def check_same_samples(loader: ReLabelLoader, root: Path) -> None:
    """Stop every rank when the ranks list different images under ``root``.

    Each rank lists the folder itself and takes its shard by position in that list, so
    a node whose copy lacks or adds a file would shift every shard, silently. The
    loader's state names the list (its length and a hash of the keys in order)."""
    state = loader.state_dict()
    mine = (state["num_samples"], state["dataset"])
    every: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, mine)
    if len(set(every)) > 1:
        groups: dict[Any, list[int]] = {}
        for r, listing in enumerate(every):
            groups.setdefault(tuple(listing), []).append(r)
        listed = "; ".join(
            f"rank {ranks[0]}: {n:,} images ({h})"
            if len(ranks) == 1
            else f"{len(ranks)} ranks ({', '.join(map(str, ranks[:4]))}"
            f"{', ...' if len(ranks) > 4 else ''}): {n:,} images ({h})"
            for (n, h), ranks in groups.items()
        )
        raise RuntimeError(
            f"the ranks list different images under {root} ({listed}): every node must see "
            "the same files (a shared file system, or identical copies)"
        )


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: ReLabelLoader,
    epoch: int,
    batch: int,
) -> None:
    """Write the checkpoint to a temporary file beside ``path``, then rename it over
    ``path``: a process killed while saving leaves the previous checkpoint whole.
    (epoch, batch) is where training continues; ``loader.state_dict()`` resumes the
    loader there (the same on every rank, so rank 0's resumes them all)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "batch": batch,
        "loader": loader.state_dict(),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: ReLabelLoader,
) -> tuple[int, int]:
    """Restore what :func:`save_checkpoint` wrote; (epoch, batch) where training goes on."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["batch"]:  # in the middle of an epoch: the loader yields the rest of it
        loader.load_state_dict(state["loader"])
    else:  # at an epoch's start
        loader.set_epoch(state["epoch"])
    return state["epoch"], state["batch"]


class BatchWatchdog:
    """``--batch-timeout``: ends the process when the loader gives no batch for that long.

    A store or image folder that stops answering (a hung mount, a stalled object store)
    blocks every rank inside the loader, where no collective timeout can fire, and the
    blocked call cannot be interrupted. A daemon thread then writes what was awaited and
    every thread's stack, records the error for torchrun's summary, and exits the
    process; torchrun ends the other ranks."""

    def __init__(self, seconds: float, rank: int) -> None:
        self._seconds = seconds
        self._rank = rank
        self._waiting: tuple[float, str] | None = None  # (deadline, what)
        if seconds > 0:
            threading.Thread(target=self._watch, name="batch-watchdog", daemon=True).start()

    def watch(self, batches: Any, epoch: int, first: int) -> Any:
        """``batches``, each ``next()`` under the watch."""
        batches = iter(batches)
        for step in itertools.count(first):
            self._waiting = (time.monotonic() + self._seconds, f"epoch {epoch} batch {step}")
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self._waiting = None
            yield batch

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self._seconds / 4))
            waiting = self._waiting
            if waiting is None or time.monotonic() < waiting[0]:
                continue
            message = (
                f"rank {self._rank}: the loader gave no batch in {self._seconds:g} s "
                f"(--batch-timeout) while {waiting[1]} was due: the label-map store or the "
                "images stopped answering. The stacks of every thread follow"
            )
            print(message, file=sys.stderr, flush=True)
            faulthandler.dump_traceback(all_threads=True)
            try:
                raise TimeoutError(message)
            except TimeoutError as e:
                get_error_handler().record_exception(e)  # torchrun's "Root Cause"
            os._exit(1)  # the blocked thread would hold up a normal exit


class SampleLog:
    """``--log-samples``: one JSON line per step with the batch's sample indices (the
    loader's order, ``loader.sampler.indices(epoch)``) and a digest of the images and
    targets it yielded, to compare runs (an interrupted and resumed one with an
    uninterrupted one). Lines are flushed at once: a killed process loses none."""

    def __init__(self, folder: Path | None, rank: int, loader: ReLabelLoader) -> None:
        self._file = None
        self._loader = loader
        self._order: tuple[int, Any] = (-1, None)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._file = open(folder / f"rank{rank}.jsonl", "a")  # noqa: SIM115

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def event(self, epoch: int, batch: int) -> None:
        """A process starts at (epoch, batch)."""
        self._write({"start": [epoch, batch], "pid": os.getpid()})

    def batch(self, epoch: int, step: int, images: torch.Tensor, targets: torch.Tensor) -> None:
        if self._file is None:
            return
        if self._order[0] != epoch:  # the epoch's order, once per epoch
            self._order = (epoch, self._loader.sampler.indices(epoch))
        size = self._loader.batch_size
        samples = self._order[1][step * size : step * size + len(images)]
        digest = hashlib.sha256()
        for tensor in (images, targets):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self._write(
            {
                "epoch": epoch,
                "batch": step,
                "samples": samples.tolist(),
                "digest": digest.hexdigest(),
            }
        )


def _num_classes(label_maps: str | Path) -> int:
    from dali_relabel.store import open_store

    return open_store(label_maps).num_classes


def train_device() -> torch.device:
    if torch.cuda.is_available():  # ReLabelLoader's default device too
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: ReLabelLoader, distributed: bool) -> float:
    model.eval()
    correct = torch.zeros((), device=loader.device)
    seen = 0  # counted on the host: no copy to the GPU per batch
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum()
        seen += len(labels)
    stats = torch.stack([correct, correct.new_tensor(seen)])
    if distributed:
        torch.distributed.all_reduce(stats)
    return (stats[0] / stats[1].clamp(min=1)).item()


if __name__ == "__main__":
    main()
