"""The label-map store's format (version 2, docs/FORMAT.md): schema, dtypes and checks.

What the reader and the writer share: the group's attributes, the dtypes and codecs of
the two map arrays, and the checks a store passes when it is opened: every attribute of
the right type and range, and the attributes in agreement with the arrays' own metadata
(shape, dtype, chunking, checksums). Version 2 adds a crc32c checksum to every chunk
(Zarr v3's ``crc32c`` codec, last of the chunk codecs; the shard index had one already)
and stores every chunk, also one equal to the fill value, so that a reader can refuse a
missing chunk instead of reading zeros. Version-1 stores are read, not written.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError, StoreMismatchError

__all__ = [
    "ARRAYS",
    "DEFAULT_SHARD_SIZE",
    "READABLE_VERSIONS",
    "SCORE_DTYPES",
    "SCORE_KINDS",
    "SOURCES",
    "SOURCE_CHECKS",
    "STORE_FORMAT",
    "STORE_FORMAT_VERSION",
    "attributes",
    "attributes_digest",
    "check_arrays",
    "check_attributes",
    "check_location",
    "class_dtype_for",
    "is_url",
    "keys_digest",
    "legacy_note",
    "local_path",
    "shard_count",
    "source_shape",
]

#: The ``format`` attribute that identifies a label-map store.
STORE_FORMAT = "dali_relabel.label_maps"
#: The format version this library writes.
STORE_FORMAT_VERSION = 2
#: The format versions this library reads (version 1: read-only, no chunk checksums).
READABLE_VERSIONS = (1, 2)
#: What the scores are: the teacher's logits (the paper) or probabilities.
SCORE_KINDS = ("logits", "probabilities")
#: dtypes the scores may be stored in.
SCORE_DTYPES = ("float16", "float32")
#: Samples per shard (one file) and per writer block.
DEFAULT_SHARD_SIZE = 1024
#: The two map arrays, [N, k, H, W] each.
ARRAYS = ("scores", "classes")
#: The optional array recording what each sample's source file was when it was read.
SOURCES = "sources"
#: How sources are recorded: (size, mtime_ns) int64 [N, 2], or a sha256 uint8 [N, 32].
SOURCE_CHECKS = ("stat", "sha256")


def class_dtype_for(num_classes: int) -> np.dtype:
    """int16 while class indices fit in it, else int32."""
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def source_shape(check: str) -> tuple[int, str]:
    """Columns and dtype of the sources array for ``check`` ("stat" or "sha256")."""
    return (2, "int64") if check == "stat" else (32, "uint8")


def is_url(path: str) -> bool:
    """True for URLs (``s3://``, ...); ``file://`` counts as a local path."""
    return "://" in path and not path.startswith("file://")


def check_location(path: str) -> str:
    """``path`` when it is a place a store can be: a local path (``file://`` too) or an
    ``s3://`` URL; an error naming it otherwise."""
    if is_url(path) and not path.startswith("s3://"):
        scheme = path.split("://", 1)[0]
        raise ArgumentError(
            f"label map store {path!r}: {scheme}:// is not supported; a store is a local path "
            "or an S3 URL (s3://bucket/path.zarr, also for S3-compatible servers through "
            "AWS_ENDPOINT_URL); copy it to one of those"
        )
    return path


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def keys_digest(keys: Sequence[str]) -> str:
    """The ``keys_sha256`` attribute of these keys."""
    # One update over "key\n" for every key: the same digest as one update per key, at
    # C speed (1.28 M keys in a few tens of milliseconds).
    text = "".join(f"{key}\n" for key in keys)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_params(
    num_classes: int,
    k: int,
    grid: Sequence[int],
    score_dtype: str,
    score_kind: str,
    shard_size: int,
    class_names: Sequence[str] | None,
    sources: str | None,
) -> None:
    _checks.positive_int("num_classes", num_classes)
    if not 1 <= int(k) <= int(num_classes):
        raise ArgumentError(f"k must be in [1, num_classes={num_classes}], got {k}")
    if len(tuple(grid)) != 2 or min(int(v) for v in grid) < 1:
        raise ArgumentError(f"grid must be (H, W) with H, W >= 1, got {grid}")
    _checks.one_of("score_dtype", score_dtype, SCORE_DTYPES)
    _checks.one_of("score_kind", score_kind, SCORE_KINDS)
    _checks.positive_int("shard_size", shard_size)
    if sources is not None:
        _checks.one_of("sources", sources, SOURCE_CHECKS)
    if class_names is not None and len(class_names) != int(num_classes):
        raise ArgumentError(
            f"class_names must have num_classes={num_classes} entries, got {len(class_names)}"
        )


def attributes(
    keys: Sequence[str],
    *,
    num_classes: int,
    k: int,
    grid: Sequence[int],
    score_dtype: str,
    score_kind: str,
    class_names: Sequence[str] | None,
    provenance: Mapping[str, Any] | None,
    layout: str,
    shard_size: int,
    sources: str | None = None,
    format_version: int = STORE_FORMAT_VERSION,
) -> dict[str, Any]:
    """The group attributes of a store of these parameters (all but ``complete``)."""
    _check_params(num_classes, k, grid, score_dtype, score_kind, shard_size, class_names, sources)
    h, w = (int(v) for v in grid)
    attrs = {
        "format": STORE_FORMAT,
        "format_version": int(format_version),
        "num_samples": len(keys),
        "num_classes": int(num_classes),
        "k": int(k),
        "grid": [h, w],
        "score_kind": score_kind,
        "score_dtype": score_dtype,
        "class_dtype": class_dtype_for(num_classes).name,
        "layout": layout,
        "shard_size": int(shard_size),
        "keys_sha256": keys_digest(keys),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "provenance": dict(provenance or {}),
    }
    if sources is not None:
        attrs["sources"] = sources
    if format_version >= 2:
        attrs["attributes_sha256"] = attributes_digest(attrs)
    return attrs


def attributes_digest(attrs: Mapping[str, Any]) -> str:
    """The ``attributes_sha256`` attribute: a digest of every attribute but ``complete``
    (which a writer changes) and itself, so that an edited attribute is found (format 2)."""
    covered = {n: v for n, v in attrs.items() if n not in ("complete", "attributes_sha256")}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- checks at open ------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(where: str, name: str, value: Any, expected: str) -> StoreMismatchError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return StoreMismatchError(
        f"label map store {where!r}: attribute {name}={shown} is not {expected}; the store's "
        "zarr.json was edited or damaged. Restore it, or write the store again"
    )


def check_attributes(attrs: Mapping[str, Any], where: str) -> None:
    """Every attribute a reader relies on has the right type and range.

    ``format`` and ``format_version`` are checked by the caller (they decide whether
    this is a store at all, and of which version).
    """
    if not isinstance(attrs.get("complete"), bool):
        raise _bad(where, "complete", attrs.get("complete"), "true or false (a JSON boolean)")
    for name in ("num_samples", "num_classes", "k", "shard_size"):
        value = attrs.get(name)
        low = 0 if name == "num_samples" else 1
        if not _is_int(value) or value < low:
            raise _bad(where, name, value, f"an integer >= {low}")
    if attrs["k"] > attrs["num_classes"]:
        raise _bad(where, "k", attrs["k"], f"at most num_classes={attrs['num_classes']}")
    grid = attrs.get("grid")
    if not isinstance(grid, list) or len(grid) != 2 or not all(_is_int(v) and v >= 1 for v in grid):
        raise _bad(where, "grid", grid, "[H, W] with two integers >= 1")
    for name, choices in (("score_dtype", SCORE_DTYPES), ("score_kind", SCORE_KINDS)):
        if attrs.get(name) not in choices:
            raise _bad(where, name, attrs.get(name), f"one of {', '.join(choices)}")
    expected_class = class_dtype_for(attrs["num_classes"]).name
    if attrs.get("class_dtype") not in ("int16", "int32") or (
        attrs["class_dtype"] == "int16" and expected_class == "int32"
    ):
        raise _bad(where, "class_dtype", attrs.get("class_dtype"), f"{expected_class} (or int32)")
    names = attrs.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != attrs["num_classes"]
        or not all(isinstance(n, str) for n in names)
    ):
        raise _bad(
            where,
            "class_names",
            names,
            f"null or a list of num_classes={attrs['num_classes']} strings",
        )
    if not isinstance(attrs.get("keys_sha256"), str):
        raise _bad(where, "keys_sha256", attrs.get("keys_sha256"), "a sha256 hex digest")
    if not isinstance(attrs.get("provenance", {}), dict):
        raise _bad(where, "provenance", attrs.get("provenance"), "a JSON object")
    if attrs.get("sources") is not None and attrs["sources"] not in SOURCE_CHECKS:
        raise _bad(where, "sources", attrs["sources"], f"null or one of {', '.join(SOURCE_CHECKS)}")


def _codecs(meta: Mapping[str, Any]) -> tuple[list[str], list[str], list[int]]:
    """(inner chunk codec names, shard index codec names, inner chunk shape) of an array."""
    for codec in meta.get("codecs", []):
        if isinstance(codec, dict) and codec.get("name") == "sharding_indexed":
            conf = codec.get("configuration", {})
            inner = [c.get("name") for c in conf.get("codecs", []) if isinstance(c, dict)]
            index = [c.get("name") for c in conf.get("index_codecs", []) if isinstance(c, dict)]
            return inner, index, list(conf.get("chunk_shape", []))
    return [], [], []


def check_arrays(attrs: Mapping[str, Any], metadata: Mapping[str, Any], where: str) -> None:
    """The attributes agree with the arrays' own metadata (``name -> zarr.json`` document).

    Shape ``[num_samples, k, H, W]``, dtypes, one sample per chunk, ``shard_size``
    samples per shard, and (format 2) crc32c last among the chunk codecs and the shard
    index codecs. ``keys`` must hold ``num_samples`` entries.
    """
    n, k, (h, w) = attrs["num_samples"], attrs["k"], attrs["grid"]
    version = attrs["format_version"]
    for name, dtype in (("scores", attrs["score_dtype"]), ("classes", attrs["class_dtype"])):
        meta = metadata[name]
        doc = f"{where}/{name}/zarr.json"
        shape = meta.get("shape")
        if shape != [n, k, h, w]:
            raise StoreMismatchError(
                f"label map store {where!r}: array {name} has shape {shape}, but the attributes "
                f"say [num_samples, k, H, W] = {[n, k, h, w]}; the attributes or {doc} were "
                "edited or damaged. Restore them, or write the store again"
            )
        if meta.get("data_type") != dtype:
            raise StoreMismatchError(
                f"label map store {where!r}: array {name} holds {meta.get('data_type')}, but the "
                f"attributes say {dtype}; restore {where}/zarr.json or {doc}, or write the store "
                "again"
            )
        inner, index, chunk = _codecs(meta)
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        shard = min(attrs["shard_size"], max(n, 1))
        if chunk != [1, k, h, w] or grid != [shard, k, h, w]:
            raise StoreMismatchError(
                f"label map store {where!r}: array {name} is chunked {chunk} in shards of {grid}, "
                f"expected [1, {k}, {h}, {w}] in shards of [{shard}, {k}, {h}, {w}] (shard_size="
                f"{attrs['shard_size']}); {doc} was edited or the store was not written by "
                "dali_relabel"
            )
        if version < 2 and ("crc32c" in inner or "attributes_sha256" in attrs):
            # format 1 reads missing data as zeros: a format-2 store must not pass as one
            raise StoreMismatchError(
                f"label map store {where!r} says format_version={version}, but it was written in "
                f"format 2 (array {name} has chunk checksums): its attributes were changed after "
                f"it was written; restore {where}/zarr.json from a good copy, or write the store "
                "again"
            )
        if version >= 2 and (not inner or inner[-1] != "crc32c" or "crc32c" not in index):
            raise StoreMismatchError(
                f"label map store {where!r} says format_version={version}, but array {name} has no "
                f"crc32c checksum (chunk codecs {inner}, index codecs {index}); {doc} was edited, "
                "or the store is of format 1 with an edited format_version"
            )
    keys = metadata.get("keys")
    if keys is not None and keys.get("shape") != [n]:
        raise StoreMismatchError(
            f"label map store {where!r}: array keys has shape {keys.get('shape')}, but "
            f"num_samples={n}; restore {where}/zarr.json, or write the store again"
        )
    if version >= 2 and attrs.get("attributes_sha256") != attributes_digest(attrs):
        raise StoreMismatchError(
            f"label map store {where!r}: its attributes were changed after it was written "
            f"(attributes_sha256 does not match them); restore {where}/zarr.json from a good "
            "copy, or write the store again"
        )


def shard_count(attrs: Mapping[str, Any]) -> int:
    """Shards (files) per map array."""
    n = attrs["num_samples"]
    return math.ceil(n / min(attrs["shard_size"], max(n, 1))) if n else 0


def legacy_note(where: str) -> str:
    """The one-line note shown when a format-1 store is opened."""
    return (
        f"label map store {where} is of format version 1 (no chunk checksums; missing data "
        f"reads as zeros): check it with `dali-relabel verify {where}`, or rewrite it in format "
        f"{STORE_FORMAT_VERSION} with `dali-relabel rewrite {where} NEW`"
    )
