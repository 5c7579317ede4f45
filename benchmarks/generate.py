"""Throughput of `dali-relabel generate` against its teacher's forward pass alone.

Candidate: ``generate_label_maps`` end to end (scan, decode, resize, forward, top-k, store
writes, finalize) on the real-photo sample data, the teacher loaded once beforehand.
Baseline and ceiling: the same teacher's forward pass at the same batch size and
resolution on images decoded and resized beforehand (what generation would reach if
decoding, top-k and writing cost nothing). Runs alternate; each is timed after a
warm-up, and the median, min and max of the runs are reported with the ratio of medians.

    python benchmarks/generate.py --images-per-class 64 --resolution 224 --out gen.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=64, help="x 5 classes")
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="default: generate's")
    parser.add_argument("--decoder", default="torchvision")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from dali_relabel.labelmaps import (
        decode_image,
        generate_label_maps,
        load_teacher,
        resize_square,
    )
    from dali_relabel.tools import make_sample_data

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_sample_data(Path(tmp) / "data", images_per_class=args.images_per_class)
        n = len(data.keys)
        teacher = load_teacher(args.teacher, device=device)
        paths = sorted(data.train.rglob("*.JPEG"))
        decoded = torch.stack([resize_square(decode_image(p), args.resolution) for p in paths])

        def forward_pass() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, n, args.batch_size):
                    x = decoded[i : i + args.batch_size].to(device, non_blocking=True)
                    teacher(x.float().div_(255.0))
            sync()
            return n / (time.perf_counter() - start)

        def generation(run: int) -> float:
            start = time.perf_counter()
            generate_label_maps(
                data.train,
                Path(tmp) / f"maps{run}.zarr",
                teacher,
                resolution=args.resolution,
                batch_size=args.batch_size,
                device=device,
                decoder=args.decoder,
                workers=args.workers,
                progress=False,
            )
            sync()
            return n / (time.perf_counter() - start)

        with torch.inference_mode():  # warm-up: allocator, kernels, first decode imports
            teacher(decoded[: args.batch_size].to(device).float().div_(255.0))
        generation(-1)
        forward, generate = [], []
        for run in range(args.repeats):
            forward.append(forward_pass())
            generate.append(generation(run))

    result = {
        "benchmark": "generate",
        "teacher": teacher.name,
        "images": n,
        "resolution": args.resolution,
        "grid": list(teacher.grid(args.resolution)),
        "batch_size": args.batch_size,
        "workers": args.workers if args.workers is not None else min(8, os.cpu_count() or 1),
        "decoder": args.decoder,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "forward_images_per_s": _stats(forward),
        "generate_images_per_s": _stats(generate),
        "ratio_generate_to_forward": statistics.median(generate) / statistics.median(forward),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
