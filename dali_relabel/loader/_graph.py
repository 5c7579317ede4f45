"""The loader's DALI graphs: RandomResizedCrop training and center-crop evaluation.

The training graph is torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
in DALI operators, split so that the crop window leaves the graph: ReLabel (Yun et al.,
CVPR 2021) pools each image's label map over the same window. ``fn.decoders.image_random_crop``
picks its window internally and cannot export it, so the graph is

    readers.file -> peek_image_shape -> random_crop_generator -> decoders.image_slice
    -> resize -> crop_mirror_normalize (random mirror)

and exports, per sample, the window (anchor and shape in pixels, HW order), the
decoded image's shape and the mirror flag; :func:`train_boxes` turns them into
normalized (x1, y1, x2, y2) boxes of the original image. The reader's label is the
*sample index* (position in the file list the loader builds), the key on which
labels and label maps are joined. :class:`LoaderGraph` is the graph of one loader: it
builds an epoch's pipeline and reads a batch's outputs by name (never by position),
turning the exported windows into boxes and mirror flags.

Decoding runs on the GPU ("mixed") when a ``device_id`` is given and on the CPU
otherwise. EXIF orientation is ignored, as Pillow (and so torchvision's ImageFolder and
the teachers that made the label maps) ignores it: the maps and the decoded pixels
must share one orientation.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_relabel import _checks
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE
from dali_relabel.errors import ArgumentError

__all__ = [
    "EVAL_OUTPUTS",
    "TRAIN_OUTPUTS",
    "LoaderGraph",
    "build_eval_pipeline",
    "build_train_pipeline",
    "center_crop_boxes",
    "default_resize_size",
    "sample_indices",
    "train_boxes",
]

#: Outputs of :func:`build_train_pipeline`, in order.
TRAIN_OUTPUTS = ("images", "indices", "anchors", "shapes", "image_shapes", "mirrors")
#: Outputs of :func:`build_eval_pipeline`, in order.
EVAL_OUTPUTS = ("images", "indices", "image_shapes")

#: DALI reader name (for ``Pipeline.epoch_size``).
READER_NAME = "reader"

# Preallocation of the GPU decoder for ImageNet-sized JPEGs (DALI's ResNet-50 example).
_MIXED_DECODER_ARGS = {"device_memory_padding": 211_025_920, "host_memory_padding": 140_544_512}
# Beyond this many files a list file is written: DALI parses it in C++ an order of magnitude
# faster than it takes a Python list of ImageNet's 1.28M files.
_FILE_LIST_THRESHOLD = 20_000


def _dali_dtype(dtype: str):
    table = {"float32": types.FLOAT, "float16": types.FLOAT16}
    return table[_checks.one_of("dtype", dtype, sorted(table))]


def _reader(files: Sequence[str], labels: Sequence[int], file_root: str | None, list_dir):
    """fn.readers.file over ``files`` in the given order, label = sample index."""
    common = {
        "random_shuffle": False,  # the loader orders (and shards) the list per epoch
        "pad_last_batch": True,  # an epoch ends on a batch boundary; the loader trims the pad
        "name": READER_NAME,
    }
    safe = all(f == f.strip() and "\n" not in f and "\r" not in f for f in files)
    if list_dir is not None and safe and len(files) > _FILE_LIST_THRESHOLD:
        path = os.path.join(list_dir, "files.txt")
        with open(path, "w") as f:
            f.writelines(f"{name} {label}\n" for name, label in zip(files, labels, strict=True))
        return fn.readers.file(file_list=path, file_root=file_root, **common)
    return fn.readers.file(
        files=list(files), labels=[int(x) for x in labels], file_root=file_root, **common
    )


def _normalize(images, *, mirror, dtype: str, channels_last: bool, mean, std, crop=None):
    kwargs = {} if crop is None else {"crop": (crop, crop), "crop_pos_x": 0.5, "crop_pos_y": 0.5}
    return fn.crop_mirror_normalize(
        images,
        mirror=mirror,
        dtype=_dali_dtype(dtype),
        output_layout="HWC" if channels_last else "CHW",
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        **kwargs,
    )


def _check_common(files, labels, batch_size: int, crop_size: int, num_threads: int) -> None:
    if len(files) == 0:
        raise ArgumentError("files is empty; a DALI reader needs at least one file")
    if len(labels) != len(files):
        raise ArgumentError(
            f"labels must have one entry per file ({len(files)}), got {len(labels)}"
        )
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("crop_size", crop_size)
    _checks.positive_int("num_threads", num_threads)


def _build(graph, *, batch_size, num_threads, device_id, seed, prefetch_queue_depth, **kwargs):
    with tempfile.TemporaryDirectory(prefix="dali_relabel_") as list_dir:
        pipe = graph(
            list_dir=list_dir,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            seed=int(seed) & 0x7FFFFFFF,
            prefetch_queue_depth=prefetch_queue_depth,
            **kwargs,
        )
        pipe.build()  # reads the list file, so before it is removed
    return pipe


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
):
    """A built DALI pipeline of RandomResizedCrop training, outputs :data:`TRAIN_OUTPUTS`.

    Each ``run()`` returns one batch of ``batch_size`` samples, read in the order of
    ``files``: images (normalized, [B, 3, S, S] or [B, S, S, 3]), indices (the ``labels``,
    int32 [B, 1]), anchors and shapes of the crop windows (int32 [B, 2], pixels, (y, x)
    and (h, w)), image_shapes (int64 [B, 3], H, W, C) and mirrors (int32 [B], 1 where
    mirrored). After the last file the epoch's last batch is padded with that file; the
    next batch starts the list again.

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
        seed: seed of the crops and flips (same seed and files, same batches). Default: 0.
        prefetch_queue_depth: batches DALI computes ahead. Default: 2.
    """
    _check_common(files, labels, batch_size, crop_size, num_threads)
    decoder = "cpu" if device_id is None else "mixed"
    extra = {} if device_id is None else _MIXED_DECODER_ARGS

    @pipeline_def
    def graph(list_dir):
        encoded, indices = _reader(files, labels, _str(file_root), list_dir)
        image_shapes = fn.peek_image_shape(encoded, adjust_orientation=False)
        anchors, shapes = fn.random_crop_generator(
            image_shapes, random_area=list(scale), random_aspect_ratio=list(ratio)
        )
        images = fn.decoders.image_slice(
            encoded,
            anchors,
            shapes,
            device=decoder,
            output_type=types.RGB,
            axis_names="HW",  # the generator's anchor and shape are (y, x) and (h, w)
            normalized_anchor=False,
            normalized_shape=False,
            adjust_orientation=False,
            **extra,
        )
        images = fn.resize(
            images, size=[crop_size, crop_size], interp_type=types.INTERP_LINEAR, antialias=True
        )
        mirrors = fn.random.coin_flip(probability=0.5)
        images = _normalize(
            images, mirror=mirrors, dtype=dtype, channels_last=channels_last, mean=mean, std=std
        )
        return images, indices, anchors, shapes, image_shapes, mirrors

    return _build(
        graph,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
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
    image_shapes as in :func:`build_train_pipeline`; reading order and padding as there.

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
    decoder = "cpu" if device_id is None else "mixed"
    extra = {} if device_id is None else _MIXED_DECODER_ARGS

    @pipeline_def
    def graph(list_dir):
        encoded, indices = _reader(files, labels, _str(file_root), list_dir)
        image_shapes = fn.peek_image_shape(encoded, adjust_orientation=False)
        images = fn.decoders.image(
            encoded, device=decoder, output_type=types.RGB, adjust_orientation=False, **extra
        )
        images = fn.resize(
            images, resize_shorter=resize_size, interp_type=types.INTERP_LINEAR, antialias=True
        )
        images = _normalize(
            images,
            mirror=0,
            dtype=dtype,
            channels_last=channels_last,
            mean=mean,
            std=std,
            crop=crop_size,
        )
        return images, indices, image_shapes

    return _build(
        graph,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=0,
        prefetch_queue_depth=prefetch_queue_depth,
    )


def _str(path) -> str | None:
    return None if path is None else os.fspath(path)


def default_resize_size(crop_size: int) -> int:
    """Shorter side before the evaluation center crop: ``round(crop_size / 0.875)``."""
    return round(crop_size / 0.875)


def train_boxes(anchors: np.ndarray, shapes: np.ndarray, image_shapes: np.ndarray) -> np.ndarray:
    """Crop windows as normalized (x1, y1, x2, y2) boxes of the original images, float32 [B, 4].

    Args:
        anchors: (y, x) of each window's top-left pixel, [B, 2] (the generator's output).
        shapes: (h, w) of each window in pixels, [B, 2].
        image_shapes: (H, W, C) of each decoded image, [B, 3] (``peek_image_shape``).
    """
    hw = image_shapes[:, :2].astype(np.float64)
    start = anchors.astype(np.float64) / hw
    stop = (anchors + shapes).astype(np.float64) / hw
    # (y, x) pairs become x1, y1, x2, y2
    boxes = np.stack([start[:, 1], start[:, 0], stop[:, 1], stop[:, 0]], axis=1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def center_crop_boxes(image_shapes: np.ndarray, crop_size: int, resize_size: int) -> np.ndarray:
    """The evaluation crop as normalized (x1, y1, x2, y2) boxes of the original images.

    Args:
        image_shapes: (H, W, C) of each image, [B, 3].
        crop_size: side of the center crop.
        resize_size: shorter side the image was resized to before the crop.
    """
    hw = image_shapes[:, :2].astype(np.float64)
    scale = resize_size / hw.min(axis=1, keepdims=True)
    half = np.minimum(0.5 * crop_size / (hw * scale), 0.5)  # (h, w) half-extents, normalized
    boxes = np.stack([0.5 - half[:, 1], 0.5 - half[:, 0], 0.5 + half[:, 1], 0.5 + half[:, 0]], 1)
    return boxes.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LoaderGraph:
    """One loader's DALI graph: an epoch's pipeline, and a batch's outputs read by name.

    Attributes:
        files: sample paths relative to ``file_root``; position = sample index.
        file_root: the image folder.
        train: RandomResizedCrop + flip (:func:`build_train_pipeline`), else resize and
            center crop (:func:`build_eval_pipeline`).
        batch_size, crop_size, resize_size, mean, std, scale, ratio, dtype,
        channels_last, device_id, num_threads: as in :func:`build_train_pipeline` and
            :func:`build_eval_pipeline`.
        seed, rank: crops and flips of epoch ``e`` are seeded by (seed, e, rank).
    """

    files: Sequence[str]
    file_root: str
    train: bool
    batch_size: int
    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    dtype: str
    channels_last: bool
    device_id: int | None
    num_threads: int
    seed: int
    rank: int

    @property
    def output_names(self) -> tuple[str, ...]:
        """What each pipeline output is, in order: :data:`TRAIN_OUTPUTS` or :data:`EVAL_OUTPUTS`."""
        return TRAIN_OUTPUTS if self.train else EVAL_OUTPUTS

    def build(self, order: np.ndarray, epoch: int, prefetch_queue_depth: int) -> Any:
        """The built pipeline that reads the samples ``order`` (sample indices) once."""
        files = [self.files[i] for i in order.tolist()]
        common = {
            "batch_size": self.batch_size,
            "file_root": self.file_root,
            "crop_size": self.crop_size,
            "mean": self.mean,
            "std": self.std,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "device_id": self.device_id,
            "num_threads": self.num_threads,
            "prefetch_queue_depth": prefetch_queue_depth,
        }
        if not self.train:
            return build_eval_pipeline(files, order, resize_size=self.resize_size, **common)
        seed = np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)
        return build_train_pipeline(
            files, order, scale=self.scale, ratio=self.ratio, seed=int(seed[0]), **common
        )

    def by_name(self, outputs: Sequence[Any]) -> dict[str, Any]:
        """One iteration's outputs (DALI TensorLists) keyed by :attr:`output_names`."""
        return dict(zip(self.output_names, outputs, strict=True))

    def boxes(self, named: dict[str, Any], count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` samples' crops: boxes float32 [count, 4] as normalized
        (x1, y1, x2, y2) of the original images, and mirror flags bool [count]."""
        if "anchors" in named:  # training: the exported random windows
            boxes = train_boxes(
                named["anchors"].as_array()[:count],
                named["shapes"].as_array()[:count],
                named["image_shapes"].as_array()[:count],
            )
            mirrors = named["mirrors"].as_array().reshape(-1)[:count].astype(bool)
            return boxes, mirrors
        shapes = named["image_shapes"].as_array()[:count]
        boxes = center_crop_boxes(shapes, self.crop_size, self.resize_size)
        return boxes, np.zeros(count, dtype=bool)


def sample_indices(named: dict[str, Any], count: int) -> np.ndarray:
    """The sample indices of a batch's first ``count`` samples (the reader's labels), int64."""
    return np.asarray(named["indices"].as_array()).reshape(-1)[:count].astype(np.int64)
