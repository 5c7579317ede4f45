"""Custom PyTorch operators of dali_relabel."""

from __future__ import annotations

from dali_relabel.ops.label_pooling import LabelPooling, label_pooling, relabel_targets
from dali_relabel.ops.region_pooling import region_pooling

__all__ = ["LabelPooling", "label_pooling", "region_pooling", "relabel_targets"]
