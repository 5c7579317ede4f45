"""The label-map store's format (version 1, docs/FORMAT.md): schema, dtypes and paths.

What the reader and the writer share: the group's attributes and their checks, the
dtypes of the two map arrays, how paths and URLs are told apart and how the local
arrays are opened with tensorstore.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError

__all__ = [
    "ARRAYS",
    "DEFAULT_SHARD_SIZE",
    "SCORE_DTYPES",
    "SCORE_KINDS",
    "STORE_FORMAT",
    "STORE_FORMAT_VERSION",
    "attributes",
    "class_dtype_for",
    "is_url",
    "local_path",
    "open_group",
    "open_tensorstores",
]

#: The ``format`` attribute that identifies a label-map store.
STORE_FORMAT = "dali_relabel.label_maps"
#: The format version this library writes and the newest it reads.
STORE_FORMAT_VERSION = 1
#: What the scores are: the teacher's logits (the paper) or probabilities.
SCORE_KINDS = ("logits", "probabilities")
#: dtypes the scores may be stored in.
SCORE_DTYPES = ("float16", "float32")
#: Samples per shard (one file) and per writer block.
DEFAULT_SHARD_SIZE = 1024
#: The two map arrays, [N, k, H, W] each.
ARRAYS = ("scores", "classes")


def class_dtype_for(num_classes: int) -> np.dtype:
    """int16 while class indices fit in it, else int32."""
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def is_url(path: str) -> bool:
    """True for fsspec URLs (``s3://``, ``memory://``); ``file://`` counts as a local path."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _keys_digest(keys: Sequence[str]) -> str:
    h = hashlib.sha256()
    for key in keys:
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()


def _check_params(
    num_classes: int,
    k: int,
    grid: Sequence[int],
    score_dtype: str,
    score_kind: str,
    shard_size: int,
    class_names: Sequence[str] | None,
) -> None:
    _checks.positive_int("num_classes", num_classes)
    if not 1 <= int(k) <= int(num_classes):
        raise ArgumentError(f"k must be in [1, num_classes={num_classes}], got {k}")
    if len(tuple(grid)) != 2 or min(int(v) for v in grid) < 1:
        raise ArgumentError(f"grid must be (H, W) with H, W >= 1, got {grid}")
    _checks.one_of("score_dtype", score_dtype, SCORE_DTYPES)
    _checks.one_of("score_kind", score_kind, SCORE_KINDS)
    _checks.positive_int("shard_size", shard_size)
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
) -> dict[str, Any]:
    """The group attributes of a store of these parameters (all but ``complete``)."""
    _check_params(num_classes, k, grid, score_dtype, score_kind, shard_size, class_names)
    h, w = (int(v) for v in grid)
    return {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "num_samples": len(keys),
        "num_classes": int(num_classes),
        "k": int(k),
        "grid": [h, w],
        "score_kind": score_kind,
        "score_dtype": score_dtype,
        "class_dtype": class_dtype_for(num_classes).name,
        "layout": layout,
        "shard_size": int(shard_size),
        "keys_sha256": _keys_digest(keys),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "provenance": dict(provenance or {}),
    }


def open_tensorstores(ts: Any, root: str, *, write: bool) -> tuple[Any, Any]:
    """The (scores, classes) arrays of the local store at ``root``, opened by tensorstore."""
    return tuple(
        ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{root}/{name}"}},
            read=True,
            write=write,
        ).result()
        for name in ARRAYS
    )


def open_group(path: str, mode: str, storage_options: Mapping[str, Any] | None = None):
    """The store's Zarr group (zarr-python), from a local path or an fsspec URL."""
    import zarr

    kwargs: dict[str, Any] = {"mode": mode}
    if storage_options:
        kwargs["storage_options"] = dict(storage_options)
    return zarr.open_group(path if is_url(path) else local_path(path), **kwargs)
