"""Constants shared across dali_relabel (as timm's ``data/constants.py``)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_TOPK",
    "IMAGENET_MEAN",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD",
    "RRC_RATIO",
    "RRC_SCALE",
]

#: ImageNet channel statistics on the 0-1 scale (torchvision's convention).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

IMAGENET_NUM_CLASSES = 1000

#: RandomResizedCrop's area fraction and aspect-ratio ranges (torchvision defaults).
RRC_SCALE: tuple[float, float] = (0.08, 1.0)
RRC_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

#: The official ReLabel release: top-5 classes on a 15x15 grid.
DEFAULT_TOPK = 5
DEFAULT_GRID: tuple[int, int] = (15, 15)
