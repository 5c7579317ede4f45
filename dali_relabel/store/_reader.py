"""LabelMapStore: read access to a label-map store (ReLabel's per-image top-k maps).

The official ReLabel release (Yun et al., CVPR 2021) keeps one ``.pt`` file per
training image; a store keeps all of them in one chunked, compressed Zarr v3 group
(format in ``docs/FORMAT.md``): ``scores`` [N, k, H, W] (float16 or float32),
``classes`` [N, k, H, W] (int16, or int32 past 32,767 classes) and ``keys`` [N]
(relative image path without extension), in image orientation.

Opening a store checks its attributes against the arrays' own metadata, whatever the
memory mode; reading checks every chunk's crc32c and refuses missing data, raising
:class:`~dali_relabel.errors.StoreCorruptError` naming the shard file (format 2).
Reading goes through tensorstore, from a local folder or from S3 (``s3://bucket/path``,
:mod:`._s3`): it decodes one-sample chunks tens of times faster than zarr-python
(README, "Numbers"), which is what makes loading all of ImageNet into memory take well
under a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dali_relabel.errors import (
    ArgumentTypeError,
    KeyNotFoundError,
    SampleIndexError,
    StoreCorruptError,
    StoreNotFoundError,
)
from dali_relabel.store._format import SOURCES, keys_digest
from dali_relabel.store._io import (
    local_fingerprint,
    open_group,
    open_tensorstores,
    store_error,
)
from dali_relabel.store._opening import checked_attributes
from dali_relabel.store._s3 import S3Location, is_s3

if TYPE_CHECKING:
    import torch

__all__ = ["LabelMapStore", "open_store"]


class LabelMapStore:
    """Read access to a label-map store; open it with :meth:`LabelMapStore.open`.

    ``scores, classes = store.read(indices)`` returns arrays [n, k, H, W] in image
    orientation (H rows top to bottom, W columns left to right), in the order of
    ``indices`` (repeats allowed). After :meth:`load` (or ``open(..., in_memory=True)``)
    the whole table lives in host memory and reads are numpy gathers. Missing or damaged
    data raises :class:`~dali_relabel.errors.StoreCorruptError` naming the shard file.
    """

    def __init__(
        self,
        group: Any,
        path: str,
        attrs: Mapping[str, Any],
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._group = group  # zarr-python's group of a local store; None on S3
        self.path = path
        self.attrs: dict[str, Any] = dict(attrs)
        self._storage_options = dict(storage_options or {})
        # resolved once: the endpoint, region and credentials of the store's lifetime
        self._location = S3Location.parse(path, storage_options) if is_s3(path) else None
        self._keys: tuple[str, ...] | None = None
        self._key_index: dict[str, int] | None = None
        self._memory: tuple[np.ndarray, np.ndarray] | None = None
        self._ts: tuple[Any, Any] | None = None
        # format 2 stores every chunk: a missing one is damage, not zeros
        self._strict = self.format_version >= 2

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path_or_url: str | Path,
        *,
        in_memory: bool = False,
        allow_incomplete: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> LabelMapStore:
        """Open a store from a local path or an S3 URL (``s3://bucket/path.zarr``).

        Checks every attribute and its agreement with the arrays' own metadata; a
        format-1 store opens with a note (:class:`~dali_relabel.errors.DaliRelabelWarning`)
        to verify or rewrite it.

        Args:
            path_or_url: where the store is.
            in_memory: read the whole table into host memory now (see :meth:`load`).
                Default: False.
            allow_incomplete: open a store whose writing has not finished (for
                inspection). Default: False.
            storage_options: for S3 stores, ``endpoint_url``, ``region``, ``profile``,
                ``anonymous``, ``requester_pays``, ``max_retries``; unset ones come from the
                AWS environment variables (docs/STORAGE.md). Default: None.
        """
        import zarr

        path, attrs = checked_attributes(
            path_or_url, allow_incomplete=allow_incomplete, storage_options=storage_options
        )
        group = None
        if not is_s3(path):
            try:
                group = open_group(path, "r")
            except (FileNotFoundError, zarr.errors.NodeTypeValidationError) as e:
                raise StoreNotFoundError(
                    f"no label map store at {path!r} ({e}); create one with `dali-relabel convert`"
                ) from e
        store = cls(group, path, attrs, storage_options)
        if in_memory:
            store.load()
        return store

    # -- metadata --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.attrs["num_classes"])

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.attrs["grid"]
        return int(h), int(w)

    @property
    def score_kind(self) -> str:
        return str(self.attrs["score_kind"])

    @property
    def score_dtype(self) -> np.dtype:
        return np.dtype(self.attrs["score_dtype"])

    @property
    def class_dtype(self) -> np.dtype:
        return np.dtype(self.attrs["class_dtype"])

    @property
    def bytes_per_sample(self) -> int:
        """Memory one sample's maps take in host or device memory (scores and classes)."""
        cells = self.k * self.grid[0] * self.grid[1]
        return cells * (self.score_dtype.itemsize + self.class_dtype.itemsize)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Class identifiers (e.g. WordNet ids) in index order, when the store records them."""
        names = self.attrs.get("class_names")
        return None if names is None else tuple(names)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.attrs.get("provenance", {}))

    @property
    def complete(self) -> bool:
        return self.attrs["complete"] is True

    @property
    def format_version(self) -> int:
        """The store's format version (1 or 2; only 2 has chunk checksums)."""
        return int(self.attrs["format_version"])

    @property
    def shard_size(self) -> int:
        """Samples per shard file."""
        return max(1, min(int(self.attrs["shard_size"]), len(self)))

    def __len__(self) -> int:
        return int(self.attrs["num_samples"])

    @property
    def storage_options(self) -> dict[str, Any]:
        """The S3 options the store was opened with (empty for a local store)."""
        return dict(self._storage_options)

    @property
    def location(self) -> S3Location | None:
        """Where a store on S3 is and how it is reached; None for a local store."""
        return self._location

    def _array(self, name: str) -> np.ndarray:
        """A small array of the store (keys, sources, blocks_done) read whole."""
        location = self.location
        if location is not None:
            return np.asarray(location.read_array(name))
        return np.asarray(self._group[name][...])

    def written_blocks(self) -> np.ndarray:
        """Which blocks (shards) a writer finished: bool [shards] (all of them in a
        finished store)."""
        return np.asarray(self._array("blocks_done"), dtype=bool)

    def fingerprint(self) -> str:
        """A digest of everything the decoded table depends on: the group's and the map
        arrays' ``zarr.json`` (attributes included) and the name, size and modification
        time (on S3: ETag, from one LIST) of every shard. A rewritten shard or attribute
        changes it: what a copy of the table kept between runs is checked against."""
        import hashlib

        location = self.location
        lines = location.fingerprint() if location is not None else local_fingerprint(self.path)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def keys(self) -> tuple[str, ...]:
        """Sample keys in sample order (relative image path without extension)."""
        if self._keys is None:
            where = f"{self.path}/keys"
            try:
                keys = tuple(str(k) for k in self._array("keys").tolist())
            except (ValueError, KeyError, OSError) as e:
                raise StoreCorruptError(
                    f"label map store {self.path}: the keys array cannot be read ({e}); restore "
                    "the store from a good copy or write it again",
                    path=where,
                ) from e
            # zarr-python reads a missing keys chunk as empty strings: the digest tells.
            if len(keys) != len(self) or keys_digest(keys) != self.attrs["keys_sha256"]:
                raise StoreCorruptError(
                    f"label map store {self.path}: the keys in {where} do not match the "
                    "keys_sha256 attribute (a missing or damaged chunk, or edited attributes); "
                    "restore the store from a good copy or write it again",
                    path=where,
                )
            self._keys = keys
        return self._keys

    def _index_of(self) -> dict[str, int]:
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.keys)}
        return self._key_index

    def index(self, key: str) -> int:
        """Sample index of ``key``; KeyError when the store has no such key."""
        try:
            return self._index_of()[key]
        except KeyError:
            raise KeyNotFoundError(
                f"label map store {self.path!r} has no key {key!r} (keys look like "
                f"{self.keys[0]!r} if any)"
                if len(self)
                else f"label map store {self.path!r} is empty"
            ) from None

    def indices(self, keys: Iterable[str]) -> np.ndarray:
        """Sample indices of many keys (int64); KeyError naming the first missing ones."""
        index_of = self._index_of()
        keys = list(keys)
        out = np.fromiter((index_of.get(k, -1) for k in keys), np.int64, len(keys))
        missing = [keys[i] for i in np.flatnonzero(out < 0)]
        if missing:
            raise KeyNotFoundError(
                f"{len(missing):,} keys are not in label map store {self.path!r} "
                f"(first: {', '.join(missing[:3])})"
            )
        return out

    def sources(self) -> np.ndarray | None:
        """What each sample's source file was when its maps were made: int64 [N, 2]
        (size, mtime_ns) or uint8 [N, 32] (sha256); None when the store records none."""
        if self.attrs.get("sources") is None:
            return None
        return self._array(SOURCES)

    # -- reading ---------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _tensorstores(self) -> tuple[Any, Any]:
        if self._ts is None:
            import tensorstore as ts

            self._ts = open_tensorstores(
                ts,
                self.path,
                write=False,
                strict=self._strict,
                storage_options=self._storage_options,
            )
        return self._ts

    def _ts_read(self, selection: Any) -> tuple[np.ndarray, np.ndarray]:
        """Both arrays at ``selection`` through tensorstore, damage named by file."""
        arrays = self._tensorstores()
        futures = [a[selection].read() for a in arrays]
        try:
            return futures[0].result(), futures[1].result()
        except ValueError as e:
            raise store_error(e, self.path, self._storage_options) or e from e

    def read_into(
        self, selection: slice | np.ndarray, scores: np.ndarray, classes: np.ndarray
    ) -> None:
        """Read the rows ``selection`` into ``scores`` and ``classes`` (preallocated,
        writable, C-contiguous, of the store's dtypes) without a temporary copy:
        tensorstore decodes straight into them.

        Args:
            selection: a range of rows (``slice(start, stop)``) or sorted unique rows
                (int64).
            scores: [n, k, H, W], n the rows selected.
            classes: [n, k, H, W].
        """
        import tensorstore as ts

        futures = [
            ts.array(out, copy=False, write=True).write(array[selection])
            for out, array in zip((scores, classes), self._tensorstores(), strict=True)
        ]
        try:
            futures[0].result(), futures[1].result()
        except ValueError as e:
            raise store_error(e, self.path, self._storage_options) or e from e

    def load(self, *, progress: bool = True) -> LabelMapStore:
        """Read the whole table into host memory (ImageNet at k=5, 15x15: about 5.8 GB),
        range by range into preallocated arrays: the peak is about the table's size.

        Args:
            progress: show a progress bar. Default: True.
        """
        if self._memory is not None:
            return self
        from dali_relabel.store._node_table import fill_table

        shape = (len(self), self.k, *self.grid)
        scores = np.empty(shape, self.score_dtype)
        classes = np.empty(shape, self.class_dtype)
        fill_table(self, scores, classes, progress=progress)
        self._memory = (scores, classes)
        return self

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label maps of the samples ``indices``: (scores, classes), each [n, k, H, W].

        Args:
            indices: sample indices in [0, len(store)); any order, repeats allowed.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ArgumentTypeError(
                f"indices must be a 1-D sequence of integers, got shape {idx.shape} "
                f"dtype {idx.dtype}"
            )
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise SampleIndexError(
                f"sample index {bad} is out of range for a store of {n:,} samples"
            )
        if self._memory is not None:
            return self._memory[0][idx], self._memory[1][idx]
        if idx.size == 0:
            empty = (0, self.k, *self.grid)
            return np.empty(empty, self.score_dtype), np.empty(empty, self.class_dtype)
        # Sorted unique reads are what chunked stores serve fastest.
        uniq, inverse = np.unique(idx, return_inverse=True)
        scores, classes = self._ts_read(uniq)
        return scores[inverse], classes[inverse]

    def read_torch(
        self, indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`read` as torch tensors on ``device``. Default device: CPU."""
        import torch

        scores, classes = self.read(indices)
        return (
            torch.from_numpy(scores).to(device),
            torch.from_numpy(classes).to(device),
        )

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole table (scores, classes) [N, k, H, W] in host memory, loading it if needed."""
        if self._memory is None:
            self.load()
        scores, classes = self._memory  # set by load()
        return scores, classes

    def summary(self) -> str:
        """A few lines describing the store (what `dali-relabel info` prints)."""
        h, w = self.grid
        prov = self.provenance
        lines = [
            f"label map store  {self.path}",
            f"  format         version {self.format_version}"
            + ("" if self._strict else " (no chunk checksums: run `dali-relabel verify`)"),
            f"  samples        {len(self):,}" + ("" if self.complete else "  (INCOMPLETE)"),
            f"  top-k          {self.k} of {self.num_classes:,} classes",
            f"  grid           {h} x {w} (H x W, image orientation)",
            f"  scores         {self.score_kind}, {self.attrs['score_dtype']}",
            f"  classes        {self.attrs['class_dtype']}"
            + (", names recorded" if self.class_names else ""),
            f"  layout source  {self.attrs.get('layout', 'hw')}",
        ]
        for key in sorted(prov):
            lines.append(f"  {key:<14} {_short(prov[key])}")
        if len(self):
            lines.append(f"  first key      {self.keys[0]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"LabelMapStore({self.path!r}, samples={len(self)}, k={self.k}, grid={self.grid}, "
            f"num_classes={self.num_classes}, in_memory={self.in_memory})"
        )


def _short(value: Any, limit: int = 100) -> str:
    """A provenance value on one line: long lists and records cut at ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else f"{text[: limit - 5]} ..."


def open_store(
    store: str | os.PathLike | LabelMapStore, storage_options: Mapping[str, Any] | None = None
) -> LabelMapStore:
    """``store`` as an open :class:`LabelMapStore`: a path or URL is opened (with
    ``storage_options`` for S3), an open store is returned as it is (what every function
    taking "a store" accepts)."""
    if isinstance(store, LabelMapStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return LabelMapStore.open(store, storage_options=storage_options)
    raise ArgumentTypeError(
        f"a label map store is a path, a URL or a LabelMapStore, got {type(store).__name__}"
    )
