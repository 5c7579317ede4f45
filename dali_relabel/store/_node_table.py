"""One decoded label table per node, shared by every local rank, and loading without copies.

A store decodes into about 4.5 kB per sample at k=5, 15x15 (ImageNet: 5.8 GB). Eight
ranks of a node each holding their own copy would take 46 GB; :func:`node_table` keeps
one per node in a file that every rank memory-maps read-only:

1. The file's name holds a fingerprint of the store
   (:meth:`~dali_relabel.store.LabelMapStore.fingerprint`: its ``zarr.json`` documents,
   attributes included, and the name, size and modification time of every shard). A
   finished file under that name is mapped at once: the rename that put it there is
   what says it is whole, and its header is checked again.
2. Otherwise the rank takes an ``fcntl.flock`` lock (the kernel releases it when its
   holder dies), looks again (another rank may have finished meanwhile), removes the
   temporary files of ranks of this host that died while decoding, reserves the space
   (``posix_fallocate``: a full ``/dev/shm`` is an error now, not a SIGBUS later),
   decodes the store into ``<name>.tmp.<host>.<pid>`` in ranges with a progress bar,
   flushes (and ``fsync``s on disk) and renames it into place. Older tables of the same
   store are unlinked; ranks that still map them keep valid pages until they unmap.

The file goes to ``/dev/shm`` when it has room, else to a node-local disk folder
(``cache_dir=``, the ``DALI_RELABEL_CACHE`` variable, default ``~/.cache/dali_relabel``).
Nothing is removed at exit: the next run on the node reuses the table.

:func:`fill_table` is the copy-free load that both this and
:meth:`~dali_relabel.store.LabelMapStore.load` use: tensorstore writes each range of the
store straight into the destination (``ts.array(out, copy=False, write=True)``), so the
peak is the table plus one range in flight. docs/SCALE.md has the measurements.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dali_relabel.errors import TableCacheError

if TYPE_CHECKING:
    from dali_relabel.store._reader import LabelMapStore

__all__ = [
    "CACHE_ENV",
    "NodeTable",
    "clear_node_tables",
    "default_cache_dir",
    "fill_table",
    "node_table",
]

#: The environment variable naming the disk folder of node tables.
CACHE_ENV = "DALI_RELABEL_CACHE"
_SHM = "/dev/shm"
_PAGE = 4096  # the header page; each array starts on a page boundary
_LAYOUT = "dali_relabel.node_table/1"  # changes when the file's layout does
_STEP = 16384  # samples per range: 74 MB in flight at k=5, 15x15


def default_cache_dir() -> str:
    """The disk folder of node tables: ``$DALI_RELABEL_CACHE``, else ``~/.cache/dali_relabel``."""
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "dali_relabel"
    )


# -- the copy-free load ------------------------------------------------------------------------
def fill_table(
    store: LabelMapStore,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    progress: bool = True,
    desc: str = "loading label maps",
    on_range: Callable[[int], None] | None = None,
) -> None:
    """Read the store's maps into ``scores`` and ``classes`` (preallocated, writable,
    C-contiguous; a numpy array or memmap), range by range with a progress bar.

    Args:
        store: the store.
        scores: [n, k, H, W] of the store's score dtype.
        classes: [n, k, H, W] of the store's class dtype.
        rows: sorted unique store rows to read (n of them); None reads every row
            (n = len(store)). Default: None.
        progress: show a progress bar. Default: True.
        desc: the progress bar's label. Default: "loading label maps".
        on_range: called with the number of rows done after each range. Default: None.
    """
    from tqdm.auto import tqdm

    n = len(store) if rows is None else len(rows)
    with tqdm(total=n, unit="maps", unit_scale=True, desc=desc, disable=not progress) as bar:
        for start in range(0, n, _STEP):
            stop = min(n, start + _STEP)
            selection = slice(start, stop) if rows is None else rows[start:stop]
            store.read_into(selection, scores[start:stop], classes[start:stop])
            bar.update(stop - start)
            if on_range is not None:
                on_range(stop)


# -- the node table ----------------------------------------------------------------------------
@dataclass
class NodeTable:
    """The store's whole table as read-only memory maps of one file per node.

    Attributes:
        scores: [N, k, H, W] of the store's score dtype (a read-only ``np.memmap``).
        classes: [N, k, H, W] of the store's class dtype (read-only).
        path: the file.
        role: "decoded" (this call wrote the file) or "attached" (it mapped a finished one).
        seconds: what the call took.
        info: details (fingerprint time, lock wait).
    """

    scores: np.ndarray
    classes: np.ndarray
    path: str
    role: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.scores.nbytes + self.classes.nbytes)


def _layout(store: LabelMapStore) -> tuple[list[dict[str, Any]], int]:
    shape = [len(store), store.k, *store.grid]
    specs, offset = [], _PAGE
    for dtype in (store.score_dtype, store.class_dtype):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        specs.append({"dtype": dtype.str, "shape": shape, "offset": offset})
        offset += -(-nbytes // _PAGE) * _PAGE
    return specs, offset


def _maps(path: str, specs: list[dict[str, Any]], mode: str) -> tuple[np.ndarray, np.ndarray]:
    scores, classes = (
        np.memmap(path, np.dtype(s["dtype"]), mode, offset=s["offset"], shape=tuple(s["shape"]))
        for s in specs
    )
    return scores, classes


def _attach(path: str, fingerprint: str, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The maps of the finished table at ``path``, or None when there is none (or it is not
    this store's: a foreign or damaged file is left alone and decoded around)."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.read(_PAGE).rstrip(b"\0"))
            f.seek(0, os.SEEK_END)
            whole = f.tell() == size
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not whole or header.get("fingerprint") != fingerprint:
        return None
    return _maps(path, header["arrays"], "r")


def _lock(fd: int, path: str, timeout: float) -> float:
    """Take the lock within ``timeout`` seconds; returns the seconds waited."""
    start = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return time.monotonic() - start
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() - start > timeout:
            raise TableCacheError(
                f"waited {timeout:.0f} s for the lock {path}, held by another process "
                "decoding the label table; if none is running (ps), delete the lock file and "
                "start again, or pass a longer timeout"
            )
        time.sleep(0.05)


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _free(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _choose_dir(candidates: list[str], size: int, explicit: bool) -> str:
    """The first folder with room for ``size`` bytes (and 5 % to spare), or an error."""
    for folder in candidates:
        if _writable_dir(folder) and _free(folder) >= size * 1.05:
            return folder
    have = ", ".join(f"{c} has {_free(c) / 1e9:.2f} GB free" for c in candidates)
    hint = (
        f"free space there or pass another cache_dir (or set {CACHE_ENV})"
        if explicit
        else "in Docker, give /dev/shm room with --shm-size=<table + 1 GB> or --ipc=host; "
        f"or point {CACHE_ENV} (or cache_dir=) to a node-local disk folder with room"
    )
    raise TableCacheError(
        f"no room for the label table: it needs {size / 1e9:.2f} GB and {have}; {hint}"
    )


def node_table(
    store: LabelMapStore,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    timeout: float = 3600.0,
    _on_range: Callable[[int], None] | None = None,
) -> NodeTable:
    """The store's table decoded once per node into a file that every rank maps.

    The first process of the node to get here decodes the store (strict reads: a damaged
    store never becomes a table); the others wait for it and map the file; a later run
    maps it at once after checking the store's fingerprint.

    Args:
        store: the store (local or URL; the table is read through its public reading API).
        cache_dir: the folder of the file. Default: None (``/dev/shm`` when it has room,
            else :func:`default_cache_dir`); an explicit folder (or ``DALI_RELABEL_CACHE``)
            is used alone. It must be node-local: ``flock`` is unreliable on NFS.
        progress: show a progress bar while decoding. Default: True.
        timeout: seconds to wait for another process's decoding. Default: 3600.
    """
    t0 = time.perf_counter()
    explicit = cache_dir is not None or bool(os.environ.get(CACHE_ENV))
    if explicit:
        candidates = [os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()]
    else:  # the disk folder is made only when it is used
        candidates = [*([_SHM] if _writable_dir(_SHM) else []), default_cache_dir()]
    if not _writable_dir(candidates[0]):  # the lock's folder
        raise TableCacheError(
            f"the label table cache folder {candidates[0]!r} cannot be created or written; "
            f"pass cache_dir= (or set {CACHE_ENV}) to a writable node-local folder"
        )
    fingerprint = hashlib.sha256(f"{_LAYOUT}\0{store.fingerprint()}".encode()).hexdigest()
    t_fp = time.perf_counter() - t0
    store_id = hashlib.sha256(store.path.encode()).hexdigest()[:8]
    prefix = f"dali_relabel-{os.getuid()}-{store_id}-"
    name = prefix + fingerprint[:24]
    specs, size = _layout(store)
    info: dict[str, Any] = {"fingerprint_s": round(t_fp, 4)}

    def found() -> NodeTable | None:
        for folder in candidates:
            path = os.path.join(folder, name + ".bin")
            maps = _attach(path, fingerprint, size)
            if maps is not None:
                seconds = time.perf_counter() - t0
                return NodeTable(*maps, path=path, role="attached", seconds=seconds, info=info)
        return None

    table = found()
    if table is not None:  # finished: no lock needed
        return table
    lock = os.path.join(candidates[0], name + ".lock")  # /dev/shm: node-local
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        info["lock_wait_s"] = round(_lock(fd, lock, timeout), 3)
        table = found()  # another rank finished while this one waited
        if table is not None:
            return table
        host = socket.gethostname()
        for folder in candidates:  # left by ranks of this host that died decoding
            for orphan in glob.glob(os.path.join(folder, f"{name}.tmp.{host}.*")):
                os.unlink(orphan)
        folder = _choose_dir(candidates, size, explicit)
        final = os.path.join(folder, name + ".bin")
        tmp = os.path.join(folder, f"{name}.tmp.{host}.{os.getpid()}")
        header = {"layout": _LAYOUT, "fingerprint": fingerprint, "store": store.path}
        header["arrays"] = specs
        _reserve(tmp, size, json.dumps(header).encode(), folder)
        try:
            scores, classes = _maps(tmp, specs, "r+")
            fill_table(
                store,
                scores,
                classes,
                progress=progress,
                desc=f"decoding label maps into {folder}",
                on_range=_on_range,
            )
            scores.flush()
            classes.flush()
            del scores, classes
            if not folder.startswith(_SHM):  # a crash must not leave a renamed empty file
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.rename(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        for other in candidates:  # older tables of this store
            for old in glob.glob(os.path.join(other, prefix + "*.bin")):
                if old != final:
                    os.unlink(old)
        maps = _attach(final, fingerprint, size)
        if maps is None:  # unlinked by a newer run of a changed store meanwhile
            raise TableCacheError(f"the label table {final} vanished right after it was written")
        return NodeTable(
            *maps, path=final, role="decoded", seconds=time.perf_counter() - t0, info=info
        )
    finally:
        os.close(fd)  # releases the lock


def clear_node_tables(
    store: LabelMapStore | None = None, cache_dir: str | os.PathLike | None = None
) -> list[str]:
    """Delete this user's decoded tables (and temporary files) from the node, or only
    those of ``store``; returns the files deleted. Lock files are kept: a process may be
    waiting on one. Ranks that map a deleted table keep valid pages until they exit.

    Args:
        store: only this store's tables. Default: None (every store's).
        cache_dir: the folder. Default: None (``/dev/shm`` and :func:`default_cache_dir`).
    """
    folders = [os.fspath(cache_dir)] if cache_dir is not None else [_SHM, default_cache_dir()]
    prefix = f"dali_relabel-{os.getuid()}-"
    if store is not None:
        prefix += hashlib.sha256(store.path.encode()).hexdigest()[:8] + "-"
    gone = []
    for folder in folders:
        for pattern in ("*.bin", "*.tmp.*"):
            for path in glob.glob(os.path.join(folder, prefix + pattern)):
                os.unlink(path)
                gone.append(path)
    return gone


def _reserve(path: str, size: int, header: bytes, folder: str) -> None:
    """Create ``path`` at full size with its blocks allocated and the header written."""
    if len(header) > _PAGE:
        raise TableCacheError(f"the table header takes {len(header)} bytes, more than a page")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise TableCacheError(
                    f"no room for the label table in {folder}: it needs {size / 1e9:.2f} GB "
                    f"and {_free(folder) / 1e9:.2f} GB are free; pass a cache_dir (or set "
                    f"{CACHE_ENV}) with room, or in Docker --shm-size / --ipc=host"
                ) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # a file system without fallocate
        os.pwrite(fd, header, 0)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
