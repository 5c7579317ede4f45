"""Generation's label maps into store blocks, written in the background, bad images kept.

Maps arrive one image at a time; :class:`BlockBuffers` gathers them into the store's
blocks and hands each full block to :class:`~dali_relabel.store.LabelMapWriter` on a
background thread, so that writing overlaps the teacher. A block is flagged done only
when written whole, which is what lets an interrupted run resume at the first missing
block. Images that could not be decoded are kept in a list beside the store's arrays
(``bad_images.json``) until the run ends; when they are skipped,
:func:`~dali_relabel.store.compact` rewrites the store without their rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dali_relabel.store import LabelMapWriter

__all__ = ["BlockBuffers", "clear_bad_list", "load_bad_list"]

# Bad images found in an unfinished store, kept beside its arrays until compaction.
_BAD_LIST = "bad_images.json"


class BlockBuffers:
    """Collects per-sample maps into store blocks and writes full blocks in the background."""

    def __init__(
        self,
        writer: LabelMapWriter,
        keys: Sequence[str],
        skip_bad: bool,
        bad: dict[str, str],
        sources: np.ndarray | None = None,
    ):
        self.writer = writer
        self.sources = sources  # what each image was before it was decoded, per sample
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
        rows = None if self.sources is None else self.sources[start : start + len(buf[0])]
        self.pending.append(
            self.executor.submit(self.writer.write_block, start, buf[0], buf[1], rows)
        )

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
