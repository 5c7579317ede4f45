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
    from dali_relabel.imagefolder import scan_image_folder
    from dali_relabel.store import LabelMapStore

    store = LabelMapStore.open(args.store)
    images = {key for key, _ in scan_image_folder(args.images)}
    maps = set(store.keys)
    no_map = sorted(images - maps)
    no_image = sorted(maps - images)
    shown = None if args.list else 10
    print(f"{len(images):,} images under {args.images}, {len(maps):,} label maps in {args.store}")
    for title, keys in (
        ("images without a label map", no_map),
        ("maps without an image", no_image),
    ):
        print(f"{len(keys):,} {title}")
        for key in keys[:shown]:
            print(f"  {key}")
        if shown is not None and len(keys) > shown:
            print(f"  ... {len(keys) - shown:,} more (--list shows all)")
    return 1 if no_map or no_image else 0
