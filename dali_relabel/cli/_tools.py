"""Verbs that show and measure: ``demo``, ``sample``, ``show``, ``bench`` (the [tools] extra)."""

from __future__ import annotations

import argparse

from dali_relabel.errors import ArgumentError

__all__ = ["add_commands"]


def add_commands(subparsers) -> None:
    from dali_relabel import demo

    p = subparsers.add_parser(
        "demo",
        help="the whole ReLabel path on real photos (what `make demo` runs)",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="Default: runs/demo")
    p.add_argument("--images-per-class", type=int, default=24, help="Default: 24")
    p.add_argument("--steps", type=int, default=300, help="Default: 300")
    p.add_argument("--batch-size", type=int, default=32, help="Default: 32")
    p.add_argument("--crop-size", type=int, default=96, help="Default: 96")
    p.add_argument("--resolution", type=int, default=224, help="teacher input. Default: 224")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.set_defaults(func=_demo)

    p = subparsers.add_parser(
        "sample",
        help="write the real-photo sample data (ImageNet layout)",
        description="Write OUT/train/<wnid>/<wnid>_<n>.JPEG from scikit-image's photos, and "
        "with --label-maps the matching official-format .pt label maps under OUT/label_maps.",
    )
    p.add_argument("out", help="folder to write into")
    p.add_argument("--images-per-class", type=int, default=8, help="default: 8")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--label-maps", action="store_true", help="also write official .pt maps")
    p.set_defaults(func=_sample)

    p = subparsers.add_parser(
        "show",
        help="draw an image with its label map (and a crop's ReLabel targets) to a PNG",
        description="Draw the image of KEY with its label map's top class per cell as a "
        "coloured overlay and a legend; with --box also the crop and its top-5 targets "
        "(LabelPooling over the box, then softmax).",
    )
    p.add_argument("store", help="label map store")
    p.add_argument("--images", required=True, help="the ImageFolder tree the store was made from")
    p.add_argument("--key", required=True, help="sample key, e.g. n02124075/n02124075_3")
    p.add_argument("--box", help="crop x1,y1,x2,y2 normalized to [0, 1] (x right, y down)")
    p.add_argument("-o", "--out", required=True, help="PNG to write")
    p.set_defaults(func=_show)

    from dali_relabel import bench

    bench.add_commands(subparsers)


def _demo(args) -> int:
    from dali_relabel.demo import run_demo

    for name in ("images_per_class", "steps", "batch_size", "crop_size", "resolution"):
        if getattr(args, name) < 1:
            raise ArgumentError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    run_demo(
        args.out,
        images_per_class=args.images_per_class,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        resolution=args.resolution,
        device=args.device,
    )
    return 0


def _sample(args) -> int:
    from dali_relabel.sample import make_sample_data

    data = make_sample_data(
        args.out, images_per_class=args.images_per_class, seed=args.seed, label_maps=args.label_maps
    )
    print(f"wrote {len(data.keys)} images under {data.train}")
    if data.label_maps is not None:
        print(f"wrote {len(data.keys)} official-format label maps under {data.label_maps}")
    return 0


def _show(args) -> int:
    from dali_relabel.show import show_label_map

    show_label_map(args.store, args.images, args.key, box=args.box, out=args.out)
    print(f"wrote {args.out}")
    return 0
