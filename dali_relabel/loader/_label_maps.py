"""The label-map side of the loader: the store behind one door.

:class:`~dali_relabel.loader.ReLabelLoader` joins each sample with its label map by the
sample index DALI returns. This module holds everything of that join that knows the
store (the folder's classes in the store's class space come from
:func:`~dali_relabel.store.scan_in_store_classes`): the store row of every sample
(:func:`store_rows`, joined by key), and :class:`LabelMaps`, which places the maps of
the dataset's samples in host memory, in GPU memory, in one table per node that every
local rank maps (:func:`~dali_relabel.store.node_table`), or leaves them in the store
(``label_map_memory``), gathers a batch's maps by sample index and, when they stay in
the store, reads each batch's maps on a thread as soon as the batch is handed to DALI.
docs/LOADER.md ("Where the maps live") describes the choices and their costs,
docs/SCALE.md their figures at ImageNet's size.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import threading
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
from dali_relabel.store import LabelMapStore, NodeTable, fill_table, node_table

__all__ = ["LOAD", "MEMORY", "LabelMaps", "store_rows"]

#: What ``label_map_memory=`` accepts; see :class:`~dali_relabel.loader.ReLabelLoader`.
MEMORY = ("auto", "host", "device", "stream", "shared")
#: What ``label_map_load=`` accepts: when a table in host memory is read.
LOAD = ("auto", "now", "background")
# "auto" reads tables of at least this many samples on a thread (ImageNet's 1.28 M take
# 40-50 CPU-s to decode; a few thousand, well under a second)
_BACKGROUND_ROWS = 65536
# "auto" keeps the table in host memory (one per node when several local ranks run) below
# this share of the available memory and on the GPU below this share of its free memory.
_HOST_SHARE, _DEVICE_SHARE = 0.5, 0.25


class LabelMaps:
    """The label maps of a dataset's samples, gathered by sample index.

    Every placement but "stream" holds a table of store rows and an int64 map from
    sample index to table row; a subset or a permutation of the store is never gathered
    into a copy. Tables are read range by range into preallocated memory (the peak is
    about the table's size): the whole store when the dataset uses all of its rows (or
    "shared"), else only the rows it uses.

    Args:
        store: the label-map store.
        rows: the store row of each sample (int64, in sample order).
        device: the device the loader's batches live on.
        memory: one of :data:`MEMORY`, as ``label_map_memory`` of the loader.
        progress: show progress while loading the table.
        cache_dir: the folder of the node's table ("shared"); None for the default
            (:func:`~dali_relabel.store.node_table`).
        load: when a "host" or "shared" table is read: "now" (before the constructor
            returns), "background" (on a thread, batches reading their maps from the
            store until it is complete) or "auto" (background from
            ``_BACKGROUND_ROWS`` samples on). See :data:`LOAD`.
    """

    def __init__(
        self,
        store: LabelMapStore,
        rows: np.ndarray,
        device: torch.device,
        memory: str,
        *,
        progress: bool,
        cache_dir: str | os.PathLike | None = None,
        load: str = "auto",
    ) -> None:
        if memory == "auto":
            memory = _auto_memory(
                len(rows) * store.bytes_per_sample,  # the store's own dtypes
                len(store) * store.bytes_per_sample,
                device,
                store.in_memory,
                store.location is not None,
            )
        if memory == "device" and device.type != "cuda":
            raise ArgumentError(f"label_map_memory='device' needs a CUDA device, got {device}")
        #: Where the maps are: "host", "device", "shared" (one file per node, mapped) or
        #: "stream" (read from the store per batch).
        self.memory = memory
        self._store = store
        self._device = device
        #: The node's table ("shared"): its file, and whether this process decoded it.
        self.node_table: NodeTable | None = None
        # (scores, classes): numpy arrays in host memory, tensors on the device, or None
        self._maps: tuple[Any, Any] | None = None
        # sample index -> row of the tables, or None where the tables are in sample order
        self._rows: np.ndarray | None = None
        self._reader: _Reader | None = None
        # store row of every sample: what a batch reads while the table is not ready
        self._store_rows: np.ndarray | None = None
        # the table being read on a thread ("host", "shared"); None once it is in use
        self._loading: _Loading | None = None
        if memory == "stream":
            self._rows = self._store_rows = rows
            self._reader = _Reader()
            return
        if load not in LOAD:
            raise ArgumentError(f"label_map_load must be one of {LOAD}, got {load!r}")
        background = memory in ("host", "shared") and not store.in_memory
        if load == "auto":
            background &= len(rows) >= _BACKGROUND_ROWS
        elif load == "now":
            background = False
        place = (store, rows, device, memory, progress, cache_dir)
        if not background:
            self._maps, self._rows, self.node_table = _place(*place)
            return
        # Read the table on a thread, from the first batch taken on (begin_loading); until
        # it is complete, batches read their maps from the store (the same maps, checked
        # as strictly), so construction and the first batch do not wait for it, nor share
        # the CPU with it. The thread holds the store, not this object.
        self._store_rows = rows
        self._reader = _Reader()
        self._loading = _Loading(place)

    def begin_loading(self) -> None:
        """Start reading the table in the background, if it is to be and has not started
        (the loader calls it once a batch has been taken)."""
        loading = self._loading
        if loading is not None:
            loading.start()

    @property
    def loading(self) -> bool:
        """The table is still being read on a thread (batches read the store meanwhile)."""
        loading = self._loading
        return loading is not None and not loading.done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the table is in use (at once where it was placed at construction);
        False if ``timeout`` seconds passed first. Raises the load's error if it failed."""
        loading = self._loading
        if loading is not None:
            loading.start()
            if not loading.done.wait(timeout):
                return False
        return self._ready()

    def _ready(self) -> bool:
        """Whether the table is in use; takes it over when its thread has finished."""
        loading = self._loading
        if loading is None:
            return True
        if not loading.done.is_set():
            return False
        if loading.error is not None:
            raise loading.error
        # rows before maps: a reader that sees the maps sees their rows
        self.node_table = loading.result[2]
        self._rows = loading.result[1]
        self._maps = loading.result[0]
        self._loading = None
        return True

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
        memory: taken from the table ("host", "shared") or read from the store ("stream",
        and any placement while its table is still being read)."""
        if self.memory == "stream" or not self._ready():
            return self._store.read(self._store_rows[indices])
        rows = self.rows(indices)
        # numpy's take: hundreds of times faster here than torch's CPU index_select
        scores, classes = (np.take(table, rows, axis=0) for table in self._maps)
        return scores, classes

    def read_async(self, indices: np.ndarray) -> cf.Future | None:
        """The maps of ``indices`` read on a thread when they come from the store
        ("stream", or a table still being read); None where they are in memory (reading
        them per batch is cheap there)."""
        if self._reader is None or (self.memory != "stream" and self._ready()):
            return None
        return self._reader.submit(self.read, indices)

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.shutdown(wait=False)


class _Reader:
    """One daemon thread reading maps for the batches handed to DALI. A daemon, unlike a
    ThreadPoolExecutor's worker, which the interpreter joins at exit: a read blocked on a
    store that stopped answering (a hung mount) must not keep a failed process alive."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(
            target=_serve, args=(self._jobs,), name="dali_relabel_maps", daemon=True
        ).start()

    def submit(self, fn: Any, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = False) -> None:
        self._jobs.put(None)  # the thread ends after the reads already asked for


def _serve(jobs: queue.SimpleQueue) -> None:
    while (job := jobs.get()) is not None:
        future, fn, args = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # raised where the batch is taken
                future.set_exception(e)
        del job, future, fn, args  # hold nothing of the loader between reads


class _Loading:
    """A table read on a thread (:func:`_place` of ``place``) once started: its result,
    or its error, once ``done`` is set."""

    def __init__(self, place: tuple[Any, ...]) -> None:
        self.done = threading.Event()
        self.result: tuple[Any, np.ndarray | None, NodeTable | None] | None = None
        self.error: BaseException | None = None
        self._place: tuple[Any, ...] | None = place
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._place is None:  # started before
                return
            place, self._place = self._place, None
        threading.Thread(
            target=self._run, args=place, name="dali_relabel_load", daemon=True
        ).start()

    def _run(self, *place: Any) -> None:
        try:
            self.result = _place(*place)
        except BaseException as e:  # handed to the trainer's thread at its next batch
            self.error = e
        finally:
            self.done.set()


def _place(
    store: LabelMapStore,
    rows: np.ndarray,
    device: torch.device,
    memory: str,
    progress: bool,
    cache_dir: str | os.PathLike | None,
) -> tuple[Any, np.ndarray | None, NodeTable | None]:
    """Read the table of ``memory`` ("host", "device", "shared"): (scores, classes) as
    numpy arrays or device tensors, the sample -> table row map (None where the table is
    in sample order), and the node's table where it is one."""
    table = None
    if memory == "shared":
        table = node_table(store, cache_dir, progress=progress)  # its decoder shows progress
        scores, classes = np.asarray(table.scores), np.asarray(table.classes)
    elif store.in_memory:
        scores, classes = store.tables()
        if memory == "device" and len(rows) < len(store):  # only its rows to the GPU
            uniq = np.unique(rows)
            scores, classes = scores[uniq], classes[uniq]
            rows = np.searchsorted(uniq, rows)
    else:
        uniq = np.unique(rows)
        if len(uniq) == len(store):
            scores, classes = store.load(progress=progress).tables()
        else:  # a subset of the store: only its rows, sorted; rows become positions
            shape = (len(uniq), store.k, *store.grid)
            scores = np.empty(shape, store.score_dtype)
            classes = np.empty(shape, store.class_dtype)
            fill_table(store, scores, classes, rows=uniq, progress=progress)
            rows = np.searchsorted(uniq, rows)
    sample_rows = None if np.array_equal(rows, np.arange(len(scores))) else rows
    if memory == "device":
        scores, classes = torch.from_numpy(scores).to(device), torch.from_numpy(classes).to(device)
    return (scores, classes), sample_rows, table


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


def _local_world_size() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _auto_memory(
    nbytes: int, table_bytes: int, device: torch.device, in_memory: bool, remote: bool
) -> str:
    """``nbytes``: the dataset's rows; ``table_bytes``: the whole store (a shared table)."""
    if device.type == "cuda" and nbytes <= _DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "device"
    if in_memory:
        return "host"
    available = _available_host_bytes()
    if _local_world_size() > 1 and (available is None or table_bytes <= _HOST_SHARE * available):
        return "shared"  # one table for the node's ranks, not one each
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

    When the folder lists the store's keys in its order (a store converted or generated
    from that folder) the rows are ``arange``; otherwise the keys are joined as sorted
    arrays of UTF-8 bytes (``np.searchsorted``), not through a dict of every key: at
    ImageNet's 1.28 M keys a dict per rank costs hundreds of MB.

    Raises StoreMismatchError naming the first images without a label map and their
    count; label maps without an image are fine (a subset of the store's dataset).

    Args:
        store: the label-map store.
        keys: the samples' keys (:attr:`ImageFolderList.keys`).
        root: the image folder, for the message.
    """
    known = store.keys
    if len(keys) == len(known) and all(map(str.__eq__, keys, known)):
        return np.arange(len(keys), dtype=np.int64)
    ordered = _utf8(known)
    order = None
    if len(ordered) > 1 and not (ordered[1:] >= ordered[:-1]).all():
        order = np.argsort(ordered, kind="stable")
        ordered = ordered[order]
    wanted = _utf8(keys)
    at = np.searchsorted(ordered, wanted)
    if len(ordered):
        np.minimum(at, len(ordered) - 1, out=at)
        found = ordered[at] == wanted
    else:
        found = np.zeros(len(wanted), bool)
    if not found.all():
        missing = [keys[i] for i in np.flatnonzero(~found)]
        raise StoreMismatchError(
            f"label map store {store.path!r} has {len(store):,} keys but {len(keys):,} "
            f"images were found under {str(root)!r}: {len(missing):,} images have no "
            f"label map (first: {', '.join(missing[:3])}). Run `dali-relabel verify "
            f"{store.path} --images {root}` for the list."
        )
    rows = at if order is None else order[at]
    return rows.astype(np.int64, copy=False)


def _utf8(keys: Sequence[str]) -> np.ndarray:
    """``keys`` as a numpy array of UTF-8 bytes: byte order is code-point order."""
    return np.array([key.encode() for key in keys], dtype=np.bytes_)
