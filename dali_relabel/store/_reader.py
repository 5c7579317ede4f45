"""LabelMapStore: read access to a label-map store (ReLabel's per-image top-k maps).

The official ReLabel release (Yun et al., CVPR 2021) keeps one ``.pt`` file per
training image; a store keeps all of them in one chunked, compressed Zarr v3 group
(format in ``docs/FORMAT.md``): ``scores`` [N, k, H, W] (float16 or float32),
``classes`` [N, k, H, W] (int16, or int32 past 32,767 classes) and ``keys`` [N]
(relative image path without extension), in image orientation.

Reading goes through tensorstore where it can (local paths): it decodes one-sample
chunks tens of times faster than zarr-python (README, "Numbers"), which is what makes
loading all of ImageNet into memory take well under a minute. URLs are read through
zarr-python and fsspec.
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
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
)
from dali_relabel.store._format import (
    DEFAULT_SHARD_SIZE,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    is_url,
    local_path,
    open_group,
    open_tensorstores,
)

if TYPE_CHECKING:
    import torch

__all__ = ["LabelMapStore", "open_store"]


class LabelMapStore:
    """Read access to a label-map store; open it with :meth:`LabelMapStore.open`.

    ``scores, classes = store.read(indices)`` returns arrays [n, k, H, W] in image
    orientation (H rows top to bottom, W columns left to right), in the order of
    ``indices`` (repeats allowed). After :meth:`load` (or ``open(..., in_memory=True)``)
    the whole table lives in host memory and reads are numpy gathers.
    """

    def __init__(self, group: Any, path: str) -> None:
        self._group = group
        self.path = path
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._keys: tuple[str, ...] | None = None
        self._key_index: dict[str, int] | None = None
        self._memory: tuple[np.ndarray, np.ndarray] | None = None
        self._ts: tuple[Any, Any] | None = None

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
        """Open a store from a local path or an fsspec URL (``s3://...``, ``gs://...``).

        Args:
            path_or_url: where the store is.
            in_memory: read the whole table into host memory now (see :meth:`load`).
                Default: False.
            allow_incomplete: open a store whose writing has not finished (for
                inspection). Default: False.
            storage_options: passed to fsspec for URLs. Default: None.
        """
        import zarr

        path = str(path_or_url)
        if not is_url(path) and not (Path(local_path(path)) / "zarr.json").is_file():
            where = Path(local_path(path))
            what = "does not exist" if not where.exists() else "has no zarr.json"
            raise StoreNotFoundError(
                f"label map store {path!r} {what}; create one with `dali-relabel convert` "
                "or `dali-relabel generate`"
            )
        if not is_url(path):
            # Absolute from here on: a later chdir must not move the store.
            path = str(Path(local_path(path)).resolve())
        try:
            group = open_group(path, "r", storage_options)
        except (FileNotFoundError, zarr.errors.NodeTypeValidationError) as e:
            raise StoreNotFoundError(
                f"no label map store at {path!r} ({e}); create one with `dali-relabel convert`"
            ) from e
        attrs = dict(group.attrs)
        if attrs.get("format") != STORE_FORMAT:
            raise StoreMismatchError(
                f"{path!r} is a Zarr group but not a dali_relabel label map store "
                f"(attribute format={attrs.get('format')!r}, expected {STORE_FORMAT!r})"
            )
        if attrs.get("format_version", 0) > STORE_FORMAT_VERSION:
            raise StoreMismatchError(
                f"label map store {path!r} has format_version={attrs['format_version']}, newer "
                f"than this dali_relabel reads ({STORE_FORMAT_VERSION}); upgrade dali_relabel"
            )
        if not attrs.get("complete", False) and not allow_incomplete:
            raise StoreIncompleteError(
                f"label map store {path!r} is incomplete: its writing was interrupted. Run the "
                "same `dali-relabel convert`/`generate` command again to finish it"
            )
        store = cls(group, path)
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
        return bool(self.attrs.get("complete", False))

    def __len__(self) -> int:
        return int(self.attrs["num_samples"])

    @property
    def keys(self) -> tuple[str, ...]:
        """Sample keys in sample order (relative image path without extension)."""
        if self._keys is None:
            self._keys = tuple(str(k) for k in self._group["keys"][...].tolist())
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

    # -- reading ---------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _tensorstores(self) -> tuple[Any, Any] | None:
        if self._ts is None and not is_url(self.path):
            try:
                import tensorstore as ts
            except ImportError:
                return None
            self._ts = open_tensorstores(ts, local_path(self.path), write=False)
        return self._ts

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._tensorstores()
        if arrays is not None:
            futures = [a[start:stop].read() for a in arrays]
            return futures[0].result(), futures[1].result()
        return self._group["scores"][start:stop], self._group["classes"][start:stop]

    def load(self, *, progress: bool = True) -> LabelMapStore:
        """Read the whole table into host memory (ImageNet at k=5, 15x15: about 5.8 GB).

        Args:
            progress: show a progress bar. Default: True.
        """
        if self._memory is not None:
            return self
        from tqdm.auto import tqdm

        n = len(self)
        shape = (n, self.k, *self.grid)
        scores = np.empty(shape, self.score_dtype)
        classes = np.empty(shape, self.class_dtype)
        step = int(self.attrs.get("shard_size", DEFAULT_SHARD_SIZE)) * 8
        with tqdm(total=n, unit="maps", desc="loading label maps", disable=not progress) as bar:
            for start in range(0, n, step):
                stop = min(n, start + step)
                scores[start:stop], classes[start:stop] = self._read_range(start, stop)
                bar.update(stop - start)
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
        arrays = self._tensorstores()
        if arrays is not None:
            futures = [a[uniq].read() for a in arrays]
            scores, classes = futures[0].result(), futures[1].result()
        else:
            scores = self._group["scores"].get_orthogonal_selection((uniq,))
            classes = self._group["classes"].get_orthogonal_selection((uniq,))
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
            f"  samples        {len(self):,}" + ("" if self.complete else "  (INCOMPLETE)"),
            f"  top-k          {self.k} of {self.num_classes:,} classes",
            f"  grid           {h} x {w} (H x W, image orientation)",
            f"  scores         {self.score_kind}, {self.attrs['score_dtype']}",
            f"  classes        {self.attrs['class_dtype']}"
            + (", names recorded" if self.class_names else ""),
            f"  layout source  {self.attrs.get('layout', 'hw')}",
        ]
        for key in sorted(prov):
            lines.append(f"  {key:<14} {prov[key]}")
        if len(self):
            lines.append(f"  first key      {self.keys[0]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"LabelMapStore({self.path!r}, samples={len(self)}, k={self.k}, grid={self.grid}, "
            f"num_classes={self.num_classes}, in_memory={self.in_memory})"
        )


def open_store(store: str | os.PathLike | LabelMapStore) -> LabelMapStore:
    """``store`` as an open :class:`LabelMapStore`: a path or URL is opened, an open store
    is returned as it is (what every function taking "a store" accepts)."""
    if isinstance(store, LabelMapStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return LabelMapStore.open(store)
    raise ArgumentTypeError(
        f"a label map store is a path, a URL or a LabelMapStore, got {type(store).__name__}"
    )
