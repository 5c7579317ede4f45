"""Writing ``dali-relabel generate``'s label maps into a store, resumably, bad images included.

Maps arrive one image at a time; :class:`BlockBuffers` gathers them into the store's
blocks and hands each full block to :class:`~dali_relabel.store.LabelMapWriter` on a
background thread, so that writing overlaps the teacher. A block is flagged done only
when written whole, which is what lets an interrupted run resume at the first missing
block. Images that could not be decoded are kept in a list beside the store's arrays
(``bad_images.json``) until the run ends; when they are skipped, :func:`compact`
rewrites the store without their rows and lists them in its provenance
(``skipped_images``), and :func:`finished_compacted` recognizes that store on a rerun.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dali_relabel.store import LabelMapStore
    from dali_relabel.writer import LabelMapWriter

__all__ = ["BlockBuffers", "clear_bad_list", "compact", "finished_compacted", "load_bad_list"]

# Bad images found in an unfinished store, kept beside its arrays until compaction.
_BAD_LIST = "bad_images.json"
_COMPACTING = ".compacting"
_OLD = ".old"


class BlockBuffers:
    """Collects per-sample maps into store blocks and writes full blocks in the background."""

    def __init__(
        self, writer: LabelMapWriter, keys: Sequence[str], skip_bad: bool, bad: dict[str, str]
    ):
        self.writer = writer
        self.keys = keys
        self.skip_bad = skip_bad
        self.bad = bad  # key -> error, persisted beside the store when skipping
        self.size = writer.block_size
        self.stops = dict(writer.blocks())
        self.k = int(writer.attrs["k"])
        self.grid = tuple(writer.attrs["grid"])
        self.open: dict[int, list[Any]] = {}
        self.unwritten_bad: list[str] = []  # bad keys whose blocks stay unwritten
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.pending: list[Future] = []

    def _buffer(self, start: int) -> list[Any]:
        if start not in self.open:
            n = self.stops[start] - start
            shape = (n, self.k, *self.grid)
            self.open[start] = [np.zeros(shape, np.float32), np.zeros(shape, np.int32), n, []]
        return self.open[start]

    def put(self, index: int, scores: np.ndarray | None, classes: np.ndarray | None, error: str):
        start = index - index % self.size
        buf = self._buffer(start)
        if error:
            buf[3].append(self.keys[index])
            self.bad[self.keys[index]] = error
        else:
            buf[0][index - start] = scores
            buf[1][index - start] = classes
        buf[2] -= 1
        if buf[2] == 0:
            del self.open[start]
            self._finish(start, buf)

    def _finish(self, start: int, buf: list[Any]) -> None:
        if buf[3] and not self.skip_bad:
            self.unwritten_bad.extend(buf[3])  # never flag a block with holes as done
            return
        if buf[3]:
            _save_bad_list(self.writer.path, self.bad)  # before the block is flagged done
        while len(self.pending) >= 2:
            self.pending.pop(0).result()
        self.pending.append(self.executor.submit(self.writer.write_block, start, buf[0], buf[1]))

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.executor.shutdown(wait=True)


def load_bad_list(store: str | Path) -> dict[str, str]:
    path = Path(store) / _BAD_LIST
    return json.loads(path.read_text()) if path.is_file() else {}


def clear_bad_list(store: str | Path) -> None:
    (Path(store) / _BAD_LIST).unlink(missing_ok=True)


def _save_bad_list(store: str | Path, bad: dict[str, str]) -> None:
    path = Path(store) / _BAD_LIST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(bad.items())), indent=0))
    os.replace(tmp, path)


def compact(
    out: Path, keys: Sequence[str], bad: dict[str, str], params: dict[str, Any]
) -> LabelMapStore:
    """Rewrite the store without the bad images' rows (they are all zeros), then swap it in."""
    from dali_relabel.store import LabelMapStore
    from dali_relabel.writer import LabelMapWriter

    skipped = sorted(bad)
    keep = np.array([i for i, key in enumerate(keys) if key not in bad], dtype=np.int64)
    staging = LabelMapStore.open(out, allow_incomplete=True)
    tmp = out.with_name(out.name + _COMPACTING)
    provenance = {**params["provenance"], "skipped_images": skipped}
    writer = LabelMapWriter.create(
        tmp, [keys[i] for i in keep], **{**params, "provenance": provenance}
    )
    for start, stop in writer.missing_blocks():
        scores, classes = staging.read(keep[start:stop])
        writer.write_block(start, scores, classes)
    writer.finalize()
    old = out.with_name(out.name + _OLD)
    if old.exists():
        shutil.rmtree(old)  # left by a run killed while it removed it
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)
    return LabelMapStore.open(out)


def finished_compacted(
    out: Path, keys: Sequence[str], params: dict[str, Any]
) -> LabelMapStore | None:
    """The store at ``out`` when an earlier run with skipped images already completed it."""
    from dali_relabel.store import LabelMapStore

    tmp, old = out.with_name(out.name + _COMPACTING), out.with_name(out.name + _OLD)
    if not out.exists() and old.is_dir() and (tmp / "zarr.json").is_file():
        # A run killed between compact()'s two renames: the compacted store is finished.
        os.replace(tmp, out)
    if not (out / "zarr.json").is_file():
        return None
    try:
        store = LabelMapStore.open(out)
    except Exception:
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
