"""The store's files: metadata documents, tensorstore arrays, and damage named by file.

Three jobs that the reader, the writer and verify share:

- the ``zarr.json`` documents are read and parsed here, not by a library, so that a
  truncated or invalid one is named by its path (neither zarr-python nor tensorstore
  names it), and the group's document is written atomically (a temporary file renamed
  over it): a kill can never leave half a document;
- the map arrays are opened with tensorstore, strictly for format 2
  (``fill_missing_data_reads: false``: a missing shard or chunk raises instead of
  reading zeros) and storing every chunk (``store_data_equal_to_fill_value: true``);
- tensorstore's errors (``NOT_FOUND``, ``DATA_LOSS``, ``FAILED_PRECONDITION``) become
  :class:`~dali_relabel.errors.StoreCorruptError` naming the shard file, and, for
  zarr-python (URL stores), which reads missing chunks as the fill value without a
  word, the shard indexes are checked before their data is read
  (:func:`check_shard_index`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from dali_relabel.errors import StoreCorruptError
from dali_relabel.store._format import ARRAYS, is_url, local_path

__all__ = [
    "check_shard_index",
    "corrupt_error",
    "describe_error",
    "missing_shards",
    "open_group",
    "open_tensorstores",
    "read_document",
    "shard_key",
    "short_detail",
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
# An empty entry of a shard index (offset and length 2**64 - 1): a chunk not written.
_EMPTY = np.uint64(2**64 - 1)


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
    try:
        if is_url(root):
            import fsspec

            fs, path = fsspec.core.url_to_fs(where, **dict(storage_options or {}))
            raw = fs.cat_file(path)
        else:
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


def open_group(path: str, mode: str, storage_options: Mapping[str, Any] | None = None):
    """The store's Zarr group (zarr-python), from a local path or an fsspec URL."""
    import zarr

    kwargs: dict[str, Any] = {"mode": mode}
    if storage_options:
        kwargs["storage_options"] = dict(storage_options)
    return zarr.open_group(path if is_url(path) else local_path(path), **kwargs)


# -- tensorstore -----------------------------------------------------------------------------
def open_tensorstores(ts: Any, root: str, *, write: bool, strict: bool = True) -> tuple[Any, Any]:
    """The (scores, classes) arrays of the local store at ``root``, opened by tensorstore.

    Args:
        ts: the tensorstore module.
        root: the store's folder.
        write: open for writing too; writes store every chunk, also one of zeros.
        strict: a missing shard or chunk raises (format 2); False reads it as zeros
            (format 1, which did not store all-zero chunks).
    """
    arrays = []
    for name in ARRAYS:
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": f"{root}/{name}"},
            "fill_missing_data_reads": not strict,
            "store_data_equal_to_fill_value": True,
        }
        try:
            arrays.append(ts.open(spec, read=True, write=write).result())
        except ValueError as e:
            raise corrupt_error(e, root) or e from None
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


def describe_error(error: BaseException) -> tuple[str, str, str] | None:
    """(kind, file, detail) of a tensorstore read error about missing or damaged data
    (kind "missing", "corrupt" or "undecodable"), or None for any other error."""
    text = str(error)
    kind = _KINDS.get(text.split(":", 1)[0])
    if kind is None:
        return None
    found = _WHERE.search(text)
    path = found.group(1) if found else ""
    detail = short_detail(text)
    if kind == "missing" and path.startswith("/"):
        # tensorstore says the same of a missing file and of a chunk missing in one
        detail = "one of its chunks is missing" if os.path.isfile(path) else "the file is missing"
    return kind, path, detail


def corrupt_error(error: BaseException, root: str) -> StoreCorruptError | None:
    """``error`` (tensorstore's ValueError) as a StoreCorruptError naming the damaged file,
    or None when it is not about missing or damaged data."""
    described = describe_error(error)
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


# -- shard files -----------------------------------------------------------------------------
def shard_key(name: str, shard: int) -> str:
    """The key of shard ``shard`` of array ``name`` (one shard per sample range)."""
    return f"{name}/c/{shard}/0/0/0"


def missing_shards(root: str, shards: int) -> list[str]:
    """The shard files of a local store's map arrays that do not exist (a ``stat`` each:
    ImageNet's 2,504 in a few milliseconds); an incomplete copy shows here before any
    read. Empty for URLs (their shards are checked as they are read)."""
    if is_url(root):
        return []
    base = local_path(root)
    return [
        path
        for name in ARRAYS
        for shard in range(shards)
        if not os.path.isfile(path := f"{base}/{shard_key(name, shard)}")
    ]


# -- zarr-python ---------------------------------------------------------------------------
def check_shard_index(
    array: Any, shard: int, *, samples: int, shard_size: int, chunks: bool
) -> tuple[str, str] | None:
    """(kind, detail) of what keeps shard ``shard`` of a zarr-python ``array`` from being
    read whole, or None when its index is sound.

    zarr-python reads a missing shard, or a chunk missing from a shard, as the fill value
    without a word; this reads the shard's index only (16 bytes per chunk and a crc32c,
    a byte-range request that works on fsspec URLs too) and finds both. kind is
    "missing" (the file, or with ``chunks`` some of its chunks) or "corrupt" (cut short,
    or an index whose checksum does not match).
    """
    import google_crc32c
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = array.store_path.store
    key = f"{array.store_path.path}/c/{shard}/0/0/0"
    size = 16 * shard_size + 4
    buf = sync(store.get(key, default_buffer_prototype(), SuffixByteRequest(size)))
    if buf is None:
        return "missing", "missing"
    raw = buf.to_bytes()
    if len(raw) < size:
        return "corrupt", f"cut short ({len(raw):,} bytes; its index alone takes {size:,})"
    if np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        return "corrupt", "damaged (its index checksum does not match)"
    if chunks:
        offsets = np.frombuffer(raw[:-4], "<u8").reshape(shard_size, 2)[:, 0]
        present = min(shard_size, samples - shard * shard_size)
        empty = np.flatnonzero(offsets[:present] == _EMPTY)
        if len(empty):
            first = shard * shard_size + int(empty[0])
            return "missing", f"missing {len(empty):,} of its chunks (first: sample {first})"
    return None
