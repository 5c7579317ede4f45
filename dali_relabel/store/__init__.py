"""The label-map store: ReLabel's per-image top-k maps in one Zarr v3 group.

:class:`LabelMapStore` reads a store, :class:`LabelMapWriter` writes one resumably, and
:func:`compact` rewrites a written store without some of its rows. The format is in
docs/FORMAT.md and :mod:`dali_relabel.store._format`.
"""

from __future__ import annotations

from dali_relabel.store._compaction import compact, find_compacted
from dali_relabel.store._format import (
    DEFAULT_SHARD_SIZE,
    SCORE_DTYPES,
    SCORE_KINDS,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    class_dtype_for,
)
from dali_relabel.store._reader import LabelMapStore, open_store
from dali_relabel.store._writer import LabelMapWriter

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "SCORE_DTYPES",
    "SCORE_KINDS",
    "STORE_FORMAT",
    "STORE_FORMAT_VERSION",
    "LabelMapStore",
    "LabelMapWriter",
    "class_dtype_for",
    "compact",
    "find_compacted",
    "open_store",
]
