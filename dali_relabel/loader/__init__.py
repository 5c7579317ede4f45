"""The DALI loader: :class:`ReLabelLoader`, a DataLoader that yields ReLabel targets.

Needs NVIDIA DALI (``pip install 'dali_relabel[cuda13]'`` or ``[cuda12]``); importing
this package without it raises MissingDependencyError saying which extra to install.
The DALI graphs are public for comparison and benchmarks (:func:`build_train_pipeline`,
:func:`build_eval_pipeline` and their box helpers). docs/LOADER.md.
"""

from __future__ import annotations

from dali_relabel._deps import require_dali

require_dali("dali_relabel.loader (ReLabelLoader)")

from dali_relabel.loader._graph import (  # noqa: E402  (after the check that names the extra)
    EVAL_INPUTS,
    EVAL_OUTPUTS,
    TRAIN_INPUTS,
    TRAIN_OUTPUTS,
    center_crop_boxes,
    default_resize_size,
    train_boxes,
)
from dali_relabel.loader._label_maps import MEMORY  # noqa: E402
from dali_relabel.loader._loader import BAD_IMAGE, TARGETS, ReLabelLoader  # noqa: E402
from dali_relabel.loader._pipelines import build_eval_pipeline, build_train_pipeline  # noqa: E402
from dali_relabel.loader._sampler import ShardSampler  # noqa: E402

__all__ = [
    "BAD_IMAGE",
    "EVAL_INPUTS",
    "EVAL_OUTPUTS",
    "MEMORY",
    "TARGETS",
    "TRAIN_INPUTS",
    "TRAIN_OUTPUTS",
    "ReLabelLoader",
    "ShardSampler",
    "build_eval_pipeline",
    "build_train_pipeline",
    "center_crop_boxes",
    "default_resize_size",
    "train_boxes",
]
