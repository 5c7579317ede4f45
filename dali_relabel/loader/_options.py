"""Checks and defaults of the loader's options (:class:`~dali_relabel.loader.ReLabelLoader`).

Each check raises :class:`~dali_relabel.errors.ArgumentError` naming the option, the
value received and what is accepted. The mixing options make a
:class:`~dali_relabel.loader._mixing.Mixer` here, checked against the loader's mode and
targets, and the function that draws each fed batch's mixing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from dali_relabel import _checks
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import ArgumentError
from dali_relabel.loader._mixing import Mixer, MixParams, mix_generator

__all__ = [
    "check_channels",
    "check_range",
    "default_threads",
    "loader_mixer",
    "mix_drawer",
    "resolve_device",
    "resolve_local_size",
]


def check_range(name: str, values: Any, default: str, *, high: float = math.inf) -> None:
    """A (low, high) range with 0 < low <= high (<= ``high``): RandomResizedCrop's scale
    and ratio, refused at construction rather than by DALI at the first batch."""
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (0 < lo <= hi <= high and hi < math.inf):
        bound = "" if high == math.inf else f" <= {high:g}"
        raise ArgumentError(
            f"{name} must be (low, high) with 0 < low <= high{bound}, got {values!r}; "
            f"RandomResizedCrop's default is {default}"
        )


def check_channels(name: str, values: Any, *, positive: bool) -> None:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != 3 or (positive and min(floats) <= 0):
        what = "three numbers > 0" if positive else "three numbers"
        raise ArgumentError(
            f"{name} must be {what} (R, G, B on the 0-1 scale, e.g. ImageNet's "
            f"{IMAGENET_MEAN if name == 'mean' else IMAGENET_STD}), got {values!r}"
        )


def resolve_local_size(size: int | tuple[int, int] | None, crop_size: int) -> tuple[int, int]:
    if size is None:
        side = max(1, crop_size // 32)
        return side, side
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ArgumentError(f"local_size must be a positive int or (h, w), got {size!r}")
    return int(pair[0]), int(pair[1])


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = _checks.device("device", device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device={device} but CUDA is not available; use device='cpu'")
        return torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
    if device.type != "cpu":
        raise ArgumentError(f"device must be a CUDA device or 'cpu', got {device}")
    return device


def default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def loader_mixer(num_classes: int, train: bool, targets: str, **options: Any) -> Mixer | None:
    """The loader's Mixer, its options checked; None when it neither mixes nor smooths."""
    mixer = Mixer(num_classes, **options)
    if not (mixer.active or mixer.label_smoothing):
        return None
    asked = "cutmix_alpha/mixup_alpha" if mixer.active else "label_smoothing"
    if not train:
        raise ArgumentError(
            f"{asked} given to an evaluation loader (train=False): mixing and smoothing are "
            "training options; pass them to the training loader only"
        )
    if targets == "hard":
        raise ArgumentError(
            f"{asked} needs soft targets, but targets='hard'; pass label maps and "
            "targets='soft' (or 'both')"
        )
    if targets == "local" and mixer.active:
        raise ArgumentError(
            "CutMix/Mixup of local targets is not offered: pass targets='soft' or 'both' to "
            "mix, or leave cutmix_alpha and mixup_alpha at 0 (label_smoothing alone smooths "
            "local targets per cell)"
        )
    return mixer


def mix_drawer(
    mixer: Mixer | None, seed: int, rank: int, size: int
) -> Callable[[int, int, int], MixParams] | None:
    """The mixing of training batch (epoch, batch) of ``count`` samples, from (seed, epoch,
    rank, batch) only; None when the loader does not mix."""
    if mixer is None or not mixer.active:
        return None

    def draw(epoch: int, batch: int, count: int) -> MixParams:
        return mixer.draw(mix_generator(seed, epoch, rank, batch), count, size, size)

    return draw
