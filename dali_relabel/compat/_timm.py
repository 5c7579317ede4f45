"""The former timm adapter, deprecated: :mod:`dali_relabel.compat.timm_train` replaces it.

It took the image folder and the label maps beside timm's ``create_loader`` arguments and
needed several edits of train.py and ``--no-prefetcher``; the replacement is one import
line (docs/INTEGRATION.md) and honours timm's mixing, smoothing and colour flags.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import ArgumentError
from dali_relabel.loader import ReLabelLoader
from dali_relabel.store import LabelMapStore

__all__ = ["create_loader"]

_DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT


def create_loader(
    root: str | os.PathLike,
    label_maps: str | os.PathLike | LabelMapStore | None,
    input_size: int | Sequence[int],
    batch_size: int,
    is_training: bool = False,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float | None = None,
    num_workers: int | None = None,
    seed: int = 42,
    device: Any = None,
    **kwargs: Any,
) -> ReLabelLoader:
    """A :class:`~dali_relabel.loader.ReLabelLoader` from timm's ``create_loader`` arguments.

    Args:
        root: ImageFolder tree (``train/`` or ``val/``).
        label_maps: label-map store of ``root``'s images; None for hard labels.
        input_size: ``(3, H, W)`` or ``H``; square only (H == W).
        batch_size: samples per batch and process.
        is_training: RandomResizedCrop + flip and soft targets; else center crop and hard
            labels in the store's class indices. Default: False.
        mean: channel means, 0-1 scale. Default: ImageNet's.
        std: channel standard deviations, 0-1 scale. Default: ImageNet's.
        crop_pct: evaluation crop / resize ratio (timm's): the shorter side becomes
            ``floor(size / crop_pct)``. Default: None (0.875).
        num_workers: DALI CPU threads. Default: None (the loader's default).
        seed: seed of order, crops and flips (timm's default seed). Default: 42.
        device: as ReLabelLoader's ``device``. Default: None.
        **kwargs: further :class:`ReLabelLoader` arguments (``targets``, ``dtype``, ...).
    """
    warnings.warn(
        "dali_relabel.compat.create_loader is deprecated: import create_dataset and "
        "create_loader from dali_relabel.compat.timm_train instead (docs/INTEGRATION.md)",
        DeprecationWarning,
        stacklevel=2,
    )
    size = input_size if isinstance(input_size, int) else tuple(input_size)[-2:]
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ArgumentError(f"input_size must be square, got {tuple(input_size)}")
        size = int(size[0])
    # timm's eval transform: floor(size / crop_pct), crop_pct 0.875 by default. The loader's
    # own default rounds instead (343 against timm's 342 for 300 px), so it is not used.
    resize = math.floor(size / (_DEFAULT_CROP_PCT if crop_pct is None else crop_pct))
    return ReLabelLoader(
        root,
        label_maps,
        batch_size,
        train=is_training,
        targets=kwargs.pop("targets", None if is_training else "hard"),
        crop_size=size,
        mean=mean,
        std=std,
        resize_size=resize,
        num_threads=num_workers,
        seed=seed,
        device=device,
        **kwargs,
    )
