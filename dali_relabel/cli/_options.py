"""Arguments that several verbs share: ``--storage-option KEY=VALUE`` for stores on S3."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_storage_options", "storage_options"]


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--storage-option KEY=VALUE`` (repeatable) to a verb that reads or writes a store."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="for s3:// stores: endpoint_url, region, profile, anonymous, requester_pays, "
        "max_retries (repeat for several); unset ones come from AWS_ENDPOINT_URL, "
        "AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, ... (docs/STORAGE.md)",
    )


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--storage-option`` values as a dict (None when none was given)."""
    from dali_relabel.store import parse_storage_option

    pairs = [parse_storage_option(text) for text in args.storage_option]
    return dict(pairs) or None
