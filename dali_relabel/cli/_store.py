"""Verbs that look at a label-map store: ``info``, ``verify``, ``rewrite``."""

from __future__ import annotations

__all__ = ["add_commands"]


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a summary of a label map store")
    p.add_argument("store")
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "verify",
        help="read every chunk of a store; with --images, compare its keys with a folder",
        description="Read every chunk of the store, shard by shard, and report each missing "
        "or damaged shard file by its path (format 2 checks every chunk's crc32c). With "
        "--images, also report images without a label map and label maps without an image. "
        "Exit status 1 when anything is wrong.",
    )
    p.add_argument("store")
    p.add_argument("--images", help="ImageFolder tree (e.g. imagenet/train) to compare keys with")
    p.add_argument("--list", action="store_true", help="list every problem, not the first 10")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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


def _info(args) -> int:
    from dali_relabel.store import LabelMapStore, missing_shard_files

    store = LabelMapStore.open(args.store, allow_incomplete=True)
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
    report = verify_store(args.store, progress=not args.quiet)
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

        keys = verify_keys(args.store, args.images)
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
