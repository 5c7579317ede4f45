"""Rewriting a store: without the rows of samples left out (compaction), or in the
current format (``dali-relabel rewrite``).

``dali-relabel generate --skip-bad-images`` writes every image's row, bad ones as zeros,
so that blocks keep their places and an interrupted run resumes; at the end
:func:`compact` rewrites the store without those rows and lists their keys in its
provenance (``skipped_images``). The rewrite goes to a sibling folder that replaces the
store by two renames; :func:`find_compacted` recognizes the result on a rerun, also
after a kill between the renames. :func:`rewrite` copies a store (of format 1, say) into
a new one of the current format, checksums included, after reading every chunk of it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel.errors import DaliRelabelError, DaliRelabelWarning, StoreCorruptError
from dali_relabel.store._reader import LabelMapStore
from dali_relabel.store._writer import LabelMapWriter

__all__ = ["compact", "find_compacted", "rewrite"]

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
    # A store compacted before (and recomputed since) keeps the images it skipped then.
    earlier = params["provenance"].get("skipped_images", [])
    provenance = {**params["provenance"], "skipped_images": sorted(drop | set(earlier))}
    writer = LabelMapWriter.create(
        tmp, [keys[i] for i in keep], **{**params, "provenance": provenance}
    )
    sources = staging.sources()
    for start, stop in writer.missing_blocks():
        scores, classes = staging.read(keep[start:stop])
        rows = None if sources is None else sources[keep[start:stop]]
        writer.write_block(start, scores, classes, rows)
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


def rewrite(src: str | Path, out: str | Path, *, progress: bool = True) -> LabelMapStore:
    """Copy the finished store ``src`` into a new store ``out`` of the current format.

    Every chunk of ``src`` is read first (:func:`~dali_relabel.store.verify_store`): a
    store with missing or damaged shards is refused, naming them, rather than copied
    with zeros in their place. Resumable like every writer.

    Args:
        src: the store to copy (any readable format version).
        out: the new store's folder.
        progress: show progress bars. Default: True.
    """
    from tqdm.auto import tqdm

    from dali_relabel.store._verify import verify_store

    with warnings.catch_warnings():  # the note on format 1 says to do what this does
        warnings.simplefilter("ignore", DaliRelabelWarning)
        report = verify_store(src, progress=progress)
        if not report.ok:
            first = report.problems[0]
            raise StoreCorruptError(
                f"label map store {report.path} has {len(report.problems)} damaged shards "
                f"(first: {first.path}, {first.detail}); it cannot be rewritten whole. Restore "
                "it from a good copy, or write it again from its source",
                path=first.path,
                kind=first.kind,
            )
        store = LabelMapStore.open(src)
    a = store.attrs
    writer = LabelMapWriter.create(
        out,
        store.keys,
        num_classes=a["num_classes"],
        k=a["k"],
        grid=tuple(a["grid"]),
        score_dtype=a["score_dtype"],
        score_kind=a["score_kind"],
        class_names=a["class_names"],
        provenance=a["provenance"],
        layout=a.get("layout", "hw"),
        shard_size=a["shard_size"],
        sources=a.get("sources"),
    )
    sources = store.sources()
    missing = writer.missing_blocks()
    with tqdm(
        total=sum(b - s for s, b in missing), unit="maps", desc="rewriting", disable=not progress
    ) as bar:
        for start, stop in missing:
            scores, classes = store.read(np.arange(start, stop))
            rows = None if sources is None else sources[start:stop]
            writer.write_block(start, scores, classes, rows)
            bar.update(stop - start)
    return writer.finalize()
