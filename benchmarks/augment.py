"""What the loader's augmentations cost: images/s of one ReLabelLoader configuration with and
without each, in one run, as ratios to the plain loader (issue 9's targets: CutMix with
region targets >= 0.95x, colour augmentation >= 0.9x).

Configurations, each its own loader on the same sample photos, batch and threads:
  baseline       soft targets, no mixing, no colour
  cutmix_region  cutmix_alpha=1.0, region targets (the default)
  cutmix_area    cutmix_alpha=1.0, the paper's area targets
  mixup          mixup_alpha=0.8 (timm's recipe value)
  color          color_jitter=0.4 and lighting=0.1 (the official ReLabel recipe)
  color_cutmix   both (CutMix then pastes in torch, after each image's colours)

Windows are interleaved (window w of every configuration, then window w + 1), so that a
change of the machine's load hits all of them alike. A window is ``--window-epochs``
epochs. The loader computes a few batches ahead, also across epoch ends: after each
window the benchmark waits ``--settle`` seconds, so that this prefetch is done before the
next configuration is timed (it would steal its CPU) and every window starts with the
same head start (the same few batches ready, the same share of every window).

Two measures per window: images per second of wall time, and images per second of this
process's CPU time (all its threads: DALI's, the pooling thread, the caller), the
latter times ``--threads``. On a machine that other jobs share, the wall-clock rate
moves with their load; the CPU-time rate is what the configuration costs, and on a
dedicated machine whose ``--threads`` cores the loader keeps busy it is the wall-clock
rate. Reported: median and min/max over the windows of both, their ratios of medians to
the baseline, the paired ratio (the median over windows of a window's rate over the
baseline's window of the same round: a shared machine's load moves within seconds), and
the machine's load average before and after.

Usage: python benchmarks/augment.py [--images-per-class 64] [--batch-size 64]
                                    [--crop-size 224] [--threads 2] [--windows 5]
                                    [--window-epochs 2] [--settle 2]
                                    [--out runs/bench/augment.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

from dali_relabel import ReLabelLoader
from dali_relabel.labelmaps import convert
from dali_relabel.tools import make_sample_data

CONFIGS = {
    "baseline": {},
    "cutmix_region": {"cutmix_alpha": 1.0},
    "cutmix_area": {"cutmix_alpha": 1.0, "mix_targets": "area"},
    "mixup": {"mixup_alpha": 0.8},
    "color": {"color_jitter": 0.4, "lighting": 0.1},
    "color_cutmix": {"color_jitter": 0.4, "lighting": 0.1, "cutmix_alpha": 1.0},
    # diagnosis: the CutMix graph with nothing cut (its paste copies, no mixing)
    "cutmix_never": {"cutmix_alpha": 1.0, "mix_prob": 0.0},
}


def _epoch(loader: ReLabelLoader) -> int:
    count = 0
    for images, _ in loader:
        count += len(images)
    return count


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-epochs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dali_relabel_augment_") as tmp:
        data = make_sample_data(tmp, images_per_class=args.images_per_class, label_maps=True)
        store = convert(data.label_maps, Path(tmp) / "maps.zarr", workers=1, progress=False)
        loaders = {
            name: ReLabelLoader(
                data.train,
                store,
                args.batch_size,
                crop_size=args.crop_size,
                num_threads=args.threads,
                device=args.device,
                **CONFIGS[name],
            )
            for name in args.configs
        }
        for loader in loaders.values():  # warm-up: pipelines built, first epoch run
            _epoch(loader)
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu_rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.windows):
            for name, loader in loaders.items():
                time.sleep(args.settle)
                start, cpu = time.perf_counter(), time.process_time()
                count = sum(_epoch(loader) for _ in range(args.window_epochs))
                rates[name].append(count / (time.perf_counter() - start))
                cpu_rates[name].append(args.threads * count / (time.process_time() - cpu))
    load_after = os.getloadavg()

    results = {}
    for name in rates:
        results[name] = {"options": CONFIGS[name]}
        for key, table in (("wall", rates), ("cpu", cpu_rates)):
            values = table[name]
            median = statistics.median(values)
            base = statistics.median(table["baseline"]) if "baseline" in table else None
            paired = None
            if "baseline" in table:  # window w against the baseline's window w
                paired = statistics.median(
                    v / b for v, b in zip(values, table["baseline"], strict=True)
                )
            results[name][key] = {
                "images_per_s": round(median, 1),
                "min": round(min(values), 1),
                "max": round(max(values), 1),
                "ratio_to_baseline": None if base is None else round(median / base, 3),
                "paired_ratio": None if paired is None else round(paired, 3),
            }
    return emit(
        {
            "benchmark": "augment",
            "machine": machine(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "settings": {
                "images": len(data.keys),
                "batch_size": args.batch_size,
                "crop_size": args.crop_size,
                "threads": args.threads,
                "windows": args.windows,
                "window_epochs": args.window_epochs,
                "device": args.device,
            },
            "results": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
