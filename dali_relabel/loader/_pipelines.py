"""The loader's DALI graphs fed from a list of files: :func:`build_train_pipeline` and
:func:`build_eval_pipeline`, for comparison, benchmarks and tests.

Each is the graph a :class:`~dali_relabel.ReLabelLoader` runs (:mod:`._graph`), its inputs
pulled by ``fn.external_source`` from the files in their order, a batch at a time, the
list's last batch smaller, then the list again: ``pipe.run()`` gives the next batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dali_relabel import _checks
from dali_relabel._rrc import batch_generator
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE
from dali_relabel.errors import ArgumentError
from dali_relabel.loader._color import check_lighting
from dali_relabel.loader._graph import GraphSpec, build_graph, dali_dtype, default_resize_size

__all__ = ["build_eval_pipeline", "build_train_pipeline"]


def _encode_path(path: str | os.PathLike) -> np.ndarray:
    """A file path as the uint8 array ``fn.io.file.read`` takes (bytes as the OS has them)."""
    return np.frombuffer(os.fsencode(path), dtype=np.uint8)


class _FileCycle:
    """The inputs of :func:`build_train_pipeline` / :func:`build_eval_pipeline`: the files
    in order, ``batch_size`` at a time (the list's last batch smaller), then again."""

    def __init__(self, files, labels, batch_size: int, spec: GraphSpec, seed: int) -> None:
        self._paths = [_encode_path(f) for f in files]
        self._labels = np.asarray(labels, dtype=np.int64)
        self._batch_size = batch_size
        self._spec = spec
        self._seed = seed
        self._pass = self._batch = 0

    def __call__(self) -> tuple:
        start = self._batch * self._batch_size
        stop = min(start + self._batch_size, len(self._paths))
        batch = {"paths": self._paths[start:stop], "indices": self._labels[start:stop]}
        if self._spec.train:
            rng = batch_generator(self._seed, self._pass, 0, self._batch)
            batch.update(self._spec.draw(rng, stop - start))
        self._batch += 1
        if stop == len(self._paths):
            self._pass, self._batch = self._pass + 1, 0
        return tuple(batch[n] for n in self._spec.input_names)


def _check_common(files, labels, batch_size: int, crop_size: int, num_threads: int) -> None:
    if len(files) == 0:
        raise ArgumentError("files is empty; a DALI pipeline needs at least one file")
    if len(labels) != len(files):
        raise ArgumentError(
            f"labels must have one entry per file ({len(files)}), got {len(labels)}"
        )
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("crop_size", crop_size)
    _checks.positive_int("num_threads", num_threads)


def _joined(files: Sequence[str], file_root: str | os.PathLike | None) -> list[str]:
    if file_root is None:
        return [os.fspath(f) for f in files]
    return [os.path.join(os.fspath(file_root), os.fspath(f)) for f in files]


def build_train_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int,
    file_root: str | os.PathLike | None = None,
    crop_size: int = 224,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: str = "float32",
    channels_last: bool = False,
    device_id: int | None = None,
    num_threads: int = 2,
    seed: int = 0,
    prefetch_queue_depth: int = 2,
    lighting: float = 0.0,
):
    """A built DALI pipeline of RandomResizedCrop training, outputs :data:`TRAIN_OUTPUTS`.

    The loader's training graph, fed from ``files`` in their order: each ``run()``
    returns the next ``batch_size`` files (the list's last batch smaller, never padded;
    then the list starts again): images (normalized, [B, 3, S, S] or [B, S, S, 3]),
    indices (the ``labels``, int64 [B]), anchors and shapes of the crop windows (int32
    [B, 2], pixels, (y, x) and (h, w)), image_shapes (int64 [B, 3], H, W, C) and mirrors
    (int32 [B], 1 where mirrored).

    Args:
        files: image paths, absolute or relative to ``file_root``, in reading order.
        labels: one integer per file (the loader passes sample indices).
        batch_size: samples per batch.
        file_root: folder that relative ``files`` start from. Default: None.
        crop_size: side S of the square output. Default: 224.
        scale: range of the crop's area as a fraction of the image's. Default: (0.08, 1).
        ratio: range of the crop's aspect ratio (width / height). Default: (3/4, 4/3).
        mean: channel means on the 0-1 scale (RGB). Default: ImageNet's.
        std: channel standard deviations on the 0-1 scale. Default: ImageNet's.
        dtype: "float32" or "float16" images. Default: "float32".
        channels_last: HWC samples instead of CHW. Default: False.
        device_id: CUDA device for decoding ("mixed"), resizing and normalizing; None runs
            every operator on the CPU. Default: None.
        num_threads: DALI CPU worker threads. Default: 2.
        seed: seed of the crops and flips; batch ``b`` of pass ``p`` over the list draws
            from (seed, p, 0, b). Default: 0.
        prefetch_queue_depth: batches DALI computes ahead. Default: 2.
        lighting: standard deviation of the PCA lighting (the loader's ``lighting``,
            :mod:`._color`); 0 for none. Default: 0. (The loader's ``color_jitter`` runs
            after the graph, in torch.)
    """
    _check_common(files, labels, batch_size, crop_size, num_threads)
    _checks.at_least("seed", seed, 0)
    spec = GraphSpec(
        train=True,
        crop_size=crop_size,
        resize_size=default_resize_size(crop_size),
        scale=tuple(scale),
        ratio=tuple(ratio),
        mean=tuple(mean),
        std=tuple(std),
        dtype=dtype,
        channels_last=channels_last,
        device_id=device_id,
        lighting=check_lighting(lighting),
    )
    dali_dtype(dtype)
    source = _FileCycle(_joined(files, file_root), labels, batch_size, spec, seed)
    return build_graph(
        spec,
        batch_size=batch_size,
        num_threads=num_threads,
        prefetch_queue_depth=prefetch_queue_depth,
        source=source,
    )


def build_eval_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int,
    file_root: str | os.PathLike | None = None,
    crop_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: str = "float32",
    channels_last: bool = False,
    device_id: int | None = None,
    num_threads: int = 2,
    prefetch_queue_depth: int = 2,
):
    """A built DALI pipeline of evaluation preprocessing, outputs :data:`EVAL_OUTPUTS`.

    Resize the shorter side to ``resize_size``, crop the center ``crop_size`` square,
    normalize (torchvision's ``Resize`` + ``CenterCrop``). Outputs images, indices and
    image_shapes as in :func:`build_train_pipeline`; reading order and batches as there.

    Args:
        resize_size: shorter side before the crop. Default: None (``round(crop_size /
            0.875)``, 256 for 224).
        files, labels, batch_size, file_root, crop_size, mean, std, dtype, channels_last,
            device_id, num_threads, prefetch_queue_depth: as in :func:`build_train_pipeline`.
    """
    _check_common(files, labels, batch_size, crop_size, num_threads)
    resize_size = default_resize_size(crop_size) if resize_size is None else int(resize_size)
    if resize_size < crop_size:
        raise ArgumentError(f"resize_size ({resize_size}) must be >= crop_size ({crop_size})")
    dali_dtype(dtype)
    spec = GraphSpec(
        train=False,
        crop_size=crop_size,
        resize_size=resize_size,
        scale=RRC_SCALE,
        ratio=RRC_RATIO,
        mean=tuple(mean),
        std=tuple(std),
        dtype=dtype,
        channels_last=channels_last,
        device_id=device_id,
    )
    source = _FileCycle(_joined(files, file_root), labels, batch_size, spec, 0)
    return build_graph(
        spec,
        batch_size=batch_size,
        num_threads=num_threads,
        prefetch_queue_depth=prefetch_queue_depth,
        source=source,
    )
