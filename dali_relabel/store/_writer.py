"""LabelMapWriter: writing label-map stores, resumably (the format is in docs/FORMAT.md).

A writer creates every array first and the attributes with ``complete: false``, then
writes block by block (one shard per block) and flags a block done only after its data
is on disk. Killed at any point, the same writer reopened with the same parameters
lists only the blocks still missing; the store is marked complete last, only when every
block is written. Writes go through tensorstore, several times faster than zarr-python
for sharded arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel.errors import (
    ArgumentError,
    ArgumentTypeError,
    StoreIncompleteError,
    StoreMismatchError,
)
from dali_relabel.store._format import (
    DEFAULT_SHARD_SIZE,
    STORE_FORMAT,
    attributes,
    is_url,
    local_path,
    open_tensorstores,
)
from dali_relabel.store._reader import LabelMapStore

__all__ = ["LabelMapWriter"]


class LabelMapWriter:
    """Writes a store block by block, resumably; make one with :meth:`create`.

    A block is one shard of ``shard_size`` consecutive samples. Write each block of
    :meth:`missing_blocks` with :meth:`write_block`, then call :meth:`finalize`.
    Opening the same path again with the same parameters resumes: blocks already
    flagged done are not listed as missing.
    """

    def __init__(self, group: Any, path: str) -> None:
        self._group = group
        self.path = path
        self.attrs = dict(group.attrs)
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
    ) -> LabelMapWriter:
        """Create a store at ``path``, or reopen the unfinished one there to resume.

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
        """
        import zarr
        from zarr.codecs import ZstdCodec

        path = str(path)
        if is_url(path):
            raise ArgumentError(f"stores are written to local paths, got URL {path!r}")
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
        )
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(key for key in keys if key in seen or seen.add(key))
            raise ArgumentError(f"keys must be unique; {dup!r} appears more than once")
        h, w = attrs["grid"]
        local = Path(path)
        if (local / "zarr.json").is_file():
            group = zarr.open_group(str(local), mode="r+")
            old = dict(group.attrs)
            if old.get("format") != STORE_FORMAT:
                raise StoreMismatchError(
                    f"output {path!r} is a Zarr group but not a label map store; "
                    "choose another output path or delete it"
                )
            diff = [
                f"{name}: {old.get(name)!r} there, {value!r} now"
                for name, value in attrs.items()
                if json.dumps(old.get(name), sort_keys=True) != json.dumps(value, sort_keys=True)
            ]
            if diff:
                raise StoreMismatchError(
                    f"output {path!r} is a label map store of other parameters ("
                    + "; ".join(diff[:4])
                    + "); choose another output path or delete it"
                )
            return cls(group, path)
        if local.exists() and (not local.is_dir() or any(local.iterdir())):
            raise StoreMismatchError(
                f"output {path!r} exists and is not a label map store; "
                "choose another output path or delete it"
            )
        group = zarr.open_group(str(local), mode="w")
        n = len(keys)
        shape = (n, int(k), h, w)
        chunk = (1, int(k), h, w)
        shard = (max(1, min(int(shard_size), n)), int(k), h, w)
        for name, dtype in (("scores", score_dtype), ("classes", attrs["class_dtype"])):
            group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=chunk,
                shards=shard,
                compressors=ZstdCodec(level=3),
                fill_value=0,
            )
        group.create_array("keys", shape=(n,), dtype=str, chunks=(max(n, 1),))
        if n:
            group["keys"][:] = np.array(keys, dtype=object)
        n_blocks = math.ceil(n / shard[0]) if n else 0
        group.create_array(
            "blocks_done", shape=(n_blocks,), dtype="uint8", chunks=(1,), fill_value=0
        )
        # Attributes last: a store with its attributes is a store whose arrays exist.
        group.attrs.update({**attrs, "complete": False})
        return cls(group, path)

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
        """Flag the blocks that hold these samples as not written, to be written again."""
        for block in sorted({int(i) // self.block_size for i in samples}):
            self._group["blocks_done"][block] = 0
            self._done[block] = False

    def missing_blocks(self) -> list[tuple[int, int]]:
        """The blocks not yet written, as (start, stop)."""
        return [blk for i, blk in enumerate(self.blocks()) if not self._done[i]]

    def _arrays(self) -> tuple[Any, Any]:
        if self._ts is None:
            import tensorstore as ts

            self._ts = open_tensorstores(ts, self.path, write=True)
        return self._ts

    def write_block(self, start: int, scores: np.ndarray, classes: np.ndarray) -> None:
        """Write the block that starts at ``start`` and flag it done.

        Args:
            start: first sample of the block (a start of :meth:`blocks`).
            scores: float [n, k, H, W] with n the block's length; finite.
            classes: integer [n, k, H, W] in [0, num_classes).
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
        if classes.dtype.kind not in "iu":
            raise ArgumentTypeError(f"classes must be integers, got dtype {classes.dtype}")
        if classes.size and (classes.min() < 0 or classes.max() >= int(self.attrs["num_classes"])):
            raise ArgumentError(
                f"classes of block {start} lie in [{classes.min()}, {classes.max()}], outside "
                f"[0, {self.attrs['num_classes']})"
            )
        score_arr, class_arr = self._arrays()
        f1 = score_arr[start : start + n].write(
            scores.astype(self.attrs["score_dtype"], copy=False)
        )
        f2 = class_arr[start : start + n].write(
            classes.astype(self.attrs["class_dtype"], copy=False)
        )
        f1.result()
        f2.result()
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
        self._group.attrs["complete"] = True
        return LabelMapStore.open(self.path)
