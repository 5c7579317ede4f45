"""dali_relabel: ReLabel targets (Yun et al., CVPR 2021) at the speed of a DALI pipeline.

Heavy parts (DALI, the loader, the teachers) import lazily, so that
``import dali_relabel`` and the label-map store work without DALI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "LabelMapStore",
    "LabelPooling",
    "LocalSoftTargetCrossEntropy",
    "ReLabelLoader",
    "SoftTargetCrossEntropy",
    "__version__",
    "label_pooling",
    "relabel_targets",
    "soft_target_cross_entropy",
]

# public name -> module that defines it
_LAZY = {
    "LabelMapStore": "dali_relabel.store",
    "LabelPooling": "dali_relabel.ops.label_pooling",
    "label_pooling": "dali_relabel.ops.label_pooling",
    "relabel_targets": "dali_relabel.ops.label_pooling",
    "ReLabelLoader": "dali_relabel.loader",
    "SoftTargetCrossEntropy": "dali_relabel.losses",
    "LocalSoftTargetCrossEntropy": "dali_relabel.losses",
    "soft_target_cross_entropy": "dali_relabel.losses",
}

if TYPE_CHECKING:
    from dali_relabel.loader import ReLabelLoader
    from dali_relabel.losses import (
        LocalSoftTargetCrossEntropy,
        SoftTargetCrossEntropy,
        soft_target_cross_entropy,
    )
    from dali_relabel.ops.label_pooling import LabelPooling, label_pooling, relabel_targets
    from dali_relabel.store import LabelMapStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dali_relabel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
