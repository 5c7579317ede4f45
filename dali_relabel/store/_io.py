"""The store's files: metadata documents, tensorstore arrays, and damage named by file.

Three jobs that the reader, the writer and verify share, for local stores and stores on
S3 (:mod:`._s3`) alike:

- the ``zarr.json`` documents are read and parsed here, not by a library, so that a
  truncated or invalid one is named by its path (neither zarr-python nor tensorstore
  names it), and the group's document is written atomically (a temporary file renamed
  over it): a kill can never leave half a document;
- the map arrays are opened with tensorstore (the ``file`` or the ``s3`` kvstore),
  strictly for format 2 (``fill_missing_data_reads: false``: a missing shard or chunk
  raises instead of reading zeros) and storing every chunk
  (``store_data_equal_to_fill_value: true``);
- tensorstore's errors (``NOT_FOUND``, ``DATA_LOSS``, ``FAILED_PRECONDITION``) become
  :class:`~dali_relabel.errors.StoreCorruptError` naming the shard file or object, and
  a store on S3 that cannot be reached a
  :class:`~dali_relabel.errors.StorageAccessError`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from dali_relabel.errors import StorageAccessError, StoreCorruptError
from dali_relabel.store._format import ARRAYS, local_path
from dali_relabel.store._s3 import S3Location, is_s3

__all__ = [
    "corrupt_error",
    "describe_error",
    "local_fingerprint",
    "missing_shards",
    "open_group",
    "open_tensorstores",
    "read_document",
    "shard_key",
    "short_detail",
    "store_error",
    "write_group_document",
]

# Where tensorstore's messages name the file: `local file "<path>"`, s3 `in "<key>"`.
_WHERE = re.compile(r'(?:local file|in|reading) "([^"]+)"')
_KINDS = {
    "NOT_FOUND": "missing",
    "DATA_LOSS": "corrupt",
    "OUT_OF_RANGE": "corrupt",
    "FAILED_PRECONDITION": "undecodable",
}


# -- documents -----------------------------------------------------------------------------
def _join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}"


def read_document(
    root: str, key: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The JSON document ``root/key`` parsed, or None when there is no such file.

    Raises StoreCorruptError naming the file when it is not a JSON object.
    """
    where = _join(root, key)
    if is_s3(root):
        raw = S3Location.parse(root, storage_options).get(key)
        if raw is None:
            return None
    else:
        try:
            with open(local_path(where), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        size = f"{len(raw):,} bytes"
        raise StoreCorruptError(
            f"{where} is not valid JSON ({size}, {e}): the file was cut short or damaged. "
            "Restore it from a good copy of the store, or write the store again",
            path=where,
        ) from None
    if not isinstance(doc, dict):
        raise StoreCorruptError(
            f"{where} holds a JSON {type(doc).__name__}, not an object: not a Zarr document",
            path=where,
        )
    return doc


def write_group_document(root: str, attributes: Mapping[str, Any]) -> None:
    """Write the group's ``zarr.json`` with ``attributes`` atomically (rename over it)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".zarr.json.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, "zarr.json"))


def open_group(path: str, mode: str):
    """The Zarr group (zarr-python) of the local store at ``path``."""
    import zarr

    return zarr.open_group(local_path(path), mode=mode)


# -- tensorstore -----------------------------------------------------------------------------
def open_tensorstores(
    ts: Any,
    root: str,
    *,
    write: bool,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The (scores, classes) arrays of the store at ``root``, opened by tensorstore.

    Args:
        ts: the tensorstore module.
        root: the store's folder, or its ``s3://`` URL.
        write: open for writing too; writes store every chunk, also one of zeros.
        strict: a missing shard or chunk raises (format 2); False reads it as zeros
            (format 1, which did not store all-zero chunks).
        storage_options: S3 options (:mod:`._s3`). Default: None.
    """
    location = S3Location.parse(root, storage_options) if is_s3(root) else None
    arrays = []
    for name in ARRAYS:
        kvstore = (
            location.kvstore(name)
            if location is not None
            else {"driver": "file", "path": f"{local_path(root)}/{name}"}
        )
        spec = {
            "driver": "zarr3",
            "kvstore": kvstore,
            "fill_missing_data_reads": not strict,
            "store_data_equal_to_fill_value": True,
        }
        try:
            arrays.append(ts.open(spec, read=True, write=write).result())
        except ValueError as e:
            raise store_error(e, root, storage_options) or e from None
    return tuple(arrays)


def short_detail(text: str) -> str:
    """What a tensorstore or zarr-python error about damaged data says, in a few words."""
    if "is missing" in text:
        return "missing"
    if "Digest mismatch" in text or "checksum do not match" in text:
        return "checksum mismatch"
    if "size of 0 bytes" in text:
        return "the file is empty"
    if "Error decoding shard index" in text:
        return "the shard index does not decode (the file was cut short or damaged)"
    if "ZSTD" in text or "zstd" in text:
        return "a chunk does not decompress"
    if "Invalid JSON" in text:
        return "not valid JSON"
    return text.rsplit(": ", 1)[-1][:120]


def describe_error(
    error: BaseException, root: str = "", storage_options: Mapping[str, Any] | None = None
) -> tuple[str, str, str] | None:
    """(kind, file, detail) of a tensorstore read error about missing or damaged data
    (kind "missing", "corrupt" or "undecodable"), or None for any other error. The file
    of a store on S3 (``root`` an ``s3://`` URL) is the object's ``s3://`` URL."""
    text = str(error)
    kind = _KINDS.get(text.split(":", 1)[0])
    if kind is None:
        return None
    found = _WHERE.search(text)
    path = found.group(1) if found else ""
    detail = short_detail(text)
    if is_s3(root) and path:
        # tensorstore names the object's key in the bucket
        location = S3Location.parse(root, storage_options)
        if kind == "missing":
            present = location.exists(path[len(location.prefix) + 1 :])
            detail = "one of its chunks is missing" if present else "the object is missing"
        path = location.url_of_key(path)
    elif kind == "missing" and path.startswith("/"):
        # tensorstore says the same of a missing file and of a chunk missing in one
        detail = "one of its chunks is missing" if os.path.isfile(path) else "the file is missing"
    return kind, path, detail


# What tensorstore says when S3 cannot be reached or refuses a request.
_UNREACHABLE = ("ABORTED", "UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED", "DEADLINE")


def store_error(
    error: BaseException, root: str, storage_options: Mapping[str, Any] | None = None
) -> StoreCorruptError | StorageAccessError | None:
    """``error`` (tensorstore's ValueError) as the library's error: StoreCorruptError
    naming the damaged file, StorageAccessError for a store on S3 that cannot be read;
    None when it is neither."""
    if is_s3(root) and str(error).startswith(_UNREACHABLE):
        location = S3Location.parse(root, storage_options)
        return StorageAccessError(
            f"label map store {root} cannot be read from {location.endpoint or 'AWS'} "
            f"(region {location.region}): {short_detail(str(error))}. Check the endpoint "
            "(AWS_ENDPOINT_URL or storage option endpoint_url), the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile) and the network"
        )
    return corrupt_error(error, root, storage_options)


def corrupt_error(
    error: BaseException, root: str, storage_options: Mapping[str, Any] | None = None
) -> StoreCorruptError | None:
    """``error`` (tensorstore's ValueError) as a StoreCorruptError naming the damaged file,
    or None when it is not about missing or damaged data."""
    described = describe_error(error, root, storage_options)
    if described is None:
        return None
    kind, path, detail = described
    path = path or root
    return StoreCorruptError(
        f"label map store {root}: {path} is {kind} ({detail}). Run `dali-relabel "
        f"verify {root}` to list every damaged shard; restore the store from a good copy or "
        "write it again",
        path=path,
        kind=kind,
    )


def local_fingerprint(root: str) -> list[str]:
    """What a copy of a local store's table depends on, in lines: the digests of the
    group's and the map arrays' ``zarr.json`` and ``path, size, mtime_ns`` of every shard
    file (ImageNet's 2,504 in about 0.1 s); the S3 version is
    :meth:`S3Location.fingerprint`."""
    import hashlib

    base = local_path(root)
    lines = []
    for rel in ("zarr.json", *(f"{name}/zarr.json" for name in ARRAYS)):
        with open(os.path.join(base, rel), "rb") as f:
            lines.append(f"{rel}\0{hashlib.sha256(f.read()).hexdigest()}")
    entries = []
    for name in ARRAYS:
        stack = [os.path.join(base, name, "c")]
        while stack:
            try:
                it = os.scandir(stack.pop())
            except FileNotFoundError:
                continue  # an empty store has no shard folder
            with it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        st = entry.stat()
                        rel = entry.path[len(base) + 1 :]
                        entries.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    return lines + sorted(entries)


# -- shard files -----------------------------------------------------------------------------
def shard_key(name: str, shard: int) -> str:
    """The key of shard ``shard`` of array ``name`` (one shard per sample range)."""
    return f"{name}/c/{shard}/0/0/0"


def missing_shards(
    root: str, shards: int, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The shard files of a store's map arrays that do not exist: a ``stat`` each on a
    local disk (ImageNet's 2,504 in a few milliseconds), one LIST on S3; an incomplete
    copy shows here before any read."""
    if is_s3(root):
        location = S3Location.parse(root, storage_options)
        listing = location.listing()
        return [
            f"{location.url}/{key}"
            for name in ARRAYS
            for shard in range(shards)
            if (key := shard_key(name, shard)) not in listing
        ]
    base = local_path(root)
    return [
        path
        for name in ARRAYS
        for shard in range(shards)
        if not os.path.isfile(path := f"{base}/{shard_key(name, shard)}")
    ]
