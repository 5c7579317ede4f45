"""Adapters that put ReLabelLoader into the training scripts people run, one module per
trainer, each named after the script it adapts (the user imports from it; docs/INTEGRATION.md
lists the exact lines each script changes):

- :mod:`dali_relabel.compat.pytorch_examples`: pytorch/examples' ``imagenet/main.py``
  (``DataLoader``);
- :mod:`dali_relabel.compat.timm_train`: timm's ``train.py``, 1.0.28 and main
  (``create_dataset``, ``create_loader``, ``Mixup``, the smoothing losses);
- :mod:`dali_relabel.compat.dali_resnet50`: NVIDIA DALI's ResNet-50 example
  (``create_dali_pipeline``, ``DALIClassificationIterator``);
- :mod:`dali_relabel.compat.relabel_official`: the official ReLabel trainer
  (``load_data_loaders``);
- :func:`load_loaders`: torchvision's classification reference scripts.

The modules are imported on use (the timm adapter needs timm). :func:`create_loader` is
the former timm adapter, deprecated for :mod:`dali_relabel.compat.timm_train`.
"""

from __future__ import annotations

from dali_relabel.compat._timm import create_loader
from dali_relabel.compat._torchvision import load_loaders

__all__ = ["create_loader", "load_loaders"]
