"""Start-up and epoch ends: time to the first batch, and epochs of a few batches.

Small epochs (an evaluation loader: 196 batches for ImageNet's val at 256; 3 batches of
256 for the 800 sample photos the H200 check uses) pay whatever an epoch's start costs.
Two paths on the same photos, batch size and threads, alternating in one process:
  dali     a plain DALI pipeline (``readers.file`` over the folder, shuffled,
           ``decoders.image_random_crop``, resize, normalize, random mirror) behind
           DALI's PyTorch iterator, reset at each epoch's end (``auto_reset``);
  relabel  ReLabelLoader with soft targets, maps in memory (``label_map_memory="auto"``).
Reported per path: ``construct_s`` (pipeline or loader made, store opened),
``first_batch_s`` (from the first ``iter`` to the first batch), and per epoch of
``--batches-per-epoch`` batches the median, min and max seconds and the images/s it
gives, and the CPU seconds per epoch (all threads); plus the ratio relabel / dali of the
epoch rate. JSON out.

Usage: python benchmarks/epochs.py [--batch-size 64] [--batches-per-epoch 3]
                                   [--epochs 8] [--device cpu|cuda] [--out F]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

PATHS = ("dali", "relabel")


def _plain_dali(root: str, args):
    from dali_relabel.tools import plain_dali_iterator

    return plain_dali_iterator(
        root,
        batch_size=args.batch_size,
        threads=args.threads,
        device=args.device,
        crop_size=args.crop_size,
        drop_last=False,
    )


def _relabel(root: str, store: str, args):
    from dali_relabel import ReLabelLoader

    return ReLabelLoader(
        root,
        store,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        num_threads=args.threads,
        device=args.device,
        targets="soft",
    )


def _images(batch) -> int:
    return batch[0]["images"].shape[0] if isinstance(batch[0], dict) else batch[0].shape[0]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _first(make, sync) -> tuple[object, float, float]:
    start = time.perf_counter()
    loader = make()
    made = time.perf_counter()
    next(iter(loader))
    sync()
    return loader, made - start, time.perf_counter() - made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches-per-epoch", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="timed epochs per path (4 blocks)")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch

    from dali_relabel.labelmaps import convert
    from dali_relabel.tools import make_sample_data

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    samples = args.batch_size * args.batches_per_epoch
    per_class = -(-samples // 5)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_sample_data(Path(tmp), images_per_class=per_class, label_maps=True)
        convert(data.label_maps, Path(tmp) / "maps.zarr", progress=False)
        # exactly `samples` images: the folder's first ones per class
        extra = sorted(data.train.glob("*/*"))[samples:]
        for path in extra:
            path.unlink()
        root, store = str(data.train), str(Path(tmp) / "maps.zarr")
        makers = {
            "dali": lambda: _plain_dali(root, args),
            "relabel": lambda: _relabel(root, store, args),
        }
        loaders, result = {}, {name: {} for name in PATHS}
        for name in PATHS:  # a first pass of each warms the page cache and imports
            loaders[name], _, _ = _first(makers[name], sync)
        for name in PATHS:
            del loaders[name]
            loaders[name], made, first = _first(makers[name], sync)
            result[name]["construct_s"] = made
            result[name]["first_batch_s"] = first
            for _ in loaders[name]:  # the rest of the first epoch
                pass
        times = {name: [] for name in PATHS}
        cpu = {name: [] for name in PATHS}
        for _ in range(4):  # blocks alternate: a noisy shared machine hits both alike
            for name in PATHS:
                # an untimed epoch first: the other path's next epoch, computed ahead
                # (prefetch), must not compete with this one's timed epochs
                for epoch in range(-1, -(-args.epochs // 4)):
                    start, cpu_start = time.perf_counter(), _cpu_seconds()
                    images = sum(_images(batch) for batch in loaders[name])
                    sync()
                    if epoch >= 0:
                        times[name].append(time.perf_counter() - start)
                        cpu[name].append(_cpu_seconds() - cpu_start)
                    if images != samples:
                        raise RuntimeError(f"{name} yielded {images} images, not {samples}")
    for name in PATHS:
        t = times[name]
        result[name].update(
            epoch_median_s=statistics.median(t),
            epoch_min_s=min(t),
            epoch_max_s=max(t),
            images_per_s=samples / statistics.median(t),
            # all threads' CPU time: what the other jobs of a shared machine do not change
            epoch_cpu_s=statistics.median(cpu[name]),
        )
    emit(
        {
            "benchmark": "epochs",
            "machine": machine(),
            "load_average": os.getloadavg(),
            "device": args.device,
            "batch_size": args.batch_size,
            "batches_per_epoch": args.batches_per_epoch,
            "threads": args.threads,
            "paths": result,
            "relabel_vs_dali": result["relabel"]["images_per_s"] / result["dali"]["images_per_s"],
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
