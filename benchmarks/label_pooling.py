"""LabelPooling benchmark: ReLabel targets for one batch, the op against the official dense path.

Paths timed in one run, per batch size and device:
  candidate  relabel_targets(...) as a caller gets it (validate=True: value checks included,
             one host sync on CUDA)
  unchecked  relabel_targets(..., validate=False): the op alone, sync-free on CUDA
  dense      the official ReLabel path: zeros [B, C, H, W], one scatter_ per sample (the
             loop of get_labelmaps), torchvision roi_align, softmax; on CUDA the map is
             built on the GPU, a stronger baseline than the official CPU build + copy
Inputs are what the store holds: float16 scores and int16 classes, k=5, 15x15, C=1000.

Each path: warm-up, then the median, min and max over timed windows of several calls
(torch.cuda.Event timing on CUDA, with the peak memory the path allocates; on CPU also the
process CPU time and minor page faults per call). ``speedup`` is dense / candidate
(medians); ``max_abs_diff`` compares candidate and dense targets.

CPU times depend on the C allocator: a short process hands the op's few-MB temporaries
back to the kernel after each call and faults them in again, while in a long training run
glibc has usually raised its thresholds and reuses them. Run with
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=67108864 (the maxima glibc reaches
on its own) to measure that steady state.

Usage: python benchmarks/label_pooling.py [--device all|cpu|cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

from dali_relabel.ops.label_pooling import relabel_targets


def dense_targets(scores, classes, boxes, num_classes):
    """ReLabel's get_labelmaps + get_relabel, in this library's box convention."""
    batch, _, height, width = scores.shape
    maps = torch.zeros(batch, num_classes, height, width, device=scores.device)
    for label_map, s, c in zip(maps, scores, classes, strict=True):
        label_map.scatter_(0, c.long(), s.float())
    index = torch.arange(batch, dtype=torch.float32, device=scores.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    rois = torch.stack(
        [index, x1 * width - 0.5, y1 * height - 0.5, x2 * width - 0.5, y2 * height - 0.5], 1
    )
    pooled = roi_align(maps, rois, (1, 1), spatial_scale=1.0, sampling_ratio=-1)
    return torch.softmax(pooled.flatten(1), 1)


def make_batch(batch, topk, grid, num_classes, device, seed=0):
    """Top-k maps with distinct classes per cell and RandomResizedCrop-like boxes."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, topk, grid, grid, generator=gen).half()
    keys = torch.rand(batch, num_classes, grid, grid, generator=gen)
    classes = keys.topk(topk, dim=1).indices.short()
    area = torch.empty(batch).uniform_(0.08, 1.0, generator=gen)
    ratio = torch.empty(batch).uniform_(3 / 4, 4 / 3, generator=gen)
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    x1, y1 = torch.rand(batch, generator=gen) * (1 - w), torch.rand(batch, generator=gen) * (1 - h)
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], 1).clamp(0, 1)
    return scores.to(device), classes.to(device), boxes.to(device)


def _calls_per_window(fn: Callable[[], Any], window_s: float, sync: Callable[[], None]) -> int:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return max(1, int(window_s / max(time.perf_counter() - start, 1e-9)))


def time_path(fn: Callable[[], Any], device: str, windows: int, window_s: float) -> dict:
    """Seconds per call: median, min and max over ``windows`` windows of several calls."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    calls = _calls_per_window(fn, window_s, sync)
    times = []
    cpu_start = time.process_time()
    faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(windows):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            start_s = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start_s) / calls)
    result = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "calls_per_window": calls,
    }
    if not cuda:
        # CPU seconds of the process (all threads) per call: on a shared machine this moves
        # less than wall time when other processes take the cores.
        result["cpu_time_s"] = (time.process_time() - cpu_start) / (windows * calls)
        # Fresh memory costs a page fault per 4 KiB; see docs/LABEL_POOLING.md.
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
        result["page_faults_per_call"] = faults / (windows * calls)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync()
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - before
    return result


def paths(scores, classes, boxes, num_classes) -> dict[str, Callable[[], Tensor]]:
    args = (scores, classes, boxes, num_classes)
    return {
        "candidate": functools.partial(relabel_targets, *args),
        "unchecked": functools.partial(relabel_targets, *args, validate=False),
        "dense": functools.partial(dense_targets, *args),
    }


def run(device, batches, topk, grid, num_classes, windows, window_s) -> list[dict]:
    rows = []
    for batch in batches:
        fns = paths(*make_batch(batch, topk, grid, num_classes, device), num_classes)
        row: dict[str, Any] = {"device": device, "batch": batch}
        for name, fn in fns.items():
            row[name] = time_path(fn, device, windows, window_s)
        row["speedup"] = row["dense"]["median_s"] / row["candidate"]["median_s"]
        row["speedup_unchecked"] = row["dense"]["median_s"] / row["unchecked"]["median_s"]
        diff = (fns["candidate"]() - fns["dense"]()).abs().max()
        row["max_abs_diff"] = float(diff)
        rows.append(row)
        print(
            f"{device} B={batch:5d}  candidate {row['candidate']['median_s'] * 1e3:8.3f} ms  "
            f"unchecked {row['unchecked']['median_s'] * 1e3:8.3f} ms  "
            f"dense {row['dense']['median_s'] * 1e3:9.3f} ms  x{row['speedup']:.0f}",
            file=sys.stderr,
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--grid", type=int, default=15)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=0.1, help="target seconds per window")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device visible to torch")
        devices = ["cpu"]
    results = []
    for device in devices:
        results += run(
            device,
            args.batches,
            args.topk,
            args.grid,
            args.num_classes,
            args.windows,
            args.window_s,
        )
    report = {
        "benchmark": "label_pooling",
        "machine": {
            **machine(),
            "torch_threads": torch.get_num_threads(),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "config": {
            "topk": args.topk,
            "grid": [args.grid, args.grid],
            "num_classes": args.num_classes,
            "scores": "float16",
            "classes": "int16",
            "output_size": [1, 1],
            "windows": args.windows,
        },
        "results": results,
    }
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
