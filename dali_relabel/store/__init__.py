"""The label-map store: ReLabel's per-image top-k maps in one Zarr v3 group.

:class:`LabelMapStore` reads a store, :class:`LabelMapWriter` writes one resumably, and
:func:`compact` rewrites a written store without some of its rows, :func:`rewrite` in
the current format, and :func:`verify_store` reads every chunk and names each damaged
shard; :func:`scan_in_store_classes` lists an image folder in a store's class space,
and :func:`node_table` decodes a store once per node into a file every local rank maps.
Stores live in local folders or on S3 (``s3://bucket/path``, read in place; written
locally, then :func:`publish`-ed; docs/STORAGE.md). The format is in docs/FORMAT.md and
:mod:`dali_relabel.store._format`.
"""

from __future__ import annotations

from dali_relabel.store._classes import scan_in_store_classes
from dali_relabel.store._compaction import compact, find_compacted, rewrite
from dali_relabel.store._format import (
    DEFAULT_SHARD_SIZE,
    READABLE_VERSIONS,
    SCORE_DTYPES,
    SCORE_KINDS,
    SOURCE_CHECKS,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    class_dtype_for,
)
from dali_relabel.store._node_table import (
    CACHE_ENV,
    NodeTable,
    clear_node_tables,
    default_cache_dir,
    fill_table,
    node_table,
)
from dali_relabel.store._reader import LabelMapStore, open_store
from dali_relabel.store._s3 import STORAGE_OPTIONS, is_s3, parse_storage_option
from dali_relabel.store._upload import (
    finish_output,
    output_folder,
    publish,
    published,
    staging_folder,
)
from dali_relabel.store._verify import (
    ShardProblem,
    StoreReport,
    missing_shard_files,
    verify_store,
)
from dali_relabel.store._writer import LabelMapWriter

__all__ = [
    "CACHE_ENV",
    "DEFAULT_SHARD_SIZE",
    "READABLE_VERSIONS",
    "SCORE_DTYPES",
    "SCORE_KINDS",
    "SOURCE_CHECKS",
    "STORAGE_OPTIONS",
    "STORE_FORMAT",
    "STORE_FORMAT_VERSION",
    "LabelMapStore",
    "LabelMapWriter",
    "NodeTable",
    "ShardProblem",
    "StoreReport",
    "class_dtype_for",
    "clear_node_tables",
    "compact",
    "default_cache_dir",
    "fill_table",
    "find_compacted",
    "finish_output",
    "is_s3",
    "missing_shard_files",
    "node_table",
    "open_store",
    "output_folder",
    "parse_storage_option",
    "publish",
    "published",
    "rewrite",
    "scan_in_store_classes",
    "staging_folder",
    "verify_store",
]
