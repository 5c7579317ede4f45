"""Verbs that look at a label-map store: ``info``, ``verify``, ``rewrite``, ``report``."""

from __future__ import annotations

import sys

from dali_relabel.cli._options import add_storage_options, storage_options

__all__ = ["add_commands", "print_headline"]


def add_commands(subparsers) -> None:
    from dali_relabel.labelmaps import DEFAULT_SAMPLES

    p = subparsers.add_parser("info", help="print a summary of a label map store")
    p.add_argument("store", help="a folder or s3://bucket/path")
    add_storage_options(p)
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "verify",
        help="read every chunk of a store; with --images, compare its keys with a folder",
        description="Read every chunk of the store, shard by shard, and report each missing "
        "or damaged shard file by its path (format 2 checks every chunk's crc32c). With "
        "--images, also report images without a label map and label maps without an image. "
        "Exit status 1 when anything is wrong.",
    )
    p.add_argument("store", help="a folder or s3://bucket/path")
    p.add_argument("--images", help="ImageFolder tree (e.g. imagenet/train) to compare keys with")
    p.add_argument("--list", action="store_true", help="list every problem, not the first 10")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_options(p)
    p.set_defaults(func=_verify)

    p = subparsers.add_parser(
        "rewrite",
        help="copy a store into a new one of the current format (checksummed)",
        description="Read every chunk of STORE (refusing a damaged one) and write it to OUT "
        "in the current store format, with a crc32c checksum in every chunk. Use it on stores "
        "of format 1. Resumable.",
    )
    p.add_argument("store")
    p.add_argument("out", help="the new store's folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_rewrite)

    p = subparsers.add_parser(
        "report",
        help="how sharp a store's targets are and how often they agree with the folder labels",
        description="On a random sample of the store's images: the top-1 probability and "
        "the entropy of the targets the loader makes (relabel_targets) for the full image "
        "and for one RandomResizedCrop per image (the loader's scale and ratio ranges), "
        "and with --images how often their top class, and each cell's, is the folder's "
        "class. Printed as a table; --json and -o write JSON and a PNG of the histograms. "
        "Warns when the targets are flat.",
    )
    p.add_argument("store")
    p.add_argument(
        "--images",
        help="the ImageFolder tree the store labels: gives the folder agreement and the "
        "crops' image sizes. Default: none (no agreement; crops on square images)",
    )
    p.add_argument("-o", "--out", help="PNG to write (histograms; needs the [tools] extra)")
    p.add_argument("--json", help="JSON to write")
    p.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"images sampled. Default: {DEFAULT_SAMPLES} (all when the store has fewer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and crops. Default: 0")
    add_storage_options(p)
    p.set_defaults(func=_report)


def _info(args) -> int:
    from dali_relabel.store import LabelMapStore, missing_shard_files

    store = LabelMapStore.open(
        args.store, allow_incomplete=True, storage_options=storage_options(args)
    )
    print(store.summary())
    missing = missing_shard_files(store) if store.complete else []
    if missing:
        print(
            f"  MISSING        {len(missing):,} shard files (first: {missing[0]}); run "
            f"`dali-relabel verify {store.path}`"
        )
    return 1 if missing else 0


def _listed(title: str, items: list[str], shown: int | None) -> None:
    print(f"{len(items):,} {title}")
    for item in items[:shown]:
        print(f"  {item}")
    if shown is not None and len(items) > shown:
        print(f"  ... {len(items) - shown:,} more (--list shows all)")


def _verify(args) -> int:
    from dali_relabel.store import verify_store

    shown = None if args.list else 10
    options = storage_options(args)
    report = verify_store(args.store, storage_options=options, progress=not args.quiet)
    print(
        f"label map store {report.path}: format {report.format_version}, {report.samples:,} "
        f"samples, {report.shards:,} shard files read"
        + (" (no chunk checksums in format 1)" if report.format_version < 2 else "")
    )
    _listed(
        "damaged shards" if len(report.problems) != 1 else "damaged shard",
        [f"{p.kind:<11} {p.path} ({p.detail})" for p in report.problems],
        shown,
    )
    ok = report.ok
    if args.images is not None:
        from dali_relabel.labelmaps import verify_keys
        from dali_relabel.store import LabelMapStore

        keys = verify_keys(LabelMapStore.open(args.store, storage_options=options), args.images)
        print(f"{keys.images:,} images under {args.images}, {keys.maps:,} label maps in the store")
        _listed("images without a label map", keys.without_map, shown)
        _listed("maps without an image", keys.without_image, shown)
        ok = ok and keys.ok
    return 0 if ok else 1


def _rewrite(args) -> int:
    from dali_relabel.store import rewrite

    store = rewrite(args.store, args.out, progress=not args.quiet)
    print(f"wrote {len(store):,} label maps in format {store.format_version} to {store.path}")
    return 0


def _report(args) -> int:
    import json

    from dali_relabel.labelmaps import label_map_report
    from dali_relabel.store import LabelMapStore

    store = LabelMapStore.open(args.store, storage_options=storage_options(args))
    report = label_map_report(
        store, args.images, samples=args.samples, seed=args.seed, progress=True
    )
    print(report.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.out:
        from dali_relabel.tools import draw_report

        draw_report(report, args.out)
        print(f"wrote {args.out}")
    return 0


def print_headline(store, images) -> None:
    """The report's headline figures after a store is written, and the warning when flat.

    Args:
        store: the finished store.
        images: its image folder, or None (no folder agreement).
    """
    from dali_relabel.errors import DaliRelabelError
    from dali_relabel.labelmaps import label_map_report

    try:
        report = label_map_report(store, images)
    except (DaliRelabelError, OSError) as e:  # the store is written: say so, not fail
        print(f"note: no report of the store ({e}); run `dali-relabel report`", file=sys.stderr)
        return
    print(report.headline())
    warning = report.warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
