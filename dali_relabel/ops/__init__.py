"""Custom PyTorch operators of dali_relabel."""

from __future__ import annotations

from dali_relabel.ops.label_pooling import LabelPooling, label_pooling, relabel_targets

__all__ = ["LabelPooling", "label_pooling", "relabel_targets"]
