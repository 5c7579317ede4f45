"""Verbs that make label-map stores: ``convert``, ``generate``, ``ensemble``."""

from __future__ import annotations

import argparse

from dali_relabel.cli._options import add_storage_options, storage_options
from dali_relabel.cli._store import print_headline
from dali_relabel.constants import DEFAULT_TOPK
from dali_relabel.labelmaps import DECODERS, LAYOUTS
from dali_relabel.store import DEFAULT_SHARD_SIZE, SCORE_KINDS

__all__ = ["add_commands"]


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="official ReLabel .pt tree -> label map store",
        description="Convert a tree of official ReLabel label maps (<wnid>/<stem>.pt, "
        "[2, k, H, W]) or dense maps ([C, H, W]) into a Zarr label map store. "
        "Resumable: run the same command again after an interruption. Ends with the "
        "store's headline figures (see `dali-relabel report`).",
    )
    p.add_argument("src", help="folder of .pt label maps")
    p.add_argument(
        "out",
        help="store to write: a folder (e.g. relabel.zarr) or s3://bucket/relabel.zarr "
        "(written locally, then uploaded; complete once every object is up)",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="official",
        help="official: transpose H/W so that boxes in (x1, y1, x2, y2) reproduce the official "
        "targets (the official code swaps x and y); hw: keep maps as they are. Default: official",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="reader processes; 0 reads in this process. Default: CPUs",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="Default: 1000, or C of dense maps"
    )
    p.add_argument("--topk", type=int, default=5, help="k kept from dense maps. Default: 5")
    p.add_argument(
        "--float32", action="store_true", help="store scores as float32 (default float16)"
    )
    p.add_argument(
        "--images",
        help="the ImageFolder tree the maps label: the closing figures then include how often "
        "the targets' top class is the folder's. Default: none",
    )
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=argparse.SUPPRESS)
    add_storage_options(p)
    p.set_defaults(func=_convert)

    p = subparsers.add_parser(
        "generate",
        help="label maps of an ImageFolder tree from pretrained classifiers",
        description="Run a classifier made fully convolutional (global pooling dropped, final "
        "layer at every position) on every image resized to the teacher's own input size "
        "(or --resolution, or --grid) and store the top-k classes per cell (ReLabel's "
        "recipe). Several --teacher options average an ensemble. Resumable: run the same "
        "command again after an interruption. Weights are read from local files only. Ends "
        "with the store's headline figures (see `dali-relabel report`).",
    )
    p.add_argument("images", help="ImageFolder tree: class folders with images (e.g. train/)")
    p.add_argument(
        "out", help="label map store to write: a folder or s3://bucket/path (uploaded at the end)"
    )
    p.add_argument(
        "--teacher",
        action="append",
        help="efficientnet_lite0 (default; weights ship with the package), a torchvision "
        "classifier (resnet50, convnext_tiny, regnet_y_16gf, ...; resnet50.IMAGENET1K_V1 for "
        "other weights) or timm:NAME; repeat for an ensemble",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        help="local weights file; repeat once per --teacher, 'default' for a teacher's own "
        "weights. Default: the shipped file, or torchvision's/timm's local cache",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--resolution",
        type=int,
        help="input size of every teacher; default: each teacher's own (224 for "
        "efficientnet_lite0; the grid is resolution / stride: 7x7)",
    )
    size.add_argument(
        "--grid",
        type=int,
        metavar="N",
        help="an N x N map: each teacher runs at N x its stride (15 gives ReLabel's 15x15, "
        "480 px at stride 32; far above a teacher's own size its targets get flat)",
    )
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="classes per cell; default: 5")
    p.add_argument("--scores", choices=SCORE_KINDS, default="logits", help="default: logits")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="torchvision",
        help="default: torchvision (PIL decoding, torchvision resize)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave undecodable images out of the store (listed in its provenance)",
    )
    p.add_argument("--workers", type=int, help="decoding processes; default: min(8, CPUs)")
    p.add_argument(
        "--hash-images",
        action="store_true",
        help="record a sha256 of every image (default: size and modification time), so that a "
        "rerun finds changed images even where times cannot be trusted",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_options(p)
    p.set_defaults(func=_generate)

    p = subparsers.add_parser(
        "ensemble",
        help="average several label-map stores into one (a teacher ensemble)",
        description="Average the teachers' dense scores per cell (classes outside a store's "
        "top-k count as 0, as in LabelPooling), resampling maps of other grids bilinearly "
        "(align_corners=False), and keep the top-k of the mean. Resumable.",
    )
    p.add_argument("stores", nargs="+", help="input stores (same keys and classes)")
    p.add_argument("out", help="store to write: a folder or s3://bucket/path")
    p.add_argument(
        "--scores",
        choices=SCORE_KINDS,
        help="average logits or probabilities; default: logits when every input holds logits",
    )
    p.add_argument(
        "--grid",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="grid of the result; default: the finest input grid",
    )
    p.add_argument("--topk", type=int, help="classes per cell; default: the largest input k")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_options(p)
    p.set_defaults(func=_ensemble)


def _convert(args) -> int:
    from dali_relabel.labelmaps import convert

    store = convert(
        args.src,
        args.out,
        layout=args.layout,
        num_classes=args.num_classes,
        topk=args.topk,
        score_dtype="float32" if args.float32 else "float16",
        workers=args.workers,
        shard_size=args.shard_size,
        storage_options=storage_options(args),
    )
    print(store.summary())
    print_headline(store, args.images)
    return 0


def _generate(args) -> int:
    from dali_relabel.labelmaps import generate_label_maps

    teacher = {}  # none given: generate_label_maps's default teacher
    if args.teacher:
        teacher["teacher"] = args.teacher if len(args.teacher) > 1 else args.teacher[0]
    checkpoints = args.checkpoint or [None]
    store = generate_label_maps(
        args.images,
        args.out,
        **teacher,
        checkpoint=checkpoints if len(checkpoints) > 1 else checkpoints[0],
        resolution=args.resolution,
        grid=args.grid,
        k=args.topk,
        scores=args.scores,
        batch_size=args.batch_size,
        device=args.device,
        decoder=args.decoder,
        skip_bad_images=args.skip_bad_images,
        workers=args.workers,
        image_check="sha256" if args.hash_images else "stat",
        progress=not args.quiet,
        storage_options=storage_options(args),
    )
    skipped = store.provenance.get("skipped_images", [])
    note = (
        f"; skipped {len(skipped):,} undecodable images (listed in the store's provenance)"
        if skipped
        else ""
    )
    print(f"wrote label maps of {len(store):,} images to {store.path}{note}")
    print_headline(store, args.images)
    return 0


def _ensemble(args) -> int:
    from dali_relabel.labelmaps import ensemble_label_maps

    store = ensemble_label_maps(
        args.stores,
        args.out,
        scores=args.scores,
        grid=tuple(args.grid) if args.grid else None,
        k=args.topk,
        progress=not args.quiet,
        storage_options=storage_options(args),
    )
    print(
        f"wrote the {store.provenance['ensemble']} of {len(args.stores)} stores "
        f"({len(store):,} maps, {store.grid[0]}x{store.grid[1]}, top-{store.k}) to {store.path}"
    )
    return 0
