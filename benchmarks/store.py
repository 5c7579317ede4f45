"""Store benchmark: bytes per sample against the official .pt files, and random batched
reads (batches of 256 random indices) against ``torch.load`` of the same 256 files.

Reads are timed from a warm page cache. Paths compared in one run:
  pt            torch.load of 256 official .pt files (the official data path)
  zarr_python   the store read through zarr-python
  tensorstore   the store read through tensorstore (LabelMapStore's default on disk)
  memory        the store held in memory (LabelMapStore.load), a numpy gather
and the time to load the whole store into memory, extrapolated to ImageNet's 1,281,167.

What the checksums cost (issue 11): the same maps in a format-2 store (crc32c in every
chunk, strict reads) and a format-1 store (no chunk checksums, missing data read as
zeros), in the same run: the whole-store load rate (LabelMapStore.load) and streamed
reads (read() of random batches, what label_map_memory="stream" does per batch),
interleaved repetitions in alternating order, medians and their ratio. The difference is
a few percent, below the noise of one run on a shared machine: about 15 repetitions are
needed for a stable median.

Usage: python benchmarks/store.py [--samples 4096] [--checksum-samples 16384] [--reps 21]
       [--out runs/bench/store.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, time_windows

from dali_relabel import LabelMapStore
from dali_relabel.errors import DaliRelabelWarning
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.labelmaps import convert
from dali_relabel.store import LabelMapWriter
from dali_relabel.tools import synthetic_label_map

IMAGENET_TRAIN = 1_281_167


def _official_files(root: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        wnid = f"n{i % 100:08d}"
        (root / wnid).mkdir(parents=True, exist_ok=True)
        label = int(rng.integers(1000))
        lm = synthetic_label_map(label, rng, k=5, grid=(15, 15), num_classes=1000)
        path = root / wnid / f"{wnid}_{i}.pt"
        torch.save(torch.from_numpy(lm), path)
        paths.append(path)
    return paths


def _dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, files in os.walk(path) for f in files)


def _checksummed_and_not(root: Path, n: int, seed: int = 0) -> dict[int, Path]:
    """The same n synthetic maps (k=5, 15x15, float16) written as format 2 and format 1."""
    rng = np.random.default_rng(seed)
    maps = np.stack(
        [
            synthetic_label_map(int(rng.integers(1000)), rng, k=5, grid=(15, 15), num_classes=1000)
            for _ in range(n)
        ]
    )
    keys = [f"n{i % 1000:08d}/img_{i:07d}" for i in range(n)]
    paths = {}
    for version in (2, 1):
        path = root / f"format{version}.zarr"
        writer = LabelMapWriter.create(
            path,
            keys,
            num_classes=1000,
            k=5,
            grid=(15, 15),
            class_names=imagenet_wnids(),
            _format_version=version,
        )
        for start, stop in writer.missing_blocks():
            writer.write_block(start, maps[start:stop, 0], maps[start:stop, 1].astype(np.int64))
        writer.finalize()
        paths[version] = path
    return paths


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _checksum_cost(root: Path, n: int, reps: int, batch: int) -> dict:
    """Load rate and streamed reads of format 2 against format 1, interleaved.

    Each repetition times both formats back to back (who goes first alternates), so the
    ratio of a pair sees the same machine load; the medians of those paired ratios are
    the result. CPU time (of every thread of this process) is reported beside wall time:
    it is what the checksums cost, and other jobs on a shared machine disturb it less.
    """
    warnings.simplefilter("ignore", DaliRelabelWarning)  # the format-1 note, once per open
    paths = _checksummed_and_not(root, n)
    rng = np.random.default_rng(1)
    batches = [rng.choice(n, batch, replace=False) for _ in range(32)]
    stores = {v: LabelMapStore.open(p) for v, p in paths.items()}
    for store in stores.values():  # warm: page cache, tensorstore opened
        store.read(np.arange(n))
    times: dict[str, dict[int, list[tuple[float, float]]]] = {
        "load": {1: [], 2: []},
        "stream": {1: [], 2: []},
    }
    for r in range(reps):
        for version in (1, 2) if r % 2 == 0 else (2, 1):  # alternate who goes first
            store = LabelMapStore.open(paths[version])  # opening checks metadata: not timed
            times["load"][version].append(_timed(lambda s=store: s.load(progress=False)))
            reader = stores[version]
            times["stream"][version].append(_timed(lambda r=reader: [r.read(b) for b in batches]))

    result: dict = {"samples": n, "repetitions": reps, "batch": batch}
    for name, count in (("load", n), ("stream", len(batches) * batch)):
        entry: dict = {}
        for version, label in ((1, "format1_no_checksums"), (2, "format2")):
            rates = [count / wall for wall, _ in times[name][version]]
            entry[f"{label}_samples_per_s"] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
        pairs = list(zip(times[name][1], times[name][2], strict=True))
        # time with checksums over time without, per repetition: 1.05 = 5 % slower
        entry["time_ratio"] = statistics.median(b[0] / a[0] for a, b in pairs)
        entry["cpu_time_ratio"] = statistics.median(b[1] / a[1] for a, b in pairs)
        result[name] = entry
    result["bytes_per_sample"] = {f"format{v}": _dir_bytes(p) / n for v, p in paths.items()}
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--checksum-samples", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = _official_files(tmp / "pt", args.samples)
        store = convert(tmp / "pt", tmp / "maps.zarr", workers=1, progress=False)
        by_key = {key: i for i, key in enumerate(store.keys)}
        paths = [None] * len(files)
        for p in files:
            paths[by_key[f"{p.parent.name}/{p.stem}"]] = p

        pt_bytes = _dir_bytes(tmp / "pt") / args.samples
        store_bytes = _dir_bytes(tmp / "maps.zarr") / args.samples

        rng = np.random.default_rng(0)
        batches = [rng.choice(args.samples, args.batch, replace=False) for _ in range(64)]
        cursor = {"i": 0}

        def next_batch():
            cursor["i"] = (cursor["i"] + 1) % len(batches)
            return batches[cursor["i"]]

        def read_pt():
            for i in next_batch():
                torch.load(paths[i], weights_only=True)

        zarr_store = LabelMapStore.open(tmp / "maps.zarr")
        zarr_store._tensorstores = lambda: None  # force the zarr-python path
        ts_store = LabelMapStore.open(tmp / "maps.zarr")
        start = time.perf_counter()
        mem_store = LabelMapStore.open(tmp / "maps.zarr").load(progress=False)
        load_s = time.perf_counter() - start

        # Warm the page cache for every path before timing.
        for i in range(args.samples):
            torch.load(paths[i], weights_only=True)
        ts_store.read(np.arange(args.samples))

        results = {}
        for name, fn, windows in (
            ("pt", read_pt, args.windows),
            ("zarr_python", lambda: zarr_store.read(next_batch()), 3),
            ("tensorstore", lambda: ts_store.read(next_batch()), args.windows),
            ("memory", lambda: mem_store.read(next_batch()), args.windows),
        ):
            t = time_windows(fn, windows=windows)
            t["samples_per_s"] = args.batch / t["median_s"]
            results[name] = t
        base = results["pt"]["samples_per_s"]
        for t in results.values():
            t["ratio_vs_pt"] = t["samples_per_s"] / base
        checksums = _checksum_cost(tmp, args.checksum_samples, args.reps, args.batch)

    load_rate = args.samples / load_s
    return {
        "benchmark": "store",
        "machine": machine(),
        "samples": args.samples,
        "batch": args.batch,
        "bytes_per_sample": {
            "pt": pt_bytes,
            "store": store_bytes,
            "store_over_pt": store_bytes / pt_bytes,
        },
        "random_reads": results,
        "load_into_memory": {
            "samples_per_s": load_rate,
            "imagenet_estimate_s": IMAGENET_TRAIN / load_rate,
        },
        "checksums": checksums,
        "targets": {
            "store_over_pt_at_most": 0.30,
            "reads_samples_per_s_at_least": 50_000,
            "reads_ratio_vs_pt_at_least": 20,
            "checksum_time_ratio_at_most": 1.05,
        },
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    out = args[args.index("--out") + 1] if "--out" in args else None
    emit(main(args), out)
