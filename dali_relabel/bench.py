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

Each path runs in its own process (so that peak memory is its own): warm-up, then the
median of several timed windows with min and max, in images per second. Peak host
memory is the peak summed RSS of the process and its workers; on a GPU, peak device
memory as torch sees it. Output: JSON, a Markdown table and a PNG bar chart.

Usage: dali-relabel bench [--images-per-class 100] [--batch-size 64] [--out-dir runs/bench]
       (or python benchmarks/throughput.py with the same arguments)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dali_relabel._bench_paths import FACTORIES

__all__ = ["PATHS", "add_commands", "build_parser", "main", "run"]

PATHS = {
    "official": "a. original ReLabel (PIL + .pt + dense pooling)",
    "torchvision": "b. torchvision DataLoader, no ReLabel",
    "dali": "c. plain DALI pipeline, no ReLabel",
    "relabel_memory": "d. ReLabelLoader, maps in memory",
    "relabel_stream": "d. ReLabelLoader, maps streamed",
}


# -- measuring one path (in its own process) ----------------------------------------------
class _PeakRSS:
    """Samples the summed RSS of this process and its children every 20 ms."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _measure(name: str, args) -> dict[str, Any]:
    import torch

    from dali_relabel.sample import SampleData

    info = json.loads(Path(args.data_json).read_text())
    data = SampleData(
        root=Path(info["root"]),
        train=Path(info["train"]),
        label_maps=Path(info["label_maps"]),
        keys=tuple(info["keys"]),
        labels=tuple(info["labels"]),
    )
    torch.set_num_threads(args.threads)
    rss = _PeakRSS()
    batches = FACTORIES[name](data, info["store"], args)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for _ in range(args.warmup_batches):
        next(batches)
    sync()
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        n = 0
        for _ in range(args.window_batches):
            n += next(batches)[0].shape[0]
        sync()
        rates.append(n / (time.perf_counter() - start))
    result = {
        "images_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "windows": rates,
        "peak_host_rss_mb": rss.stop() / 2**20,
    }
    if args.device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# -- the run -------------------------------------------------------------------------------
def _prepare(args, root: Path) -> Path:
    """Sample photos, their official .pt maps, and the same maps converted to a store."""
    from dali_relabel.labelmaps import convert
    from dali_relabel.sample import make_sample_data

    data = make_sample_data(root, images_per_class=args.images_per_class, label_maps=True)
    store = root / "maps.zarr"
    convert(data.label_maps, store, progress=False)
    info = {
        "root": str(data.root),
        "train": str(data.train),
        "label_maps": str(data.label_maps),
        "keys": list(data.keys),
        "labels": list(data.labels),
        "store": str(store),
    }
    path = root / "data.json"
    path.write_text(json.dumps(info))
    return path


def _table(results: dict[str, Any]) -> str:
    base = results["paths"]
    lines = [
        "| path | images/s (median) | min | max | vs plain DALI | vs original ReLabel "
        "| peak host MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    dali = base.get("dali", {}).get("images_per_s")
    official = base.get("official", {}).get("images_per_s")
    for name, r in base.items():
        if "error" in r:
            lines.append(f"| {PATHS[name]} | failed: {r['error'][:60]} | | | | | |")
            continue
        v = r["images_per_s"]
        lines.append(
            f"| {PATHS[name]} | {v:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | "
            f"{v / dali:.2f}x | {v / official:.2f}x | {r['peak_host_rss_mb']:,.0f} |"
            if dali and official
            else f"| {PATHS[name]} | {v:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | | | "
            f"{r['peak_host_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results["paths"].items() if "error" not in r]
    values = [results["paths"][n]["images_per_s"] for n in names]
    lows = [v - results["paths"][n]["min"] for n, v in zip(names, values, strict=True)]
    highs = [results["paths"][n]["max"] - v for n, v in zip(names, values, strict=True)]
    colors = ["#4c72b0" if n.startswith("relabel") else "#999999" for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
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
    ax.set_xlim(0, max(v + h for v, h in zip(values, highs, strict=True)) * 1.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--images-per-class", type=int, default=100, help="5 classes. Default: 100")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="Default: the CPU count")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--window-batches", type=int, default=8)
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    p.add_argument("--out-dir", default="runs/bench")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data-json", default=None, help=argparse.SUPPRESS)
    return p


def run(args) -> dict[str, Any]:
    import torch

    args.threads = args.threads or os.cpu_count() or 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown}; choose from {list(PATHS)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": machine(),
        "device": args.device,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "threads": args.threads,
        "images": 5 * args.images_per_class,
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_json = _prepare(args, Path(tmp))
        for name in names:
            cmd = [sys.executable, "-m", "dali_relabel.bench", "--_one", name]
            cmd += ["--data-json", str(data_json)]
            for key in ("batch_size", "crop_size", "threads", "device", "windows"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            cmd += ["--window-batches", str(args.window_batches)]
            cmd += ["--warmup-batches", str(args.warmup_batches)]
            print(f"[throughput] {PATHS[name]} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                results["paths"][name] = {"error": err}
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            results["paths"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"[throughput]   {results['paths'][name]['images_per_s']:,.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
    p = results["paths"]

    def ratio(a, b):
        if a in p and b in p and "error" not in p[a] and "error" not in p[b]:
            return p[a]["images_per_s"] / p[b]["images_per_s"]
        return None

    results["ratios"] = {
        "relabel_memory_vs_dali": ratio("relabel_memory", "dali"),
        "relabel_memory_vs_official": ratio("relabel_memory", "official"),
        "relabel_stream_vs_dali": ratio("relabel_stream", "dali"),
        "relabel_stream_vs_official": ratio("relabel_stream", "official"),
        "torchvision_vs_official": ratio("torchvision", "official"),
    }
    (out_dir / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "throughput.md").write_text(_table(results) + "\n")
    _chart(results, out_dir / "throughput.png")
    return results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="throughput of ReLabelLoader beside the usual loaders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[build_parser(add_help=False)],
        conflict_handler="resolve",
    )
    p.set_defaults(func=lambda args: _report(run(args), args))


def _report(results: dict[str, Any], args) -> int:
    print(_table(results))
    print(json.dumps(results["ratios"], indent=2))
    print(f"wrote {args.out_dir}/throughput.json, throughput.md, throughput.png")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args._one is not None:
        print(json.dumps(_measure(args._one, args)))
        return 0
    return _report(run(args), args)


if __name__ == "__main__":
    sys.exit(main())
