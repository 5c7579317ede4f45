"""Which decoder graph keeps the crop window exportable at the decoder's full speed?

ReLabelLoader needs each sample's crop window, so it cannot use
``fn.decoders.image_random_crop`` (which hides its window). Two graphs give the window:
  slice       fn.random_crop_generator -> fn.decoders.image_slice (ROI decode)
  full+slice  fn.random_crop_generator -> fn.decoders.image (whole image) -> fn.slice
and the reference without a window:
  random_crop fn.decoders.image_random_crop
Each is followed by the same resize and crop_mirror_normalize. On "mixed" (GPU) the
open question is whether ROI decoding keeps the hardware JPEG decoder's speed; on the
CPU libjpeg-turbo decodes only the rows it needs.

Usage: python benchmarks/decoders.py [--device cpu|cuda] [--batch-size 64] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

VARIANTS = ("slice", "full+slice", "random_crop")


def _pipeline(variant: str, root: str, args):
    from nvidia.dali import fn, pipeline_def, types

    gpu = args.device == "cuda"
    decoder_device = "mixed" if gpu else "cpu"

    @pipeline_def
    def graph():
        jpegs, _labels = fn.readers.file(file_root=root, random_shuffle=True, name="reader")
        if variant == "random_crop":
            images = fn.decoders.image_random_crop(
                jpegs,
                device=decoder_device,
                output_type=types.RGB,
                random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3],
            )
        else:
            shape = fn.peek_image_shape(jpegs)
            anchor, size = fn.random_crop_generator(
                shape, random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3]
            )
            if variant == "slice":
                images = fn.decoders.image_slice(
                    jpegs,
                    anchor,
                    size,
                    axis_names="HW",
                    device=decoder_device,
                    output_type=types.RGB,
                )
            else:
                images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
                images = fn.slice(images, anchor, size, axis_names="HW")
        images = fn.resize(images, resize_x=args.crop_size, resize_y=args.crop_size)
        return fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
            std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
            mirror=fn.random.coin_flip(),
        )

    pipe = graph(
        batch_size=args.batch_size,
        num_threads=args.threads,
        device_id=0 if gpu else None,
        seed=0,
    )
    pipe.build()
    return pipe


def _rate(pipe, args) -> dict[str, float]:
    import statistics

    for _ in range(args.warmup):
        pipe.run()
    rates = []
    for _ in range(args.windows):
        start = time.perf_counter()
        for _ in range(args.window_batches):
            (out,) = pipe.run()
            if args.device == "cuda":
                out.as_tensor()  # waits for the GPU work of this batch
        rates.append(args.batch_size * args.window_batches / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv=None) -> dict:
    import torch

    from dali_relabel.tools import make_sample_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--images-per-class", type=int, default=40)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--window-batches", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_sample_data(tmp, images_per_class=args.images_per_class)
        for variant in VARIANTS:
            results[variant] = _rate(_pipeline(variant, str(data.train), args), args)
    base = results["random_crop"]["images_per_s"]
    for r in results.values():
        r["ratio_vs_random_crop"] = r["images_per_s"] / base
    faster = max(("slice", "full+slice"), key=lambda v: results[v]["images_per_s"])
    return {
        "benchmark": "decoders",
        "machine": machine(),
        "device": args.device,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "variants": results,
        "faster_with_window": faster,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    emit(main(args), args[args.index("--out") + 1] if "--out" in args else None)
