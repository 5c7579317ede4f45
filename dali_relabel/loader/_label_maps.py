"""The label-map side of the loader: the store behind one door.

:class:`~dali_relabel.loader.ReLabelLoader` joins each sample with its label map by the
sample index DALI returns. This module holds everything of that join that knows the
store (the folder's classes in the store's class space come from
:func:`~dali_relabel.store.scan_in_store_classes`): the store row of every sample
(:func:`store_rows`, joined by key), and :class:`LabelMaps`, which places the maps of
the dataset's samples in host memory, in GPU memory, or leaves them in the store
(``label_map_memory``), gathers a batch's maps by sample index and, when they stay in
the store, reads each batch's maps on a thread as soon as the batch is handed to DALI.
docs/LOADER.md ("Where the maps live") describes the choices and their costs.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dali_relabel.errors import (
    ArgumentError,
    StoreMismatchError,
)
from dali_relabel.store import LabelMapStore

__all__ = ["MEMORY", "LabelMaps", "store_rows"]

#: What ``label_map_memory=`` accepts; see :class:`~dali_relabel.loader.ReLabelLoader`.
MEMORY = ("auto", "host", "device", "stream")
# "auto" keeps the table in host memory below this share of the available memory and on the
# GPU below this share of its free memory.
_HOST_SHARE, _DEVICE_SHARE = 0.5, 0.25


class LabelMaps:
    """The label maps of a dataset's samples, gathered by sample index.

    Args:
        store: the label-map store.
        rows: the store row of each sample (int64, in sample order).
        device: the device the loader's batches live on.
        memory: one of :data:`MEMORY`, as ``label_map_memory`` of the loader.
        progress: show progress while loading the whole store into host memory.
    """

    def __init__(
        self,
        store: LabelMapStore,
        rows: np.ndarray,
        device: torch.device,
        memory: str,
        *,
        progress: bool,
    ) -> None:
        if memory == "auto":
            nbytes = len(rows) * store.bytes_per_sample  # the store's own dtypes
            memory = _auto_memory(nbytes, device, store.in_memory, store.location is not None)
        if memory == "device" and device.type != "cuda":
            raise ArgumentError(f"label_map_memory='device' needs a CUDA device, got {device}")
        #: Where the maps are: "host", "device" or "stream" (read from the store per batch).
        self.memory = memory
        self._store = store
        self._device = device
        # (scores, classes): numpy arrays in host memory, tensors on the device, or None
        self._maps: tuple[Any, Any] | None = None
        # sample index -> row of the tables, or None where the tables are in sample order
        self._rows: np.ndarray | None = None
        self._reader: cf.ThreadPoolExecutor | None = None
        if memory == "stream":
            self._rows = rows
            self._reader = cf.ThreadPoolExecutor(1, thread_name_prefix="dali_relabel_maps")
            return
        if store.in_memory:
            scores, classes = store.tables()
            if memory == "device":  # copy only the dataset's rows to the device
                scores, classes, rows = scores[rows], classes[rows], None
        elif np.array_equal(rows, np.arange(len(store))):
            scores, classes = store.load(progress=progress).tables()
            rows = None
        else:  # a subset of the store: read just its rows, in sample order
            scores, classes = store.read(rows)
            rows = None
        if memory == "device":
            self._maps = (
                torch.from_numpy(scores).to(device),
                torch.from_numpy(classes).to(device),
            )
        else:
            self._maps = (scores, classes)
        self._rows = rows

    @property
    def on_device(self) -> bool:
        """The maps are on the CUDA device: a batch is selected there by its table rows."""
        return self.memory == "device"

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The table rows of the samples ``indices``, int64 (for :meth:`select`)."""
        return indices if self._rows is None else self._rows[indices]

    def select(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, classes) of table ``rows`` (a tensor on the device), on the device."""
        return self._maps[0].index_select(0, rows), self._maps[1].index_select(0, rows)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (scores, classes) maps of the samples ``indices``, in that order, in host
        memory: taken from the table ("host") or read from the store ("stream")."""
        rows = self.rows(indices)
        if self._maps is not None and isinstance(self._maps[0], np.ndarray):
            # numpy's take: hundreds of times faster here than torch's CPU index_select
            scores, classes = (np.take(table, rows, axis=0) for table in self._maps)
            return scores, classes
        return self._store.read(rows)

    def read_async(self, indices: np.ndarray) -> cf.Future | None:
        """The maps of ``indices`` read on a thread when they stay in the store ("stream");
        None where they are in memory (reading them per batch is cheap there)."""
        if self._reader is None:
            return None
        return self._reader.submit(self.read, indices)

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.shutdown(wait=False)


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _auto_memory(nbytes: int, device: torch.device, in_memory: bool, remote: bool) -> str:
    if device.type == "cuda" and nbytes <= _DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "device"
    if in_memory:
        return "host"
    available = _available_host_bytes()
    if available is None or nbytes <= _HOST_SHARE * available:
        return "host"
    if remote:  # streaming from S3 is a request per sample and batch: read it once
        warnings.warn(
            f"the label maps take {nbytes / 2**30:.1f} GiB, more than half of the "
            f"{available / 2**30:.1f} GiB of available memory, but the store is on S3: "
            "keeping them in host memory all the same (label_map_memory='stream' would read "
            "every batch's maps over the network)",
            stacklevel=4,
        )
        return "host"
    warnings.warn(
        f"the label maps take {nbytes / 2**30:.1f} GiB, more than half of the "
        f"{available / 2**30:.1f} GiB of available memory: reading them from the store per "
        "batch (label_map_memory='stream')",
        stacklevel=4,  # the caller of ReLabelLoader(...), through LabelMaps.__init__
    )
    return "stream"


# -- the store, the folder and the join by key ----------------------------------------
def store_rows(store: LabelMapStore, keys: Sequence[str], root: str | Path) -> np.ndarray:
    """The store row of every sample's label map (int64, in the order of ``keys``).

    Raises StoreMismatchError naming the first images without a label map and their
    count; label maps without an image are fine (a subset of the store's dataset).

    Args:
        store: the label-map store.
        keys: the samples' keys (:attr:`ImageFolderList.keys`).
        root: the image folder, for the message.
    """
    known = set(store.keys)
    missing = [k for k in keys if k not in known]
    if missing:
        raise StoreMismatchError(
            f"label map store {store.path!r} has {len(store):,} keys but {len(keys):,} "
            f"images were found under {str(root)!r}: {len(missing):,} images have no "
            f"label map (first: {', '.join(missing[:3])}). Run `dali-relabel verify "
            f"{store.path} --images {root}` for the list."
        )
    return store.indices(keys)
