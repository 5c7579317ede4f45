"""Adapters that put ReLabelLoader into existing training scripts, one module per trainer.

- :func:`create_loader`: timm's ``create_loader`` arguments (timm's ``train.py``);
- :func:`load_loaders`: torchvision's classification reference scripts.
"""

from __future__ import annotations

from dali_relabel.compat._timm import create_loader
from dali_relabel.compat._torchvision import load_loaders

__all__ = ["create_loader", "load_loaders"]
