"""pytorch/examples' ImageNet script (``imagenet/main.py``) on ReLabel targets.

:class:`DataLoader` takes ``torch.utils.data.DataLoader``'s arguments as the script passes
them, with the label-map store first, and reads what to do from the dataset's transform
and the sampler. The user's edit (docs/INTEGRATION.md, 4 lines)::

    from dali_relabel.compat.pytorch_examples import DataLoader as ReLabelDataLoader
    train_loader = ReLabelDataLoader("relabel_imagenet.zarr",     # was torch.utils.data.DataLoader(
    val_loader = ReLabelDataLoader("relabel_imagenet.zarr",       # was torch.utils.data.DataLoader(
    acc1, acc5 = accuracy(output, target.argmax(1), topk=(1, 5))  # in train()

Training batches are ``(images, soft targets [B, C])``, which ``nn.CrossEntropyLoss``
takes as they are; the training accuracy becomes agreement with the target's top class.
Evaluation batches are ``(images, labels [B])`` in the store's class space, and the
script's remainder evaluation (``Subset(val_loader.dataset, ...)`` in a DataLoader of its
own) gets images with the evaluation transform from ``val_loader.dataset``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dali_relabel.errors import ArgumentError, ArgumentTypeError
from dali_relabel.loader import ReLabelLoader
from dali_relabel.store import LabelMapStore, open_store

__all__ = ["DataLoader", "loader_options"]

_SUPPORTED = (
    "RandomResizedCrop, RandomHorizontalFlip(p=0.5), ColorJitter(hue=0), ToTensor, "
    "PILToTensor, ConvertImageDtype, Normalize (training); Resize(int), CenterCrop, "
    "ToTensor, PILToTensor, ConvertImageDtype, Normalize (evaluation)"
)


class DataLoader(ReLabelLoader):
    """A :class:`~dali_relabel.loader.ReLabelLoader` made from ``DataLoader``'s arguments.

    Args:
        label_maps: the label-map store (path, URL or open store) of the dataset's images;
            the same path opens once for both loaders.
        dataset: a ``torchvision.datasets.ImageFolder``: its ``root`` is the image
            folder, its ``transform`` says training or evaluation, the sizes, mean and
            std (:func:`loader_options`).
        batch_size: samples per batch and process. Default: 1.
        shuffle: shuffle when there is no sampler. Default: None (training shuffles).
        sampler: None, or a ``DistributedSampler``: its rank, replicas, shuffle, seed and
            drop_last are the loader's, and its epoch (which the script sets with
            ``train_sampler.set_epoch``) is read at every ``iter()``. Default: None.
        num_workers: DALI CPU threads; 0 for the loader's default. Default: 0.
        pin_memory: ignored (batches are made on their device). Default: False.
        drop_last: as DataLoader's. Default: False.
        **kwargs: further ReLabelLoader arguments (``targets="both"``, ``cutmix_alpha``,
            ...).
    """

    def __init__(
        self,
        label_maps: str | os.PathLike | LabelMapStore,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        options = loader_options(dataset)
        shard: dict[str, Any] = {"rank": 0, "world_size": 1}
        if sampler is not None:
            from torch.utils.data.distributed import DistributedSampler

            if not isinstance(sampler, DistributedSampler):
                raise ArgumentTypeError(
                    f"sampler must be None or a DistributedSampler, got "
                    f"{type(sampler).__name__}; the loader orders and shards the samples itself"
                )
            shard = {"rank": sampler.rank, "world_size": sampler.num_replicas}
            shuffle = sampler.shuffle
            kwargs.setdefault("seed", sampler.seed)
            drop_last = drop_last or sampler.drop_last
        self._external_sampler = sampler
        super().__init__(
            dataset.root,
            _store(label_maps),
            batch_size,
            shuffle=shuffle,
            num_threads=num_workers or None,
            drop_last=drop_last,
            **shard,
            **options,
            **kwargs,
        )

    def __iter__(self) -> Iterator:
        if self._external_sampler is not None:
            # the script sets the epoch on its own sampler object (train_sampler.set_epoch)
            self.set_epoch(self._external_sampler.epoch)
        return super().__iter__()


@functools.lru_cache(maxsize=8)
def _open(path: str) -> LabelMapStore:
    return open_store(path)


def _store(label_maps: str | os.PathLike | LabelMapStore) -> LabelMapStore:
    if isinstance(label_maps, LabelMapStore):
        return label_maps
    text = os.fspath(label_maps)
    return _open(text if "://" in text else str(Path(text).resolve()))


def loader_options(dataset: Any) -> dict[str, Any]:
    """ReLabelLoader options from an ImageFolder's torchvision transform.

    Training is ``RandomResizedCrop`` (+ flip, ``ColorJitter``); evaluation is ``Resize``
    + ``CenterCrop``; ``Normalize`` gives mean and std. A transform the loader cannot do
    is refused (ValueError naming it), never dropped.

    Args:
        dataset: anything with ``root`` and ``transform`` (a ``Compose`` or one transform).
    """
    if getattr(dataset, "root", None) is None or not hasattr(dataset, "transform"):
        raise ArgumentTypeError(
            f"dataset must be a torchvision ImageFolder (with .root and .transform), got "
            f"{type(dataset).__name__}; --dummy's FakeData has no image folder to read"
        )
    from torchvision import transforms as T

    steps = getattr(dataset.transform, "transforms", [dataset.transform])
    options: dict[str, Any] = {}
    for step in steps:
        name = type(step).__name__
        if isinstance(step, T.RandomResizedCrop):
            options.update(
                train=True, crop_size=_square(step.size, name), scale=step.scale, ratio=step.ratio
            )
            _bilinear(step, name)
        elif isinstance(step, T.RandomHorizontalFlip):
            if step.p != 0.5:
                raise ArgumentError(
                    f"RandomHorizontalFlip(p={step.p}): the loader flips with p=0.5"
                )
        elif isinstance(step, T.ColorJitter):
            options["color_jitter"] = _jitter(step)
        elif isinstance(step, T.Resize):
            if not isinstance(step.size, int) and len(step.size) != 1:
                raise ArgumentError(f"Resize({step.size}): the loader resizes the shorter side; "
                                    "pass one int")  # fmt: skip
            _bilinear(step, name)
            size = step.size if isinstance(step.size, int) else step.size[0]
            options.update(train=False, resize_size=int(size))
        elif isinstance(step, T.CenterCrop):
            options.update(train=False, crop_size=_square(step.size, name))
        elif isinstance(step, T.Normalize):
            options.update(mean=tuple(step.mean), std=tuple(step.std))
        elif isinstance(step, (T.ToTensor, T.PILToTensor, T.ConvertImageDtype)):
            continue
        else:
            raise ArgumentError(
                f"the dataset's transform holds {name}, which the loader does not do; "
                f"supported: {_SUPPORTED}"
            )
    if "train" not in options:
        raise ArgumentError(
            f"the dataset's transform has neither RandomResizedCrop nor Resize + CenterCrop "
            f"({dataset.transform!r}); supported: {_SUPPORTED}"
        )
    if not options["train"]:
        options.setdefault("targets", "hard")
    return options


def _square(size: Any, name: str) -> int:
    sizes = [size] if isinstance(size, int) else list(size)
    if len(set(sizes)) != 1:
        raise ArgumentError(f"{name}(size={size}): the loader makes square images; pass one int")
    return int(sizes[0])


def _bilinear(step: Any, name: str) -> None:
    mode = getattr(step, "interpolation", None)
    if mode is not None and getattr(mode, "value", mode) != "bilinear":
        raise ArgumentError(
            f"{name}(interpolation={mode}): the loader resizes with antialiased bilinear "
            "interpolation (torchvision's default); leave interpolation at its default"
        )


def _jitter(step: Any) -> tuple[float, float, float]:
    if step.hue not in (None, (0, 0), (0.0, 0.0)):
        raise ArgumentError(f"ColorJitter(hue={step.hue}): hue jitter is not offered; use hue=0")
    spans = []
    for name in ("brightness", "contrast", "saturation"):
        value = getattr(step, name)
        if value is None:
            spans.append(0.0)
        elif abs((1 - value[0]) - (value[1] - 1)) > 1e-9 or value[0] < 0:
            raise ArgumentError(f"ColorJitter({name}={value}): only ranges around 1 are offered")
        else:
            spans.append(float(value[1] - 1))
    return spans[0], spans[1], spans[2]
