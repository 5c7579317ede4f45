"""Compaction: a finished store rewritten without the rows of samples left out.

``dali-relabel generate --skip-bad-images`` writes every image's row, bad ones as zeros,
so that blocks keep their places and an interrupted run resumes; at the end
:func:`compact` rewrites the store without those rows and lists their keys in its
provenance (``skipped_images``). The rewrite goes to a sibling folder that replaces the
store by two renames; :func:`find_compacted` recognizes the result on a rerun, also
after a kill between the renames.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel.errors import DaliRelabelError
from dali_relabel.store._reader import LabelMapStore
from dali_relabel.store._writer import LabelMapWriter

__all__ = ["compact", "find_compacted"]

_COMPACTING = ".compacting"
_OLD = ".old"


def compact(
    out: str | Path, keys: Sequence[str], skipped: Collection[str], params: dict[str, Any]
) -> LabelMapStore:
    """Rewrite the store at ``out`` without the rows of ``skipped``, then swap it in.

    Args:
        out: the store, written for every key of ``keys`` (complete or not).
        keys: its keys, in sample order.
        skipped: the keys to leave out; they are recorded in the provenance.
        params: the :meth:`LabelMapWriter.create` parameters the store was written with.
    """
    out = Path(out)
    drop = set(skipped)
    keep = np.array([i for i, key in enumerate(keys) if key not in drop], dtype=np.int64)
    staging = LabelMapStore.open(out, allow_incomplete=True)
    tmp = out.with_name(out.name + _COMPACTING)
    provenance = {**params["provenance"], "skipped_images": sorted(drop)}
    writer = LabelMapWriter.create(
        tmp, [keys[i] for i in keep], **{**params, "provenance": provenance}
    )
    for start, stop in writer.missing_blocks():
        scores, classes = staging.read(keep[start:stop])
        writer.write_block(start, scores, classes)
    writer.finalize()
    old = out.with_name(out.name + _OLD)
    if old.exists():
        shutil.rmtree(old)  # left by a run killed while it removed it
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)
    return LabelMapStore.open(out)


def find_compacted(
    out: str | Path, keys: Sequence[str], params: dict[str, Any]
) -> LabelMapStore | None:
    """The store at ``out`` when an earlier run already compacted it with these parameters.

    Args:
        out: where the store is written.
        keys: the keys it was written for, skipped ones included.
        params: the :meth:`LabelMapWriter.create` parameters.
    """
    out = Path(out)
    tmp, old = out.with_name(out.name + _COMPACTING), out.with_name(out.name + _OLD)
    if not out.exists() and old.is_dir() and (tmp / "zarr.json").is_file():
        # A run killed between compact()'s two renames: the compacted store is finished.
        os.replace(tmp, out)
    if not (out / "zarr.json").is_file():
        return None
    try:
        store = LabelMapStore.open(out)
    except (DaliRelabelError, OSError):  # incomplete, or not a store: not a finished one
        return None
    prov = store.provenance
    skipped = prov.pop("skipped_images", None)
    if skipped is None or prov != params["provenance"]:
        return None
    if set(store.keys) | set(skipped) != set(keys) or store.k != params["k"]:
        return None
    # Parameters outside the provenance: another value makes the caller refuse the store.
    if store.score_dtype != np.dtype(params["score_dtype"]) or int(
        store.attrs.get("shard_size", -1)
    ) != int(params["shard_size"]):
        return None
    if old.exists():
        shutil.rmtree(old)
    return store
