"""LabelMapWriter: writing label-map stores, resumably (the format is in docs/FORMAT.md).

A writer first writes the group's attributes with ``complete: false`` (one atomic
rename), then creates every array, ``blocks_done`` last; it writes block by block (one
shard per block) and flags a block done only after its data is on disk. Killed at any
point, the same writer reopened with the same parameters finishes what it finds: it
creates the arrays again if their creation was cut short, and lists only the blocks
still missing; the store is marked complete last, only when every block is written.
Writes go through tensorstore, several times faster than zarr-python for sharded
arrays, with a crc32c checksum in every chunk and every chunk stored, also one of zeros
(format 2).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel.errors import (
    ArgumentError,
    ArgumentTypeError,
    DaliRelabelError,
    StoreIncompleteError,
    StoreMismatchError,
)
from dali_relabel.store._format import (
    ARRAYS,
    DEFAULT_SHARD_SIZE,
    SOURCES,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    attributes,
    is_url,
    local_path,
    source_shape,
)
from dali_relabel.store._io import open_tensorstores, read_document, write_group_document
from dali_relabel.store._opening import read_attributes
from dali_relabel.store._reader import LabelMapStore

__all__ = ["LabelMapWriter"]

# What a writer puts in a store's folder: an unlabelled group holding only these was
# left by a writer (of format 1) killed before its attributes, and is taken over.
_OWN_ENTRIES = {"zarr.json", *ARRAYS, "keys", "blocks_done", SOURCES}


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``name: <there>, <now>`` for every attribute that differs, nested objects by key
    (a refusal names the differing entry, not the whole provenance)."""
    out = []
    for name in sorted(set(old) | set(new), key=lambda n: (n not in new, str(n))):
        a, b = old.get(name), new.get(name)
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}: {_shown(a)} there, {_shown(b)} now")
    return out


def _keys_difference(path: str, old_group: Any, keys: Sequence[str]) -> str:
    try:
        old = [str(k) for k in old_group["keys"][...].tolist()]
    except Exception:  # a damaged keys array: say only that the keys differ
        return "its keys differ"
    added, removed = sorted(set(keys) - set(old)), sorted(set(old) - set(keys))
    parts = [
        f"{len(items):,} {what} (first: {', '.join(items[:3])})"
        for items, what in ((added, "images are new"), (removed, "are gone"))
        if items
    ]
    return "; ".join(parts) or "the same keys in another order"


class LabelMapWriter:
    """Writes a store block by block, resumably; make one with :meth:`create`.

    A block is one shard of ``shard_size`` consecutive samples. Write each block of
    :meth:`missing_blocks` with :meth:`write_block`, then call :meth:`finalize`.
    Opening the same path again with the same parameters resumes: blocks already
    flagged done are not listed as missing.
    """

    def __init__(self, group: Any, path: str, attrs: Mapping[str, Any]) -> None:
        self._group = group
        self.path = path
        self.attrs = dict(attrs)
        self._ts: tuple[Any, Any] | None = None
        self._done: np.ndarray = np.asarray(group["blocks_done"][...], dtype=bool)

    @classmethod
    def create(
        cls,
        path: str | Path,
        keys: Sequence[str],
        *,
        num_classes: int,
        k: int,
        grid: tuple[int, int],
        score_dtype: str = "float16",
        score_kind: str = "logits",
        class_names: Sequence[str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        layout: str = "hw",
        shard_size: int = DEFAULT_SHARD_SIZE,
        sources: str | None = None,
        _format_version: int = STORE_FORMAT_VERSION,
    ) -> LabelMapWriter:
        """Create a store at ``path``, or reopen the unfinished (or finished) one there.

        Args:
            path: local folder of the store.
            keys: sample keys in sample order (unique).
            num_classes: classes of the teacher.
            k: classes kept per cell.
            grid: (H, W) of the maps.
            score_dtype: "float16" or "float32". Default: "float16".
            score_kind: "logits" or "probabilities". Default: "logits".
            class_names: class identifiers in index order (e.g. WordNet ids). Default: None.
            provenance: where the maps come from (source, teacher, ...). Default: None.
            layout: orientation of the source maps before import ("official" or "hw").
                Default: "hw".
            shard_size: samples per shard. Default: 1024.
            sources: record each sample's source file with every block, "stat" (size and
                modification time) or "sha256" (content hash), so that a rerun can tell
                which maps are stale (:meth:`recorded_sources`). Default: None.
        """
        path = str(path)
        if is_url(path):
            raise ArgumentError(
                f"a LabelMapWriter writes a local folder, got URL {path!r}; write the store "
                "locally and upload it with dali_relabel.store.publish (convert and generate "
                "do both when given an s3:// output)"
            )
        path = str(Path(local_path(path)).resolve())  # a later chdir must not move it
        keys = [str(key) for key in keys]
        attrs = attributes(
            keys,
            num_classes=num_classes,
            k=k,
            grid=grid,
            score_dtype=score_dtype,
            score_kind=score_kind,
            class_names=class_names,
            provenance=provenance,
            layout=layout,
            shard_size=shard_size,
            sources=sources,
            format_version=_format_version,
        )
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(key for key in keys if key in seen or seen.add(key))
            raise ArgumentError(f"keys must be unique; {dup!r} appears more than once")
        local = Path(path)
        old = read_attributes(path) if local.is_dir() else None
        if old:  # a labelled group: resume it, or refuse
            return cls._reopen(path, old, attrs, keys)
        entries = set(os.listdir(local)) if local.is_dir() else set()
        ours = {e for e in entries if not e.startswith(".zarr.json.")}
        if old is None and ours:
            raise StoreMismatchError(
                f"output {path!r} exists and is not a label map store; "
                "choose another output path or delete it"
            )
        if old is not None and not ours <= _OWN_ENTRIES:
            raise StoreMismatchError(
                f"output {path!r} is a Zarr group but not a label map store; "
                "choose another output path or delete it"
            )
        # New, or an unlabelled group left by a writer killed before its attributes.
        # Attributes first, in one rename: from here on the folder is this store.
        write_group_document(path, {**attrs, "complete": False})
        return cls(_create_arrays(path, attrs, keys), path, {**attrs, "complete": False})

    @classmethod
    def _reopen(
        cls, path: str, old: Mapping[str, Any], attrs: Mapping[str, Any], keys: Sequence[str]
    ) -> LabelMapWriter:
        import zarr

        if old.get("format") != STORE_FORMAT:
            raise StoreMismatchError(
                f"output {path!r} is a Zarr group but not a label map store; "
                "choose another output path or delete it"
            )
        if old.get("format_version") != attrs["format_version"]:
            raise StoreMismatchError(
                f"output {path!r} is a label map store of format version "
                f"{old.get('format_version')!r}, which this dali_relabel reads but does not "
                f"write (it writes {attrs['format_version']}); choose another output path, or "
                "delete it"
            )
        diff = _differences({n: v for n, v in old.items() if n != "complete"}, attrs)
        diff = [d for d in diff if not d.startswith("attributes_sha256")]  # the others say it
        if diff:
            group = zarr.open_group(path, mode="r")
            if any(line.startswith("keys_sha256") for line in diff):
                diff = [d for d in diff if not d.startswith(("keys_sha256", "num_samples"))]
                diff.insert(0, f"other images: {_keys_difference(path, group, keys)}")
            raise StoreMismatchError(
                f"output {path!r} is a label map store of other parameters ("
                + "; ".join(diff[:4])
                + ("; ..." if len(diff) > 4 else "")
                + "); choose another output path or delete it"
            )
        complete = old.get("complete") is True
        group = None if complete else _finished_creation(path, attrs)
        if group is None and not complete:  # killed while creating the arrays
            group = _create_arrays(path, attrs, keys)
        if group is None:
            group = zarr.open_group(path, mode="r+")
        return cls(group, path, {**attrs, "complete": complete})

    @property
    def num_samples(self) -> int:
        return int(self.attrs["num_samples"])

    @property
    def block_size(self) -> int:
        return max(1, min(int(self.attrs["shard_size"]), self.num_samples))

    def blocks(self) -> list[tuple[int, int]]:
        """Every block as (start, stop) sample ranges."""
        n, b = self.num_samples, self.block_size
        return [(s, min(n, s + b)) for s in range(0, n, b)]

    def forget_blocks(self, samples: Iterable[int]) -> None:
        """Flag the blocks that hold these samples as not written, to be written again.

        A finished store becomes unfinished first (``complete: false``), so that a kill
        before the blocks are written again leaves a store that readers refuse.
        """
        blocks = sorted({int(i) // self.block_size for i in samples})
        if blocks and self.attrs["complete"]:
            self.attrs["complete"] = False
            write_group_document(self.path, self.attrs)
        for block in blocks:
            self._group["blocks_done"][block] = 0
            self._done[block] = False

    def missing_blocks(self) -> list[tuple[int, int]]:
        """The blocks not yet written, as (start, stop)."""
        return [blk for i, blk in enumerate(self.blocks()) if not self._done[i]]

    def recorded_sources(self) -> np.ndarray | None:
        """What each sample's source file was when its block was written: int64 [N, 2]
        (size, mtime_ns) or uint8 [N, 32] (sha256), rows of unwritten blocks zero; None
        when the store records no sources."""
        if self.attrs.get("sources") is None:
            return None
        return np.asarray(self._group[SOURCES][...])

    def _arrays(self) -> tuple[Any, Any]:
        if self._ts is None:
            import tensorstore as ts

            strict = self.attrs["format_version"] >= 2
            self._ts = open_tensorstores(ts, self.path, write=True, strict=strict)
        return self._ts

    def write_block(
        self,
        start: int,
        scores: np.ndarray,
        classes: np.ndarray,
        sources: np.ndarray | None = None,
    ) -> None:
        """Write the block that starts at ``start`` and flag it done.

        Args:
            start: first sample of the block (a start of :meth:`blocks`).
            scores: float [n, k, H, W] with n the block's length; finite, and within the
                range of the store's score dtype (float16: |score| <= 65,504).
            classes: integer [n, k, H, W] in [0, num_classes).
            sources: the block's rows of the sources record ([n, 2] int64 or [n, 32]
                uint8), required when the store records sources. Default: None.
        """
        starts = {s: e for s, e in self.blocks()}
        if start not in starts:
            raise ArgumentError(
                f"start={start} is not the start of a block of {self.block_size} samples"
            )
        n = starts[start] - start
        shape = (n, int(self.attrs["k"]), *self.attrs["grid"])
        for name, arr in (("scores", scores), ("classes", classes)):
            if tuple(arr.shape) != shape:
                raise ArgumentError(
                    f"{name} of block {start} must have shape {shape}, got {arr.shape}"
                )
        if not np.isfinite(scores).all():
            raise ArgumentError(f"scores of block {start} hold NaN or inf")
        dtype = np.dtype(self.attrs["score_dtype"])
        largest = float(np.abs(scores).max()) if scores.size else 0.0
        if largest > float(np.finfo(dtype).max):
            raise ArgumentError(
                f"scores of block {start} reach {largest:.6g}, beyond the largest {dtype.name} "
                f"({float(np.finfo(dtype).max):,.0f}): they would be stored as inf. Write the "
                "store with score_dtype='float32' (--float32)"
            )
        if classes.dtype.kind not in "iu":
            raise ArgumentTypeError(f"classes must be integers, got dtype {classes.dtype}")
        if classes.size and (classes.min() < 0 or classes.max() >= int(self.attrs["num_classes"])):
            raise ArgumentError(
                f"classes of block {start} lie in [{classes.min()}, {classes.max()}], outside "
                f"[0, {self.attrs['num_classes']})"
            )
        check = self.attrs.get("sources")
        if check is not None:
            cols, kind = source_shape(check)
            if sources is None or tuple(sources.shape) != (n, cols):
                got = None if sources is None else tuple(sources.shape)
                raise ArgumentError(
                    f"this store records sources ({check}): block {start} needs sources of "
                    f"shape {(n, cols)}, got {got}"
                )
        score_arr, class_arr = self._arrays()
        f1 = score_arr[start : start + n].write(scores.astype(dtype, copy=False))
        f2 = class_arr[start : start + n].write(
            classes.astype(self.attrs["class_dtype"], copy=False)
        )
        f1.result()
        f2.result()
        if check is not None:
            self._group[SOURCES][start : start + n] = np.asarray(sources, dtype=kind)
        # The flag goes after the data: a block flagged done is a block on disk.
        index = start // self.block_size
        self._group["blocks_done"][index] = 1
        self._done[index] = True

    def finalize(self) -> LabelMapStore:
        """Mark the store complete and return it opened; refuses while blocks are missing."""
        missing = self.missing_blocks()
        if missing:
            raise StoreIncompleteError(
                f"cannot finalize {self.path!r}: {len(missing)} of {len(self.blocks())} blocks "
                f"are not written (first: samples {missing[0][0]}-{missing[0][1] - 1})"
            )
        self.attrs["complete"] = True
        write_group_document(self.path, self.attrs)  # one rename: all or nothing
        return LabelMapStore.open(self.path)


# -- creating the arrays --------------------------------------------------------------------
def _create_arrays(path: str, attrs: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """Create every array of the store at ``path`` (replacing any left by a killed writer),
    ``blocks_done`` last: its presence says the others exist."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    group = zarr.open_group(path, mode="r+")
    n, k, (h, w) = len(keys), int(attrs["k"]), attrs["grid"]
    shard = max(1, min(int(attrs["shard_size"]), n))
    compressors = [ZstdCodec(level=3)]
    if attrs["format_version"] >= 2:
        compressors.append(Crc32cCodec())  # last: the checksum covers the stored bytes
    if "blocks_done" in group:  # a creation cut short after its last step: start over
        del group["blocks_done"]
    for name, dtype in (("scores", attrs["score_dtype"]), ("classes", attrs["class_dtype"])):
        group.create_array(
            name,
            shape=(n, k, h, w),
            dtype=dtype,
            chunks=(1, k, h, w),
            shards=(shard, k, h, w),
            compressors=compressors,
            fill_value=0,
            config={"write_empty_chunks": True},
            overwrite=True,
        )
    group.create_array("keys", shape=(n,), dtype=str, chunks=(max(n, 1),), overwrite=True)
    if n:
        group["keys"][:] = np.array(keys, dtype=object)
    check = attrs.get("sources")
    if check is not None:
        cols, kind = source_shape(check)
        group.create_array(
            SOURCES,
            shape=(n, cols),
            dtype=kind,
            chunks=(shard, cols),
            fill_value=0,
            overwrite=True,
        )
    n_blocks = math.ceil(n / shard) if n else 0
    group.create_array(
        "blocks_done", shape=(n_blocks,), dtype="uint8", chunks=(1,), fill_value=0, overwrite=True
    )
    return group


def _finished_creation(path: str, attrs: Mapping[str, Any]) -> Any | None:
    """The store's group when every array was created, else None."""
    import zarr

    n = int(attrs["num_samples"])
    shard = max(1, min(int(attrs["shard_size"]), n))
    try:
        done = read_document(path, "blocks_done/zarr.json")
    except DaliRelabelError:  # cut short while written
        return None
    if done is None or done.get("shape") != [math.ceil(n / shard) if n else 0]:
        return None
    return zarr.open_group(path, mode="r+")
