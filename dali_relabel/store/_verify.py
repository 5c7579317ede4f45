"""``dali-relabel verify STORE``: read every chunk of a store and name each damaged shard.

Opening a store already checks its attributes against its arrays' metadata; this reads
the data: every shard file of both map arrays, one at a time (a few in flight), with
strict reads (format 2: a missing shard or chunk is an error, every chunk's crc32c is
compared), and checks the decoded values (finite scores, class indices in range). Each
missing, damaged or out-of-range shard is reported by its path; nothing stops at the
first one. Local stores and stores on S3 are read alike, by tensorstore.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from dali_relabel.errors import StoreCorruptError
from dali_relabel.store._format import ARRAYS, shard_count
from dali_relabel.store._io import (
    describe_error,
    missing_shards,
    open_tensorstores,
    shard_key,
    store_error,
)
from dali_relabel.store._reader import LabelMapStore

__all__ = ["ShardProblem", "StoreReport", "missing_shard_files", "verify_store"]

# Shards read at once: enough to keep the disk busy, little memory (2 x 8 x 2.4 MB).
_IN_FLIGHT = 8

# One read's result: (array, shard, decoded data) or (array, shard, (kind, file, detail)).
_Read = tuple[str, int, Any]


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    """One damaged part of a store.

    Attributes:
        path: the shard file (or array) that is damaged.
        kind: "missing", "corrupt", "undecodable", "values" (decoded, but out of range)
            or "incomplete".
        detail: what is wrong, in a few words.
    """

    path: str
    kind: str
    detail: str


@dataclasses.dataclass(frozen=True)
class StoreReport:
    """What :func:`verify_store` found.

    Attributes:
        path: the store.
        format_version: its format version (1 has no chunk checksums).
        samples: its number of samples.
        shards: shard files read (both map arrays).
        problems: every damaged shard, in shard order.
    """

    path: str
    format_version: int
    samples: int
    shards: int
    problems: list[ShardProblem]

    @property
    def ok(self) -> bool:
        """Every chunk was there, matched its checksum and held values in range."""
        return not self.problems


def _values(name: str, data: np.ndarray, num_classes: int) -> str | None:
    if name == "scores":
        bad = ~np.isfinite(data)
        what = "NaN or inf scores"
    else:
        bad = (data < 0) | (data >= num_classes)
        what = f"class indices outside [0, {num_classes})"
    if not bad.any():
        return None
    return f"{int(bad.sum()):,} {what}"


def _read_shards(
    store: LabelMapStore, shards: list[int], storage_options: Mapping[str, Any] | None
) -> Iterator[_Read]:
    """Every shard of both arrays read by tensorstore, a few in flight."""
    import tensorstore as ts

    strict = store.format_version >= 2
    arrays = open_tensorstores(
        ts, store.path, write=False, strict=strict, storage_options=storage_options
    )
    # format 1 reads a missing shard as zeros: look for the files first
    absent = (
        set()
        if strict
        else set(missing_shards(store.path, shard_count(store.attrs), storage_options))
    )
    n, size = len(store), store.shard_size
    for w in range(0, len(shards), _IN_FLIGHT):
        futures = [
            (name, s, array[s * size : min(n, (s + 1) * size)].read())
            for s in shards[w : w + _IN_FLIGHT]
            for name, array in zip(ARRAYS, arrays, strict=True)
        ]
        for name, s, future in futures:
            path = f"{store.path}/{shard_key(name, s)}"
            if path in absent:
                yield name, s, ("missing", path, "missing")
                continue
            try:
                yield name, s, future.result()
            except ValueError as e:
                described = describe_error(e, store.path, storage_options)
                if described is None:
                    raise store_error(e, store.path, storage_options) or e from None
                yield name, s, described


def missing_shard_files(store: LabelMapStore) -> list[str]:
    """The shard files of ``store`` that do not exist (a ``stat`` each, or one LIST on S3;
    no read): what ``info`` checks, and what opening a finished store refuses."""
    return missing_shards(store.path, shard_count(store.attrs), store.storage_options)


def verify_store(
    store: str | os.PathLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> StoreReport:
    """Read every chunk of ``store`` and report each missing or damaged shard by path.

    Args:
        store: the store, a path or a URL; an incomplete one is read as far as its
            blocks are written, and reported incomplete.
        storage_options: S3 options (:meth:`LabelMapStore.open`). Default: None.
        progress: show a progress bar. Default: True.

    Raises the store's opening errors as they are (damaged or edited metadata: a store
    that does not open has nothing to read).
    """
    from tqdm.auto import tqdm

    opened = LabelMapStore.open(store, allow_incomplete=True, storage_options=storage_options)
    total = shard_count(opened.attrs)
    problems: list[ShardProblem] = []
    if opened.complete:
        shards = list(range(total))
    else:
        done = opened.written_blocks()
        shards = [s for s in range(total) if done[s]]
        problems.append(
            ShardProblem(
                opened.path,
                "incomplete",
                f"its writing was interrupted: {len(shards)} of {total} blocks written; run "
                "the command that wrote it again",
            )
        )
    try:
        opened.keys  # noqa: B018 (reading the keys checks them against keys_sha256)
    except StoreCorruptError as e:
        problems.append(ShardProblem(e.path, "corrupt", "the keys do not match keys_sha256"))
    checked = 0
    with tqdm(total=2 * len(shards), unit="shards", desc="verifying", disable=not progress) as bar:
        for name, shard, data in _read_shards(opened, shards, storage_options):
            checked += 1
            bar.update(1)
            if isinstance(data, tuple):
                kind, path, detail = data
                problems.append(ShardProblem(path or f"{opened.path}/{name}", kind, detail))
                continue
            wrong = _values(name, np.asarray(data), opened.num_classes)
            if wrong is not None:
                path = f"{opened.path}/{shard_key(name, shard)}"
                problems.append(ShardProblem(path, "values", wrong))
    return StoreReport(opened.path, opened.format_version, len(opened), checked, problems)
