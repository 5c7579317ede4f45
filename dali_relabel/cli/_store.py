"""Verbs that look at a label-map store: ``info``, ``verify``."""

from __future__ import annotations

__all__ = ["add_commands"]


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a summary of a label map store")
    p.add_argument("store")
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "verify",
        help="compare a store's keys with an image folder",
        description="Report images without a label map and label maps without an image. "
        "Exit status 1 when there are any.",
    )
    p.add_argument("store")
    p.add_argument("--images", required=True, help="ImageFolder tree (e.g. imagenet/train)")
    p.add_argument("--list", action="store_true", help="list every mismatch, not the first 10")
    p.set_defaults(func=_verify)


def _info(args) -> int:
    from dali_relabel.store import LabelMapStore

    print(LabelMapStore.open(args.store, allow_incomplete=True).summary())
    return 0


def _verify(args) -> int:
    from dali_relabel.labelmaps import verify_keys

    report = verify_keys(args.store, args.images)
    shown = None if args.list else 10
    print(
        f"{report.images:,} images under {args.images}, {report.maps:,} label maps in {args.store}"
    )
    for title, keys in (
        ("images without a label map", report.without_map),
        ("maps without an image", report.without_image),
    ):
        print(f"{len(keys):,} {title}")
        for key in keys[:shown]:
            print(f"  {key}")
        if shown is not None and len(keys) > shown:
            print(f"  ... {len(keys) - shown:,} more (--list shows all)")
    return 0 if report.ok else 1
