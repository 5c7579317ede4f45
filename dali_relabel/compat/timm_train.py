"""timm's ``train.py`` (1.0.28 and main) on ReLabel targets: one import line.

In ``train.py``, after ``from timm.utils import NativeScaler``, add one line importing
``create_dataset, create_loader, Mixup, LabelSmoothingCrossEntropy, BinaryCrossEntropy``
from this module (the exact line is in docs/INTEGRATION.md), and name the label maps
on the command line: ``--dataset relabel:/data/relabel.zarr --data-dir /data/imagenet``
(timm's ``scheme:...`` idiom; it lands in the run's args.yaml). The names shadow timm's:

- :func:`create_dataset` resolves the split folder as timm does and returns a light
  :class:`ReLabelDataset` whose ``set_epoch`` reaches the loader (1.0.28's epoch hook);
- :func:`create_loader` builds a :class:`~dali_relabel.loader.ReLabelLoader` from timm's
  arguments: every augmentation timm asks for is done (RandomResizedCrop, flip,
  ``--color-jitter``, CutMix/Mixup and ``--smoothing`` through a ``FastCollateMixup``,
  mixing in the loader with region targets) or refused with the flag's name;
- :class:`Mixup` refuses ``--no-prefetcher`` with ``--mixup``/``--cutmix`` (timm's Mixup
  would one-hot the soft targets); the loader mixes with timm's prefetcher path;
- :class:`LabelSmoothingCrossEntropy` and :class:`BinaryCrossEntropy` smooth soft
  targets too (timm's gather class indices, or skip smoothing for dense targets).

Ignored, as they concern a torch DataLoader: ``use_prefetcher`` (batches come
normalized on their device), ``pin_memory``, ``persistent_workers``, ``worker_seeding``,
``use_multi_epochs_loader`` (the loader feeds the next epoch ahead already).
Interpolation: the loader resizes with antialiased bilinear; timm's default training
interpolation "random" (and "bicubic") runs as that, with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import ArgumentError, ArgumentTypeError, MissingDependencyError
from dali_relabel.loader import ReLabelLoader
from dali_relabel.store import LabelMapStore, open_store

try:
    from timm.loss import BinaryCrossEntropy as _TimmBinaryCrossEntropy
except ImportError as e:  # the adapter of timm's train.py, run where timm is installed
    raise MissingDependencyError(
        f"dali_relabel.compat.timm_train adapts timm's train.py and needs timm ({e}); "
        "pip install timm"
    ) from e

__all__ = [
    "BinaryCrossEntropy",
    "LabelSmoothingCrossEntropy",
    "Mixup",
    "ReLabelDataset",
    "create_dataset",
    "create_loader",
]

_SCHEME = "relabel:"
_TRAIN_SYNONYM = ("train", "training")
_EVAL_SYNONYM = ("val", "valid", "validation", "eval", "evaluation")
_DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT


class ReLabelDataset:
    """What :func:`create_dataset` returns: an image folder, its label maps, and the
    loader built from it (``set_epoch`` forwards to it).

    Attributes:
        root: the split's ImageFolder tree.
        store: the label-map store.
        is_training: built for training.
        seed: ``--seed``, the seed of the loader's order, crops and mixing.
    """

    def __init__(self, root: str, store: LabelMapStore, is_training: bool, seed: int) -> None:
        self.root = root
        self.store = store
        self.is_training = is_training
        self.seed = seed
        self.loader: ReLabelLoader | None = None
        self._epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` next (timm 1.0.28 calls it on the training dataset)."""
        self._epoch = int(epoch)
        if self.loader is not None:
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        if self.loader is None:
            raise TypeError("the dataset's length is its loader's: call create_loader first")
        return len(self.loader.dataset)

    def __repr__(self) -> str:
        return f"ReLabelDataset({self.root!r}, store={self.store.path!r})"


def create_dataset(
    name: str,
    root: str | None = None,
    split: str = "validation",
    search_split: bool = True,
    is_training: bool = False,
    **kwargs: Any,
) -> ReLabelDataset:
    """timm's ``create_dataset`` for ``--dataset relabel:<label-map store>``.

    Args:
        name: ``relabel:`` and the store's path or URL.
        root: ``--data-dir``, holding the split folders.
        split: ``--train-split`` / ``--val-split``; found as timm's ``_search_split`` finds
            it (``root/<split>``, else a synonym: train; val, valid, validation, eval,
            evaluation). Default: "validation".
        search_split: look for the split folder (else ``root`` itself). Default: True.
        is_training: the training split. Default: False.
        **kwargs: timm's other arguments (class_map, download, batch_size, seed, ...),
            which concern its own dataset classes; ``class_map`` is refused.
    """
    if not isinstance(name, str) or not name.startswith(_SCHEME) or len(name) == len(_SCHEME):
        raise ArgumentError(
            f"--dataset {name!r}: with dali_relabel pass --dataset relabel:<label-map store> "
            "(e.g. --dataset relabel:/data/relabel_imagenet.zarr) and the images with --data-dir"
        )
    if kwargs.get("class_map"):
        raise ArgumentError("--class-map is not offered: classes are the store's class table")
    if root is None:
        raise ArgumentError("--data-dir is needed: the folder holding train/ and val/")
    folder = _search_split(root, split) if search_split else root
    store = open_store(name[len(_SCHEME) :])
    return ReLabelDataset(folder, store, bool(is_training), int(kwargs.get("seed", 42)))


def _search_split(root: str, split: str) -> str:
    name = split.split("[")[0]
    path = os.path.join(root, name)
    if os.path.exists(path):
        return path
    synonyms = _TRAIN_SYNONYM if name in _TRAIN_SYNONYM else ()
    synonyms = _EVAL_SYNONYM if name in _EVAL_SYNONYM else synonyms
    for synonym in synonyms:
        if os.path.exists(os.path.join(root, synonym)):
            return os.path.join(root, synonym)
    return root


def create_loader(
    dataset: ReLabelDataset,
    input_size: int | Sequence[int],
    batch_size: int,
    is_training: bool = False,
    no_aug: bool = False,
    re_prob: float = 0.0,
    train_crop_mode: str | None = None,
    scale: Sequence[float] | None = None,
    ratio: Sequence[float] | None = None,
    hflip: float = 0.5,
    vflip: float = 0.0,
    color_jitter: float | Sequence[float] = 0.4,
    color_jitter_prob: float | None = None,
    grayscale_prob: float = 0.0,
    gaussian_blur_prob: float = 0.0,
    auto_augment: str | None = None,
    num_aug_repeats: int = 0,
    num_aug_splits: int = 0,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    num_workers: int = 1,
    distributed: bool = False,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    crop_border_pixels: int | None = None,
    collate_fn: Any = None,
    fp16: bool = False,
    img_dtype: torch.dtype = torch.float32,
    device: Any = None,
    tf_preprocessing: bool = False,
    **kwargs: Any,
) -> ReLabelLoader:
    """timm's ``create_loader``: a ReLabelLoader from the arguments train.py passes.

    Training loaders yield ``(images, soft targets [B, C])``, mixed and smoothed as a
    ``FastCollateMixup`` in ``collate_fn`` asks; evaluation loaders ``(images, labels
    [B])`` in the store's class space. ``drop_last`` is ``is_training``, as in timm.
    Arguments the loader cannot honour raise ArgumentError naming the flag.

    Args:
        dataset: from :func:`create_dataset`.
        input_size: ``(3, H, W)`` or ``H``, square.
        batch_size: samples per batch and process.
        is_training: training (RandomResizedCrop, flip, colour, mixing) or evaluation.
        crop_pct: evaluation resize ``floor(S / crop_pct)``, timm's. Default: None (0.875).
        color_jitter: timm's ``--color-jitter``: one number or 3 (4 with hue 0).
        collate_fn: None, or timm's ``FastCollateMixup``, whose settings the loader takes.
        img_dtype, fp16: image dtype.
        device: where batches live.
        Others: timm's, refused when they ask for what the loader does not do, else
            ignored as said in the module docstring.
    """
    if not isinstance(dataset, ReLabelDataset):
        raise ArgumentTypeError(
            f"dataset must come from dali_relabel.compat.timm_train.create_dataset, got "
            f"{type(dataset).__name__}; --aug-splits wraps it in AugMixDataset, which is not "
            "offered"
        )
    _refuse_unsupported(
        kwargs,
        no_aug=no_aug,
        re_prob=re_prob,
        train_crop_mode=train_crop_mode,
        hflip=hflip,
        vflip=vflip,
        color_jitter_prob=color_jitter_prob,
        grayscale_prob=grayscale_prob,
        gaussian_blur_prob=gaussian_blur_prob,
        auto_augment=auto_augment,
        num_aug_repeats=num_aug_repeats,
        num_aug_splits=num_aug_splits,
        crop_mode=crop_mode,
        crop_border_pixels=crop_border_pixels,
        tf_preprocessing=tf_preprocessing,
        is_training=is_training,
    )
    size = _square(input_size)
    if interpolation not in ("bilinear", ""):
        warnings.warn(
            f"interpolation={interpolation!r} (--interpolation/--train-interpolation): the "
            "loader resizes with antialiased bilinear interpolation",
            stacklevel=2,
        )
    options: dict[str, Any] = {
        "train": is_training,
        "crop_size": size,
        "mean": tuple(mean),
        "std": tuple(std),
        "num_threads": num_workers or None,
        "dtype": torch.float16 if fp16 else img_dtype,
        "device": device,
        "seed": dataset.seed,
    }
    if not distributed:
        options.update(rank=0, world_size=1)
    if is_training:
        options["drop_last"] = True
        options["targets"] = "soft"
        if scale is not None:
            options["scale"] = tuple(scale)
        if ratio is not None:
            options["ratio"] = tuple(ratio)
        if color_jitter:
            options["color_jitter"] = color_jitter
        options.update(_mixing(collate_fn, dataset.store))
    else:
        if collate_fn is not None:
            raise ArgumentError(
                "collate_fn is a training option: the evaluation loader mixes nothing"
            )
        options["targets"] = "hard"
        pct = _DEFAULT_CROP_PCT if crop_pct is None else crop_pct
        options["resize_size"] = math.floor(size / pct)  # timm floors
    loader = ReLabelLoader(dataset.root, dataset.store, batch_size, **options)
    dataset.loader = loader
    if dataset._epoch is not None:
        loader.set_epoch(dataset._epoch)
    return loader


def _refuse_unsupported(extra: dict[str, Any], *, is_training: bool, **given: Any) -> None:
    """ArgumentError naming the timm flag of the first option the loader cannot honour."""
    flags = {
        "no_aug": ("--no-aug", False),
        "re_prob": ("--reprob", 0.0),
        "hflip": ("--hflip", 0.5),
        "vflip": ("--vflip", 0.0),
        "color_jitter_prob": ("--color-jitter-prob", None),
        "grayscale_prob": ("--grayscale-prob", 0.0),
        "gaussian_blur_prob": ("--gaussian-blur-prob", 0.0),
        "auto_augment": ("--aa", None),
        "num_aug_repeats": ("--aug-repeats", 0),
        "num_aug_splits": ("--aug-splits", 0),
        "crop_border_pixels": ("--crop-border-pixels", None),
        "tf_preprocessing": ("--tf-preprocessing", False),
    }
    for name, (flag, fine) in flags.items():
        value = given[name]
        off = not value if fine in (None, 0.0, False) else value == fine  # None/0/"" are off
        if not off:
            if not is_training and name in ("re_prob", "hflip", "vflip", "no_aug"):
                continue  # training transforms: an evaluation loader does not use them
            raise ArgumentError(f"{flag} {value!r} is not offered by dali_relabel's loader")
    if given["train_crop_mode"] not in (None, "rrc"):
        raise ArgumentError(
            f"--train-crop-mode {given['train_crop_mode']!r}: only 'rrc' is offered"
        )
    if given["crop_mode"] not in (None, "center"):
        raise ArgumentError(f"--crop-mode {given['crop_mode']!r}: only 'center' is offered")
    ignored = {"re_mode", "re_count", "re_split", "pin_memory", "use_prefetcher",
               "use_multi_epochs_loader", "persistent_workers", "worker_seeding",
               "batch_choice_seed", "batch_choice_schedule", "batch_schedule_spread",
               "batch_schedule_random_mix"}  # fmt: skip
    schedule = {"input_size_choices", "batch_size_choices", "batch_choice_weights",
                "batch_schedule_epochs", "num_batches"}  # fmt: skip
    for name, value in extra.items():
        if name in schedule:
            if value is not None:
                raise ArgumentError(
                    f"{name}={value!r} (--train-img-sizes and the batch schedule) is not "
                    "offered: the loader's batches have one size"
                )
        elif name not in ignored:
            raise ArgumentError(f"create_loader got an argument it does not know: {name}")


def _square(input_size: int | Sequence[int]) -> int:
    if isinstance(input_size, int):
        return input_size
    height, width = tuple(input_size)[-2:]
    if height != width:
        raise ArgumentError(f"input_size must be square, got {tuple(input_size)}")
    return int(height)


def _mixing(collate_fn: Any, store: LabelMapStore) -> dict[str, Any]:
    """The loader's mixing options from timm's FastCollateMixup (None: no mixing)."""
    if collate_fn is None:
        return {}
    from timm.data import FastCollateMixup

    if not isinstance(collate_fn, FastCollateMixup):
        raise ArgumentTypeError(
            f"collate_fn must be None or timm's FastCollateMixup, got {type(collate_fn).__name__}"
        )
    if collate_fn.num_classes != store.num_classes:
        raise ArgumentError(
            f"--num-classes {collate_fn.num_classes} but the label maps have "
            f"{store.num_classes} classes; pass --num-classes {store.num_classes}"
        )
    if collate_fn.mode not in ("batch", "pair", "elem"):
        raise ArgumentError(f"--mixup-mode {collate_fn.mode!r}: batch, pair or elem are offered")
    return {
        "cutmix_alpha": collate_fn.cutmix_alpha,
        "mixup_alpha": collate_fn.mixup_alpha,
        "cutmix_minmax": collate_fn.cutmix_minmax,
        "mix_prob": collate_fn.mix_prob,
        "switch_prob": collate_fn.switch_prob,
        "mix_mode": collate_fn.mode,
        "correct_lam": collate_fn.correct_lam,
        "label_smoothing": collate_fn.label_smoothing,
    }


class Mixup:
    """timm's ``Mixup`` (the ``--no-prefetcher`` path) refused: with dali_relabel the
    loader mixes (timm's prefetcher path, ``FastCollateMixup``), where it knows each
    crop and pools region targets; timm's Mixup would one-hot the soft targets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ArgumentError(
            "--mixup/--cutmix with --no-prefetcher: with dali_relabel the loader mixes the "
            "batches (timm's prefetcher path); drop --no-prefetcher"
        )


def _smooth(target: torch.Tensor, smoothing: float, num_classes: int) -> torch.Tensor:
    return target * (1.0 - smoothing) + smoothing / num_classes


class LabelSmoothingCrossEntropy(nn.Module):
    """timm's ``LabelSmoothingCrossEntropy`` that takes soft targets too.

    Class indices [B]: timm's value, ``(1 - eps) * nll + eps * mean(-log p)``. Soft targets
    [B, C]: the cross-entropy against ``(1 - eps) * t + eps / C``, which is the same
    quantity for a one-hot ``t``.

    Args:
        smoothing: eps. Default: 0.1.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0 <= smoothing < 1:
            raise ArgumentError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing = float(smoothing)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logprobs = F.log_softmax(x, dim=-1)
        if target.is_floating_point():
            target = _smooth(target, self.smoothing, x.shape[-1])
            return torch.sum(-target * logprobs, dim=-1).mean()
        nll = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
        return ((1.0 - self.smoothing) * nll - self.smoothing * logprobs.mean(dim=-1)).mean()


_UNSET = object()


class BinaryCrossEntropy(_TimmBinaryCrossEntropy):
    """timm's ``BinaryCrossEntropy`` that smooths soft targets when smoothing is given.

    timm skips smoothing for targets already [B, C] ("applied upstream"), so with ReLabel
    targets ``--smoothing`` would be dropped. Here an explicit ``smoothing`` smooths them
    as ``(1 - eps) * t + eps / C``; without one (train.py's mixing branch, where the loader
    has smoothed), dense targets are used as they are. Class indices: timm's behaviour.
    """

    def __init__(self, smoothing: Any = _UNSET, **kwargs: Any) -> None:
        super().__init__(smoothing=0.1 if smoothing is _UNSET else smoothing, **kwargs)
        self._smooth_dense = smoothing is not _UNSET and smoothing > 0

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape == x.shape and self._smooth_dense:
            target = _smooth(target, self.smoothing, x.shape[-1])
        return super().forward(x, target)
