"""The official ReLabel trainer (github.com/naver-ai/relabel_imagenet) on this loader:
a one-line import swap in its ``train.py``::

    from dali_relabel.compat.relabel_official import load_data_loaders  # was utils.data_loader

:func:`load_data_loaders` reads the same configuration (``args.data``, ``context``) and
returns what the official one returns, ``(train_loader, val_loader, batch_fn)``, with the
official recipe: RandomResizedCrop(scale=(rrc_minimum, 1)) + flip + ColorJitter(0.4,
0.4, 0.4) + PCA lighting 0.1 for training; resize ``ceil(image_size / crop_ratio)`` +
centre crop for evaluation. ``--data.relabel.path`` names the store converted from the
official maps (``dali-relabel convert <official .pt folder> relabel.zarr``, whose default
layout reproduces the official targets).

Differences, by design: the trainer's own CutMix (``cutmix_batch``) mixes the batches as
before (the loader mixes nothing here, or batches would be mixed twice); the loader counts
epochs by itself where the official sampler repeats epoch 0's order (it never calls
``set_epoch``); the validation loader is not sharded, as the official one (every rank
evaluates the whole set and ``compute_accuracy_dist`` gathers them).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from dali_relabel.errors import ArgumentError
from dali_relabel.loader import ReLabelLoader
from dali_relabel.store import open_store

__all__ = ["load_data_loaders", "to_one_hot"]

#: The official recipe's colour augmentation (utils/data_loader.py).
COLOR_JITTER = 0.4
LIGHTING = 0.1


def load_data_loaders(dataset: str, args: Any, context: Any) -> tuple[Any, Any, Any]:
    """The official ``load_data_loaders``: ``(train_loader, val_loader, batch_fn)``.

    Reads ``args.data.data_path`` (``train/`` and ``val/`` under it), ``args.data.relabel.use``
    and ``.path``, ``args.data.image_size``, ``args.data.rrc_minimum``,
    ``args.data.crop_ratio``, ``context.batch_size``, ``context.val_batch_size``,
    ``context.num_workers`` and ``context.num_classes``.

    Args:
        dataset: ``args.data.dataset``; "imagenet" (any case).
        args: the official configuration (a Munch).
        context: the official run context.
    """
    if dataset.lower() != "imagenet":
        raise ValueError(f"Unknown dataset {dataset}.")
    data = args.data
    use_relabel = bool(data.relabel.use)
    store = _store(data.relabel.path) if use_relabel else None
    num_classes = getattr(context, "num_classes", None)
    if store is not None and num_classes is not None and num_classes != store.num_classes:
        raise ArgumentError(
            f"context.num_classes={num_classes} but the label maps {store.path!r} have "
            f"{store.num_classes} classes"
        )
    size = int(data.image_size)
    threads = int(context.num_workers) or None
    train = ReLabelLoader(
        os.path.join(data.data_path, "train"),
        store,
        int(context.batch_size),
        targets="both" if use_relabel else "hard",
        crop_size=size,
        scale=(float(data.rrc_minimum), 1.0),
        color_jitter=COLOR_JITTER,
        lighting=LIGHTING,
        num_threads=threads,
    )  # sharded by torch.distributed, as the official DistributedSampler
    val = ReLabelLoader(
        os.path.join(data.data_path, "val"),
        store,
        int(context.val_batch_size),
        train=False,
        targets="hard",
        crop_size=size,
        resize_size=math.ceil(size / float(data.crop_ratio)),  # the official rounds up
        num_threads=threads,
        rank=0,
        world_size=1,  # every rank evaluates the whole set, as the official loader
    )
    print(f"Training epoch size: {len(train.dataset)}")
    print(f"Validation epoch size: {len(val.dataset)}")
    return train, val, relabel_batch_fn if use_relabel else original_batch_fn


def relabel_batch_fn(
    batch: tuple[torch.Tensor, ...], num_classes: int = 1000, mode: str | None = None
) -> tuple[torch.Tensor, ...]:
    """The official ``relabel_batch_fn`` on this loader's batches: ``(images, one-hot
    labels, ReLabel targets)``, or ``(images, one-hot labels)`` for ``mode="val"``."""
    if mode == "val":
        images, labels = batch
        return images, to_one_hot(labels, num_classes)
    images, soft, labels = batch
    return images, to_one_hot(labels, num_classes), soft


def original_batch_fn(
    batch: tuple[torch.Tensor, ...], num_classes: int = 1000, mode: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``original_batch_fn`` (``relabel.use False``): ``(images, one-hot
    labels)``; it takes the ``mode`` that train.py passes (the official one does not)."""
    images, labels = batch
    return images, to_one_hot(labels, num_classes)


def to_one_hot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The official ``to_one_hot``: float32 [B, C], 1 at the label; [B, C] input as it is."""
    if x.dim() > 1 and x.shape[-1] == num_classes:
        return x
    x = x.long().view(-1, 1)
    out = torch.zeros(x.shape[0], num_classes, device=x.device)
    return out.scatter_(1, x, 1.0)


def _store(path: Any):
    folder = Path(os.fspath(path))
    if folder.is_dir() and not (folder / "zarr.json").exists() and any(folder.glob("*/*.pt")):
        raise ArgumentError(
            f"--data.relabel.path {str(folder)!r} is a folder of the official .pt label maps; "
            f"convert it once with `dali-relabel convert {folder} relabel.zarr` and pass the "
            "store"
        )
    return open_store(path)
