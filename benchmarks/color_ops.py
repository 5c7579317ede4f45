"""What each way of computing the colour jitter costs per image, on the CPU.

The loader's colour jitter (ColorJitter brightness, contrast and saturation; the
lighting is folded into the normalization and costs nothing) could run as DALI's CPU
operators in the graph or, as the loader does, as one affine map per image in torch
after it (``dali_relabel.loader._color.jitter_``). Measured on the same random 224 x 224
images, CPU time per image:

  dali:normalize            crop_mirror_normalize alone (the graph's last operator;
                            the ones below are timed with it and reported without it)
  dali:mean                 fn.reductions.mean per channel (the contrast's centre)
  dali:brightness_contrast  fn.brightness_contrast, uint8 out
  dali:hsv                  fn.hsv (saturation), float out
  torch:jitter_             the loader's map, in place on the normalized float32 batch,
                            one torch thread (the loader's pooling thread); fresh
                            batches, as DALI hands them over
  torch:add_                one in-place pass over the same batch (``x.add_(1)``): the
                            least any pass over the images costs

The DALI rows run ``--threads`` DALI threads, their CPU time counted over all of them.
Warm-up, then the median (min, max) of ``--windows`` windows of ``--batches`` batches.

Usage: python benchmarks/color_ops.py [--batch-size 64] [--crop-size 224] [--threads 2]
                                      [--windows 5] [--batches 10] [--out F]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

DALI_OPS = ("normalize", "mean", "brightness_contrast", "hsv")


def _dali_pipeline(op: str, images: list[np.ndarray], args):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(exec_dynamic=True)
    def graph():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        factor = fn.random.uniform(range=[0.6, 1.4])
        if op == "mean":
            return fn.reductions.mean(x, axes=[0, 1], dtype=types.FLOAT)
        if op == "brightness_contrast":
            x = fn.brightness_contrast(x, brightness=factor, contrast=factor, contrast_center=100.0)
        elif op == "hsv":
            x = fn.hsv(x, saturation=factor, dtype=types.FLOAT)
        return fn.crop_mirror_normalize(
            x, dtype=types.FLOAT, output_layout="CHW", mean=[124.0, 116.0, 104.0],
            std=[58.0, 57.0, 57.0],
        )  # fmt: skip

    pipe = graph(
        batch_size=args.batch_size, num_threads=args.threads, device_id=None, seed=0,
        prefetch_queue_depth=1,
    )  # fmt: skip
    pipe.build()
    return pipe.run


def _torch_step(op: str, args):
    import torch

    from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
    from dali_relabel.loader._color import draw_color, jitter_

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, 3, args.crop_size, args.crop_size)

    def step():
        images = torch.randn(shape)  # fresh, as each DALI batch is; not timed
        color = draw_color(rng, args.batch_size, (0.4, 0.4, 0.4), 0.1)
        start = time.process_time()
        if op == "jitter_":
            jitter_(images, color, IMAGENET_MEAN, IMAGENET_STD)
        else:
            images.add_(1.0)
        return time.process_time() - start

    return step


def _per_image_ms(step, timed: bool, args) -> list[float]:
    """CPU ms per image of each window (``step`` returns its own time when ``timed``)."""
    for _ in range(2):
        step()
    windows = []
    for _ in range(args.windows):
        start, own = time.process_time(), 0.0
        for _ in range(args.batches):
            result = step()
            own += result if timed else 0.0
        spent = own if timed else time.process_time() - start
        windows.append(1e3 * spent / (args.batches * args.batch_size))
    return windows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    size = (args.crop_size, args.crop_size, 3)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(args.batch_size)]
    load_before = os.getloadavg()
    windows = {f"dali:{op}": _per_image_ms(_dali_pipeline(op, images, args), False, args)
               for op in DALI_OPS}  # fmt: skip
    for op in ("jitter_", "add_"):
        windows[f"torch:{op}"] = _per_image_ms(_torch_step(op, args), True, args)
    base = statistics.median(windows["dali:normalize"])
    results = {}
    for name, values in windows.items():
        median = statistics.median(values)
        alone = name.startswith("dali:") and name not in ("dali:normalize", "dali:mean")
        results[name] = {
            "cpu_ms_per_image": round(median, 4),
            "min": round(min(values), 4),
            "max": round(max(values), 4),
            # the operator's own cost: the normalization it was timed with taken out
            "cpu_ms_per_image_alone": round(median - base, 4) if alone else round(median, 4),
        }
    return emit(
        {
            "benchmark": "color_ops",
            "machine": machine(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "settings": vars(args),
            "results": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
