"""timm's ``create_loader`` with ReLabel targets: the arguments timm's train.py passes.

In timm's ``train.py`` (pytorch-image-models), replace the training loader with::

    from dali_relabel.compat import create_loader
    loader_train = create_loader(
        os.path.join(args.data_dir, "train"), args.label_maps, input_size=data_config["input_size"],
        batch_size=args.batch_size, is_training=True, num_workers=args.workers,
    )
    train_loss_fn = timm.loss.SoftTargetCrossEntropy()

and pass ``--no-prefetcher`` (batches already live on the device, normalized). Mixup
and CutMix mix hard labels and do not apply; ReLabel replaces them. The loader
shards by torch.distributed itself and ``loader.sampler.set_epoch(epoch)``, which
train.py calls, selects the epoch.
"""

from __future__ import annotations

import math
import os
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
