"""Adapters that put ReLabelLoader into existing training scripts, one module per trainer."""

from __future__ import annotations

from dali_relabel.compat.timm_loader import create_loader
from dali_relabel.compat.torchvision_references import load_loaders

__all__ = ["create_loader", "load_loaders"]
