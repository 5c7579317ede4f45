"""Throughput of ReLabelLoader beside the loaders people would use instead, in one run.

Same images, batch size, crop size and CPU threads/workers for every path:
  a. official  the original ReLabel data path, as the paper's code behaves: torchvision
               ImageFolder, PIL decode, RandomResizedCrop that returns its coordinates,
               torch.load of each image's official .pt map in the workers, then per
               batch a dense scatter into [B, 1000, 15, 15], roi_align and softmax
  b. torchvision  a plain DataLoader without ReLabel (RandomResizedCrop, flip, normalize)
  c. dali      a plain DALI pipeline without ReLabel (fn.decoders.image_random_crop,
               resize, normalize, random mirror)
  d. relabel   ReLabelLoader with soft targets, label maps held in memory and streamed

Each path runs in a process of its own (so that peak memory is its own), all at once,
their timed windows taking turns once the others are idle (a shared machine's load then
falls on every path alike): warm-up, then the median of several timed windows with min
and max, in images per second, and the CPU milliseconds per image, which other jobs on
the machine do not change. Peak host memory is the peak summed RSS of the process and
its workers; on a GPU, peak device memory as torch sees it. Output: JSON, a Markdown
table and a PNG bar chart.

Usage: dali-relabel bench [--images-per-class 100] [--batch-size 64] [--out-dir runs/bench]
       (or python benchmarks/throughput.py with the same arguments); from Python,
       :func:`benchmark_throughput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError

__all__ = ["PATHS", "benchmark_throughput", "machine", "throughput_table"]

PATHS = {
    "official": "a. original ReLabel (PIL + .pt + dense pooling)",
    "torchvision": "b. torchvision DataLoader, no ReLabel",
    "dali": "c. plain DALI pipeline, no ReLabel",
    "relabel_memory": "d. ReLabelLoader, maps in memory",
    "relabel_stream": "d. ReLabelLoader, maps streamed",
}


@dataclasses.dataclass(frozen=True)
class _Config:
    """What every path is measured with (what the path factories read)."""

    batch_size: int
    crop_size: int
    threads: int
    device: str
    windows: int
    window_batches: int
    warmup_batches: int


def machine() -> dict[str, Any]:
    """What the numbers were measured on: Python, platform, CPUs, torch, GPU."""
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def benchmark_throughput(
    out_dir: str | os.PathLike = "runs/bench",
    *,
    images_per_class: int = 100,
    batch_size: int = 64,
    crop_size: int = 224,
    threads: int | None = None,
    device: str | None = None,
    windows: int = 8,
    window_batches: int = 8,
    warmup_batches: int = 4,
    paths: Sequence[str] = tuple(PATHS),
) -> dict[str, Any]:
    """Measure each path of :data:`PATHS` on the sample photos; write JSON, Markdown, PNG.

    Writes ``throughput.json``, ``throughput.md`` and ``throughput.png`` into ``out_dir``.
    A path that fails is recorded with its error and the others still run.

    Args:
        out_dir: where the results go. Default: "runs/bench".
        images_per_class: sample photos per class (5 classes). Default: 100.
        batch_size: samples per batch. Default: 64.
        crop_size: side of the crops. Default: 224.
        threads: DALI threads and DataLoader workers. Default: None (the CPU count).
        device: "cpu" or "cuda". Default: None (CUDA when available).
        windows: timed windows per path. Default: 8.
        window_batches: batches per window. Default: 8.
        warmup_batches: batches taken untimed before each window (the batches the
            prefetch queues hold: windows measure the steady state). Default: 4.
        paths: which paths, keys of :data:`PATHS`. Default: all.

    Returns:
        The results as written to ``throughput.json``: images/s (median, min, max) and
        peak memory per path, and the ratios between paths.
    """
    import torch

    unknown = [name for name in paths if name not in PATHS]
    if unknown:
        _checks.one_of("paths", unknown[0], tuple(PATHS))
    if not paths:
        raise ArgumentError(f"paths must name at least one of {', '.join(PATHS)}, got none")
    for name, value in (
        ("images_per_class", images_per_class),
        ("batch_size", batch_size),
        ("crop_size", crop_size),
        ("windows", windows),
        ("window_batches", window_batches),
    ):
        _checks.positive_int(name, value)
    config = _Config(
        batch_size=batch_size,
        crop_size=crop_size,
        threads=_checks.positive_int(
            "threads", (os.cpu_count() or 1) if threads is None else threads
        ),
        device=str(
            _checks.device("device", device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ),
        windows=windows,
        window_batches=window_batches,
        warmup_batches=_checks.at_least("warmup_batches", warmup_batches, 0),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": machine(),
        "device": config.device,
        "batch_size": batch_size,
        "crop_size": crop_size,
        "threads": config.threads,
        "images": 5 * images_per_class,
        # a shared machine's load: images/s fall with it, CPU ms per image does not
        "load_average_start": os.getloadavg(),
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = _prepare(Path(tmp), images_per_class)
        results["paths"] = _measure_alternating(list(paths), data, config)
        for name, result in results["paths"].items():
            if "error" not in result:
                rate = result["images_per_s"]
                print(f"[throughput] {PATHS[name]}: {rate:,.0f} images/s", file=sys.stderr)
    results["load_average_end"] = os.getloadavg()
    results["ratios"] = _ratios(results["paths"])
    results["ratios_paired"] = _ratios(results["paths"], paired=True)
    (out_dir / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "throughput.md").write_text(throughput_table(results) + "\n")
    _chart(results, out_dir / "throughput.png")
    return results


def _ratios(paths: dict[str, Any], paired: bool = False) -> dict[str, float | None]:
    """Ratios of the paths' images/s: of their medians, or (``paired``) the median of the
    ratios of their windows of one round, which ran minutes apart at most and so under
    much the same load of the machine's other jobs."""

    def ratio(a: str, b: str) -> float | None:
        if a not in paths or b not in paths or "error" in paths[a] or "error" in paths[b]:
            return None
        if paired:
            pairs = zip(paths[a]["windows"], paths[b]["windows"], strict=True)
            return statistics.median(x / y for x, y in pairs)
        return paths[a]["images_per_s"] / paths[b]["images_per_s"]

    return {
        "relabel_memory_vs_dali": ratio("relabel_memory", "dali"),
        "relabel_memory_vs_official": ratio("relabel_memory", "official"),
        "relabel_stream_vs_dali": ratio("relabel_stream", "dali"),
        "relabel_stream_vs_official": ratio("relabel_stream", "official"),
        "torchvision_vs_official": ratio("torchvision", "official"),
    }


# -- the data ------------------------------------------------------------------------------
def _prepare(root: Path, images_per_class: int) -> dict[str, Any]:
    """Sample photos, their official .pt maps, and the same maps converted to a store."""
    from dali_relabel.labelmaps import convert
    from dali_relabel.tools._sample import make_sample_data

    data = make_sample_data(root, images_per_class=images_per_class, label_maps=True)
    store = root / "maps.zarr"
    convert(data.label_maps, store, progress=False)
    return {"data": data, "store": str(store)}


# -- each path in a process of its own, their timed windows alternating ----------------------
def _measure_alternating(
    names: list[str], data: dict[str, Any], config: _Config
) -> dict[str, dict[str, Any]]:
    """Every path's results. Each path runs in a process of its own (its memory is its
    own), all of them at once; their timed windows take turns, in a rotating order, each
    after the others have gone idle, so that a shared machine's changing load falls on
    every path alike instead of on whichever ran at a busy moment."""
    # spawn: a fresh interpreter, as a separate command would be, without a fork of this
    # process's threads and memory.
    context = multiprocessing.get_context("spawn")
    children: dict[str, tuple[Any, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[throughput] starting {PATHS[name]} ...", file=sys.stderr, flush=True)
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_serve_in_child, args=(name, data, config, child_end))
        child.start()
        child_end.close()  # the child holds the other end: a crash reads as EOF
        children[name] = (child, parent_end)
    windows: dict[str, list[dict[str, float]]] = {name: [] for name in names}

    def ask(name: str, command: str) -> dict[str, Any] | None:
        child, conn = children[name]
        try:
            conn.send(command)
            answer = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            answer = {"error": f"the process measuring {name} died (exit code {child.exitcode})"}
        if "error" in answer:
            results[name] = answer
            return None
        return answer

    live = [name for name in names if ask(name, "ready") is not None]
    for w in range(config.windows):
        for name in live[w % len(live) :] + live[: w % len(live)] if live else []:
            if name not in results and (window := ask(name, "window")) is not None:
                windows[name].append(window)
    for name in names:
        if name not in results:
            final = ask(name, "stop")
            if final is not None:
                rates = [w["images_per_s"] for w in windows[name]]
                results[name] = {
                    "images_per_s": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                    "windows": rates,
                    # CPU time per image (all threads and worker processes): unlike
                    # images/s, other jobs sharing the machine's cores do not change it
                    "cpu_ms_per_image": statistics.median(
                        w["cpu_ms_per_image"] for w in windows[name]
                    ),
                    **final,
                }
        child, conn = children[name]
        conn.close()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    return {name: results[name] for name in names}


def _serve_in_child(name: str, data: dict[str, Any], config: _Config, conn: Any) -> None:
    # A spawned child inherits "spawn" as its start method; DataLoader workers should start
    # as in a training script run as a command: with the platform's default.
    multiprocessing.set_start_method(None, force=True)
    try:
        path = _Path(name, data, config)
        while True:
            command = conn.recv()
            if command == "ready":
                conn.send(path.ready())
            elif command == "window":
                conn.send(path.window())
            else:
                conn.send(path.stop())
                break
    except Exception as e:  # reported as the path's result; the other paths still run
        traceback.print_exc()
        conn.send({"error": f"{type(e).__name__}: {e}"})
    conn.close()


class _Path:
    """One path's batches in its own process, measured one window at a time."""

    def __init__(self, name: str, data: dict[str, Any], config: _Config) -> None:
        import torch

        from dali_relabel.tools._bench_paths import FACTORIES

        torch.set_num_threads(config.threads)
        self._torch = torch
        self._config = config
        self._rss = _PeakRSS()
        self._batches = FACTORIES[name](data["data"], data["store"], config)
        self._sync = torch.cuda.synchronize if config.device == "cuda" else (lambda: None)

    def _take(self, count: int) -> int:
        return sum(next(self._batches)[0].shape[0] for _ in range(count))

    def _settle(self, limit_s: float = 10.0) -> None:
        """Wait until this process and its workers are idle (their prefetch done)."""
        stop = time.monotonic() + limit_s
        while time.monotonic() < stop:
            before = self._rss.cpu_seconds()
            time.sleep(0.1)
            if self._rss.cpu_seconds() - before < 0.01:
                return

    def ready(self) -> dict[str, Any]:
        self._take(self._config.warmup_batches)
        self._sync()
        self._settle()
        return {}

    def window(self) -> dict[str, float]:
        """Images/s and CPU ms per image of ``window_batches`` batches, in steady state:
        the batches ready in the prefetch queues are taken first, untimed."""
        self._take(self._config.warmup_batches)
        self._sync()
        start, cpu_start = time.perf_counter(), self._rss.cpu_seconds()
        n = self._take(self._config.window_batches)
        self._sync()
        elapsed, cpu = time.perf_counter() - start, self._rss.cpu_seconds() - cpu_start
        self._settle()
        return {"images_per_s": n / elapsed, "cpu_ms_per_image": 1000 * cpu / n}

    def stop(self) -> dict[str, Any]:
        result = {"peak_host_rss_mb": self._rss.stop() / 2**20}
        if self._config.device == "cuda":
            result["peak_cuda_mb"] = self._torch.cuda.max_memory_allocated() / 2**20
        return result


class _PeakRSS:
    """Samples the summed RSS of this process and its children every 20 ms; reads their
    CPU time on demand."""

    def __init__(self):
        from dali_relabel._deps import require

        self._psutil = require("psutil", extra="tools", needed_by="dali-relabel bench")
        self._proc = self._psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        error = self._psutil.Error
        while not self._stop.is_set():
            total = 0
            try:
                for p in [self._proc, *self._proc.children(recursive=True)]:
                    with contextlib.suppress(error):
                        total += p.memory_info().rss
            except error:
                pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of this process and its live children."""
        total = 0.0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(self._psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- reporting -----------------------------------------------------------------------------
def throughput_table(results: dict[str, Any]) -> str:
    """The results of :func:`benchmark_throughput` as a Markdown table."""
    base = results["paths"]
    lines = [
        "| path | images/s (median) | min | max | vs plain DALI | vs original ReLabel "
        "| CPU ms/image | peak host MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    dali = base.get("dali", {}).get("images_per_s")
    official = base.get("official", {}).get("images_per_s")
    for name, r in base.items():
        if "error" in r:
            lines.append(f"| {PATHS[name]} | failed: {r['error'][:60]} | | | | | | |")
            continue
        v = r["images_per_s"]
        vs_dali = f"{v / dali:.2f}x" if dali else ""
        vs_official = f"{v / official:.2f}x" if official else ""
        lines.append(
            f"| {PATHS[name]} | {v:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | {vs_dali} | "
            f"{vs_official} | {r['cpu_ms_per_image']:.2f} | {r['peak_host_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def _chart(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [n for n, r in results["paths"].items() if "error" not in r]
    values = [results["paths"][n]["images_per_s"] for n in names]
    lows = [v - results["paths"][n]["min"] for n, v in zip(names, values, strict=True)]
    highs = [results["paths"][n]["max"] - v for n, v in zip(names, values, strict=True)]
    colors = ["#4c72b0" if n.startswith("relabel") else "#999999" for n in names]
    fig = Figure(figsize=(8, 3.6), dpi=120)
    ax = fig.subplots()
    ax.barh([PATHS[n] for n in names], values, xerr=[lows, highs], color=colors)
    for y, (v, high) in enumerate(zip(values, highs, strict=True)):
        ax.text(v + high, y, f"  {v:,.0f}", va="center")  # right of the error bar
    ax.invert_yaxis()
    ax.set_xlabel("images per second (median; bars: min-max)")
    m = results["machine"]
    ax.set_title(
        f"batch {results['batch_size']}, crop {results['crop_size']}, {results['threads']} "
        f"threads, {results['device']} ({m['cpus']} CPUs{', ' + m['cuda'] if m['cuda'] else ''})",
        fontsize=9,
    )
    ax.set_xlim(0, max([v + h for v, h in zip(values, highs, strict=True)], default=1) * 1.2)
    fig.tight_layout()
    fig.savefig(path)
