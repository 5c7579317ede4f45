"""What a store passes when it is opened, whatever it is opened for (docs/FORMAT.md).

The group's ``zarr.json`` read and parsed here (a damaged one is named), the format and
its version, every attribute checked for type and range (:mod:`._format`) and against
the arrays' own metadata, and, for a finished format-2 store, every shard file present
(a ``stat`` each on disk, one LIST on S3). A format-1 store passes with a one-line note.
Stores are local paths or ``s3://`` URLs; any other URL is refused here, by name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dali_relabel.errors import (
    DaliRelabelWarning,
    StoreCorruptError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
)
from dali_relabel.store._format import (
    ARRAYS,
    READABLE_VERSIONS,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    check_arrays,
    check_attributes,
    check_location,
    legacy_note,
    local_path,
    shard_count,
)
from dali_relabel.store._io import missing_shards, read_document
from dali_relabel.store._s3 import S3Location, is_s3

__all__ = ["checked_attributes", "read_attributes"]


def read_attributes(
    path: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The group attributes of the store at ``path`` (parsed by this module, so that a
    damaged ``zarr.json`` is named); None when there is no ``zarr.json``.

    Raises StoreMismatchError when the folder holds a Zarr document that is not a group.
    """
    doc = read_document(path, "zarr.json", storage_options)
    if doc is None:
        return None
    if doc.get("node_type") != "group" or doc.get("zarr_format") != 3:
        raise StoreMismatchError(
            f"{path!r} is not a Zarr v3 group (zarr.json says zarr_format="
            f"{doc.get('zarr_format')!r}, node_type={doc.get('node_type')!r}); a label map store "
            "is one"
        )
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        raise StoreCorruptError(
            f"{path}/zarr.json: attributes are a {type(attrs).__name__}, not an object",
            path=f"{path}/zarr.json",
        )
    return attrs


def _check_version(attrs: Mapping[str, Any], path: str) -> int:
    if attrs.get("format") != STORE_FORMAT:
        raise StoreMismatchError(
            f"{path!r} is a Zarr group but not a dali_relabel label map store "
            f"(attribute format={attrs.get('format')!r}, expected {STORE_FORMAT!r})"
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreMismatchError(
            f"label map store {path!r}: attribute format_version={version!r} is not an integer; "
            "the store's zarr.json was edited or damaged. Restore it, or write the store again"
        )
    if version > STORE_FORMAT_VERSION:
        raise StoreMismatchError(
            f"label map store {path!r} has format_version={version}, newer than this "
            f"dali_relabel reads ({STORE_FORMAT_VERSION}); upgrade dali_relabel"
        )
    if version not in READABLE_VERSIONS:
        raise StoreMismatchError(
            f"label map store {path!r} has format_version={version}; this dali_relabel reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return version


def checked_attributes(
    path_or_url: str | os.PathLike,
    *,
    allow_incomplete: bool,
    storage_options: Mapping[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    """(path, attributes) of the store at ``path_or_url`` once it passed every check at
    open; a local path is made absolute (a later chdir must not move the store), an S3
    URL written ``s3://bucket/path`` (no trailing slash)."""
    path = check_location(str(path_or_url))
    if is_s3(path):
        path = S3Location.parse(path, storage_options).url
    else:
        where = Path(local_path(path))
        if not (where / "zarr.json").is_file():
            what = "does not exist" if not where.exists() else "has no zarr.json"
            raise StoreNotFoundError(
                f"label map store {path!r} {what}; create one with `dali-relabel convert` "
                "or `dali-relabel generate`"
            )
        # Absolute from here on: a later chdir must not move the store.
        path = str(where.resolve())
    attrs = read_attributes(path, storage_options)
    if attrs is None:
        raise StoreNotFoundError(
            f"no label map store at {path!r} (no zarr.json); create one with `dali-relabel "
            "convert`" + (" or check the URL and the endpoint" if is_s3(path) else "")
        )
    version = _check_version(attrs, path)
    check_attributes(attrs, path)
    if not attrs["complete"] and not allow_incomplete:
        raise StoreIncompleteError(
            f"label map store {path!r} is incomplete: its writing was interrupted. Run the "
            "same `dali-relabel convert`/`generate` command again to finish it"
        )
    metadata = {}
    for name in (*ARRAYS, "keys"):
        doc = read_document(path, f"{name}/zarr.json", storage_options)
        if doc is None:
            raise StoreCorruptError(
                f"label map store {path!r} has no {name} array ({path}/{name}/zarr.json is "
                "missing): an incomplete copy? Copy the store again, or write it again",
                path=f"{path}/{name}/zarr.json",
                kind="missing",
            )
        metadata[name] = doc
    check_arrays(attrs, metadata, path)
    if version >= 2 and attrs["complete"] and not allow_incomplete:
        missing = missing_shards(path, shard_count(attrs), storage_options)
        if missing:
            raise StoreCorruptError(
                f"label map store {path!r}: {len(missing):,} of {2 * shard_count(attrs):,} "
                f"shard files are missing (first: {missing[0]}): an incomplete copy? Copy "
                "the store again; `dali-relabel verify` lists every damaged shard",
                path=missing[0],
                kind="missing",
            )
    if version < STORE_FORMAT_VERSION:
        warnings.warn(legacy_note(path), DaliRelabelWarning, stacklevel=3)
    return path, attrs
