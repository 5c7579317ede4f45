"""What each image was when its label map was made, and which maps are stale since.

``generate`` records, with every block it writes, each image's size and modification
time (``"stat"``, a ``stat`` per file: ImageNet in seconds) or, on request, a sha256 of
its bytes (``"sha256"``, for trees whose times cannot be trusted, e.g. restored with
their old times). A rerun into the same store compares the record of every written
block with the images as they are now and computes the maps of the changed ones again.
The record is taken before an image is decoded: an image changed while it is decoded
shows as changed on the next run.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from dali_relabel.store import SOURCE_CHECKS

__all__ = ["SOURCE_CHECKS", "changed_rows", "source_records"]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:  # gone: a record no image matches
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _sha256(path: str) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return bytes(32)
    return h.digest()


def source_records(paths: Sequence[str], check: str, *, progress: bool = True) -> np.ndarray:
    """The record of every file of ``paths`` as it is now.

    Args:
        paths: the files.
        check: "stat" (int64 [n, 2]: size, mtime in ns) or "sha256" (uint8 [n, 32]).
        progress: show a progress bar while hashing. Default: True.
    """
    if check == "stat":
        return np.array([_stat(p) for p in paths], dtype=np.int64).reshape(len(paths), 2)
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), 32), dtype=np.uint8)
    with (
        cf.ThreadPoolExecutor(8) as pool,  # hashing releases the GIL; reading is I/O
        tqdm(total=len(paths), unit="img", desc="hashing images", disable=not progress) as bar,
    ):
        for i, digest in enumerate(pool.map(_sha256, paths, chunksize=64)):
            out[i] = np.frombuffer(digest, np.uint8)
            bar.update(1)
    return out


def changed_rows(recorded: np.ndarray, current: np.ndarray, written: np.ndarray) -> np.ndarray:
    """The rows among ``written`` whose file differs from its record (int64, sorted)."""
    differ = (recorded[written] != current[written]).any(axis=1)
    return np.asarray(written, dtype=np.int64)[differ]
