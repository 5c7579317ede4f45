"""ReLabelLoader: a DALI ImageNet loader that yields ReLabel targets, used like a DataLoader.

ReLabel (Yun et al., CVPR 2021) trains on each image's label map pooled over the image's
random crop. This loader runs the DALI graphs of :mod:`dali_relabel.pipeline`, which
export every crop window, and joins each sample with its label map by *identity*: the
file list given to DALI carries each file's sample index as its label, and the index
looks up the class label and the store row in tables (one gather per batch), so no
shuffle, shard or padding can pair an image with another image's map. Label maps stay
in host memory, in GPU memory, or are streamed with read-ahead (``label_map_memory``, see
:mod:`dali_relabel.label_maps`), and :func:`~dali_relabel.ops.label_pooling.relabel_targets`
pools them on the images' device. docs/LOADER.md describes the semantics and the design.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dali_relabel import pipeline as _pipeline
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE
from dali_relabel.dataset import (
    ImageFolderList,
    ShardSampler,
    find_bad_images,
    resolve_shard,
)
from dali_relabel.errors import ImageDecodeError
from dali_relabel.label_maps import MEMORY, LabelMaps
from dali_relabel.store import LabelMapStore

__all__ = ["TARGETS", "ReLabelLoader"]

#: What ``targets=`` accepts; see :class:`ReLabelLoader`.
TARGETS = ("soft", "hard", "both", "local")
_BAD_IMAGE = ("raise", "skip")
# Batches each epoch's DALI pipeline computes ahead (fewer when the epoch is shorter).
_PREFETCH_DEPTH = 2
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "float32"}


class ReLabelLoader:
    """DALI loader of an ImageFolder tree yielding ReLabel targets; a drop-in DataLoader.

    Each ``iter(loader)`` runs one epoch, the next one unless :meth:`set_epoch` chose it,
    and yields fresh tensors on ``device``:

    - ``targets="soft"``: ``(images, soft)``, soft Tensor[B, C] float32, rows summing to 1:
      the sample's label map pooled over its crop (ReLabel's LabelPooling).
    - ``"hard"``: ``(images, labels)``, labels Tensor[B] int64.
    - ``"both"``: ``(images, soft, labels)``.
    - ``"local"``: ``(images, local)``, Tensor[B, C, h, w] float32 of ``local_size``, a
      distribution per cell, mirrored with the image.

    Images are Tensor[B, 3, S, S] (S = ``crop_size``) normalized with ``mean``/``std``.
    Class indices are positions in ``dataset.classes``: the store's class table when it
    records one (folder n01440764 gets ImageNet index 0 whatever folders exist), else the
    sorted folder names as ImageFolder gives them.

    Args:
        root: ImageFolder tree, class folders directly under it (e.g. ``imagenet/train``).
        label_maps: label-map store (path, URL or open :class:`LabelMapStore`), or None
            for hard targets only.
        batch_size: samples per batch (the last batch of an epoch may be smaller).
            Default: 256.
        train: RandomResizedCrop + flip, shuffled; False: resize, center crop, sample
            order. Default: True.
        targets: one of :data:`TARGETS`. Default: None ("soft" for training with label
            maps, else "hard").
        crop_size: side S of the output images. Default: 224.
        seed: seed of the order, crops and flips; same seed and epoch, same batches.
            Default: 0.
        rank: this process's shard. Default: None (torch.distributed's rank when it is
            initialized, else 0).
        world_size: number of shards. Default: None (torch.distributed's, else 1).
        drop_last: drop each epoch's last, smaller batch (training only). Default: None
            (False, as DataLoader).
        device: where batches and pooling live. Default: None (the current CUDA device
            when there is one, else the CPU; on the CPU every DALI operator runs on it).
        num_threads: DALI CPU threads. Default: None (CPU cores / LOCAL_WORLD_SIZE).
        dtype: image dtype, torch.float32, torch.float16 or torch.bfloat16.
            Default: torch.float32.
        memory_format: torch.contiguous_format or torch.channels_last.
            Default: torch.contiguous_format.
        shuffle: permute the samples each epoch. Default: None (= ``train``).
        mean: channel means on the 0-1 scale. Default: ImageNet's.
        std: channel standard deviations on the 0-1 scale. Default: ImageNet's.
        scale: RandomResizedCrop area range. Default: (0.08, 1.0).
        ratio: RandomResizedCrop aspect-ratio range. Default: (3/4, 4/3).
        resize_size: evaluation's shorter side before the center crop. Default: None
            (``round(crop_size / 0.875)``, 256 for 224).
        local_size: (h, w) of ``"local"`` targets. Default: None (``crop_size // 32`` per
            side, the final feature map of ResNet-like backbones: 7x7 at 224).
        temperature: divides pooled scores before the softmax. Default: 1.0.
        label_map_memory: "host" (the dataset's maps in host memory), "device" (on the
            CUDA device), "stream" (read from the store per batch, read-ahead in a
            thread) or "auto" (device if they take under a quarter of its free memory,
            else host if under half of the available memory, else stream).
            Default: "auto".
        on_bad_image: "raise" stops at the first undecodable file with an error naming
            it; "skip" checks every file at construction (signature bytes, JPEG end
            marker, Pillow) and leaves out those that fail, listed in
            :attr:`skipped_images`, with a warning. Default: "raise".
    """

    def __init__(
        self,
        root: str | os.PathLike,
        label_maps: str | os.PathLike | LabelMapStore | None,
        batch_size: int = 256,
        *,
        train: bool = True,
        targets: str | None = None,
        crop_size: int = 224,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool | None = None,
        device: torch.device | str | None = None,
        num_threads: int | None = None,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        shuffle: bool | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scale: tuple[float, float] = RRC_SCALE,
        ratio: tuple[float, float] = RRC_RATIO,
        resize_size: int | None = None,
        local_size: int | tuple[int, int] | None = None,
        temperature: float = 1.0,
        label_map_memory: str = "auto",
        on_bad_image: str = "raise",
    ) -> None:
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("crop_size", crop_size)
        if resize_size is not None:
            _check_positive_int("resize_size", resize_size)
            if not train and resize_size < crop_size:
                raise ValueError(
                    f"resize_size={resize_size} is smaller than crop_size={crop_size}: "
                    "evaluation resizes the shorter side to resize_size, then crops "
                    "crop_size; pass resize_size >= crop_size, or None for "
                    "round(crop_size / 0.875)"
                )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float, np.floating, np.integer))
            or not 0 < temperature < float("inf")
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        _check_channels("mean", mean, positive=False)
        _check_channels("std", std, positive=True)
        if targets is None:
            targets = "soft" if train and label_maps is not None else "hard"
        _check_choice("targets", targets, TARGETS)
        _check_choice("label_map_memory", label_map_memory, MEMORY)
        _check_choice("on_bad_image", on_bad_image, _BAD_IMAGE)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(
                "memory_format must be torch.contiguous_format or torch.channels_last, "
                f"got {memory_format}"
            )
        if drop_last and not train:
            raise ValueError(
                "drop_last=True drops evaluation samples; an evaluation loader (train=False) "
                "always yields every sample once"
            )
        if targets != "hard" and label_maps is None:
            raise ValueError(
                f"targets={targets!r} needs label maps; pass label_maps=<store path> or "
                "targets='hard'"
            )
        self.train = bool(train)
        self.targets = targets
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        self.drop_last = bool(drop_last) and self.train
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.memory_format = memory_format
        self.temperature = float(temperature)
        self.num_threads = _default_threads() if num_threads is None else int(num_threads)
        _check_positive_int("num_threads", self.num_threads)
        self.local_size = _local_size(local_size, self.crop_size)
        rank, world_size = resolve_shard(rank, world_size)
        self._mean, self._std = tuple(mean), tuple(std)
        self._scale, self._ratio = tuple(scale), tuple(ratio)
        self._resize_size = (
            _pipeline.default_resize_size(self.crop_size) if resize_size is None else resize_size
        )

        self.store = _open_store(label_maps)
        self.dataset = ImageFolderList.scan(root, store=self.store)
        self.skipped_images: list[tuple[str, str]] = []
        if on_bad_image == "skip":
            self._skip_bad_images()
        self.num_classes = (
            self.store.num_classes if self.store is not None else len(self.dataset.classes)
        )
        self._labels = torch.as_tensor(self.dataset.targets, dtype=torch.int64).to(self.device)
        self.label_map_memory: str | None = None
        self._label_maps: LabelMaps | None = None
        self._pooler: cf.ThreadPoolExecutor | None = None
        self._ahead_epoch: _Started | None = None
        if self.targets != "hard":
            if self.store is None:  # excluded by the checks above
                raise ValueError("label maps are needed for soft targets")
            self._label_maps = LabelMaps(
                self.store,
                self.dataset.store_rows(self.store),
                self.device,
                label_map_memory,
                progress=rank == 0,
            )
            self.label_map_memory = self._label_maps.memory
            if self.device.type == "cpu":
                # Pooling's small ops, parallelized over OpenMP threads that DALI's threads
                # keep busy, wait for each other: 100 ms per batch of 128 instead of 1 ms.
                # One thread of its own (the thread count is per calling thread) avoids it.
                self._pooler = cf.ThreadPoolExecutor(
                    1,
                    thread_name_prefix="dali_relabel_pool",
                    initializer=torch.set_num_threads,
                    initargs=(1,),
                )

        self.sampler = ShardSampler(
            len(self.dataset),
            shuffle=self.train if shuffle is None else bool(shuffle),
            seed=int(seed),
            rank=rank,
            world_size=world_size,
            drop_last=self.drop_last,
            even=self.train,
        )
        self.seed = int(seed)
        self._file_root = os.path.abspath(self.dataset.root)
        self._files = self.dataset.relative_paths()

    # -- construction ------------------------------------------------------------------
    def _skip_bad_images(self) -> None:
        bad = find_bad_images(self.dataset.paths)
        if not bad:
            return
        self.skipped_images = [(str(self.dataset.paths[i]), reason) for i, reason in bad]
        drop = {i for i, _ in bad}
        total = len(self.dataset)
        self.dataset = self.dataset.subset(i for i in range(total) if i not in drop)
        first, reason = self.skipped_images[0]
        warnings.warn(
            f"on_bad_image='skip': left out {len(bad):,} of {total:,} images that cannot be "
            f"decoded (first: {first} {reason}); the list is in loader.skipped_images",
            stacklevel=3,
        )
        if not len(self.dataset):
            raise ImageDecodeError(
                f"none of the {total:,} images under {str(self.dataset.root)!r} can be decoded "
                f"(first: {first} {reason}); root must hold images that DALI can decode"
            )

    # -- DataLoader surface ------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return self._num_batches(len(self.sampler))

    def _num_batches(self, samples: int) -> int:
        if self.drop_last:
            return samples // self.batch_size
        return -(-samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` next (same as ``loader.sampler.set_epoch(epoch)``)."""
        self.sampler.set_epoch(epoch)

    def reset(self) -> None:
        """Does nothing: every ``iter(loader)`` starts a new epoch (DALI iterators need it)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.sampler.epoch
        self.sampler.epoch = epoch + 1
        return _Epoch(self, epoch)

    def _start_ahead(self) -> None:
        """Start the next epoch's pipeline while this one hands out its last batches.

        Without it each epoch starts with an empty DALI queue. If the next ``iter()``
        asks for another epoch (``set_epoch``), the started pipeline is dropped.
        """
        epoch = self.sampler.epoch
        try:
            self._ahead_epoch = _Started(self, epoch, self.sampler.indices(epoch))
        except Exception:  # the same error comes back when that epoch runs
            self._ahead_epoch = None

    def __del__(self) -> None:
        pooler = getattr(self, "_pooler", None)
        if pooler is not None:
            pooler.shutdown(wait=False)

    def __repr__(self) -> str:
        s = self.sampler
        return (
            f"ReLabelLoader({str(self.dataset.root)!r}, samples={len(self.dataset)}, "
            f"batch_size={self.batch_size}, train={self.train}, targets={self.targets!r}, "
            f"crop_size={self.crop_size}, device={self.device}, rank={s.rank}/{s.world_size}, "
            f"label_map_memory={self.label_map_memory!r})"
        )

    # -- per epoch and per batch -------------------------------------------------------
    def build_pipeline(
        self, order: np.ndarray, epoch: int = 0, *, prefetch_queue_depth: int = _PREFETCH_DEPTH
    ) -> Any:
        """The built DALI pipeline that reads the samples ``order`` (sample indices) once.

        This is the loader's own graph; the benchmark runs it bare to measure what the
        targets cost. Crops and flips are seeded by (seed, epoch, rank).

        Args:
            order: sample indices in reading order.
            epoch: the epoch whose crops and flips to draw. Default: 0.
            prefetch_queue_depth: batches DALI computes ahead. Default: 2.
        """
        files = [self._files[i] for i in order.tolist()]
        common = {
            "batch_size": self.batch_size,
            "file_root": self._file_root,
            "crop_size": self.crop_size,
            "mean": self._mean,
            "std": self._std,
            "dtype": _DTYPES[self.dtype],
            "channels_last": self.memory_format == torch.channels_last,
            "device_id": self.device.index if self.device.type == "cuda" else None,
            "num_threads": self.num_threads,
            "prefetch_queue_depth": prefetch_queue_depth,
        }
        if not self.train:
            return _pipeline.build_eval_pipeline(
                files, order, resize_size=self._resize_size, **common
            )
        seed = np.random.SeedSequence([self.seed, epoch, self.sampler.rank]).generate_state(1)
        return _pipeline.build_train_pipeline(
            files, order, scale=self._scale, ratio=self._ratio, seed=int(seed[0]), **common
        )

    def _batch(
        self, outputs: Sequence[Any], expected: np.ndarray, maps: Any, exec_dynamic: bool
    ) -> tuple[torch.Tensor, ...]:
        count = len(expected)
        indices = np.asarray(outputs[1].as_array()).reshape(-1)[:count].astype(np.int64)
        if not np.array_equal(indices, expected):
            # The join below uses the indices DALI read, so targets stay right; the epoch's
            # coverage would not, hence an error rather than a silent fix.
            raise RuntimeError(
                "DALI read the samples in another order than the loader's file list "
                f"(first expected {expected[:4].tolist()}, got {indices[:4].tolist()}); "
                "please report this"
            )
        images = self._images(outputs[0], exec_dynamic)[:count]
        if self.targets == "hard":
            return images, self._labels[self._to_device(indices)]
        if self.train:
            boxes = _pipeline.train_boxes(
                outputs[2].as_array()[:count],
                outputs[3].as_array()[:count],
                outputs[4].as_array()[:count],
            )
            mirrors = outputs[5].as_array().reshape(-1)[:count].astype(bool)
        else:
            boxes = _pipeline.center_crop_boxes(
                outputs[2].as_array()[:count], self.crop_size, self._resize_size
            )
            mirrors = np.zeros(count, dtype=bool)
        if self._pooler is None:
            soft = self._soft_targets(indices, boxes, mirrors, maps)
        else:
            soft = self._pooler.submit(self._soft_targets, indices, boxes, mirrors, maps).result()
        if self.targets == "both":
            return images, soft, self._labels[self._to_device(indices)]
        return images, soft

    def _soft_targets(
        self, indices: np.ndarray, boxes: np.ndarray, mirrors: np.ndarray, maps: Any
    ) -> torch.Tensor:
        scores, classes = maps if maps is not None else self._label_maps.gather(indices)
        scores, classes = self._to_device(scores), self._to_device(classes)
        local = self.targets == "local"
        return _relabel_targets()(
            scores,
            classes,
            self._to_device(boxes),
            self.num_classes,
            output_size=self.local_size if local else 1,
            flip=self._to_device(mirrors) if local else None,
            temperature=self.temperature,
            validate=self.device.type == "cpu",  # a host sync on CUDA; boxes are ours
        )

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        # A blocking host-to-device copy synchronizes the stream: the loader would wait for
        # the trainer's queued GPU work on every batch. From pageable memory, CUDA stages
        # the bytes before the call returns, so the source may go right after.
        return tensor.to(self.device, non_blocking=True)

    def _images(self, tensor_list: Any, exec_dynamic: bool) -> torch.Tensor:
        if exec_dynamic:
            # DALI's dynamic executor gives every iteration buffers of its own, kept alive
            # by the DLPack reference: zero-copy and still a fresh tensor per batch (as
            # DALI's own PyTorch iterator does). A copy would cost ~10 ms per batch of 64.
            with torch.device(self.device):
                out = torch.from_dlpack(tensor_list.as_tensor())
        elif self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
            out = torch.empty(tensor_list.as_tensor().shape(), dtype=dtype, device=self.device)
            feed_ndarray(tensor_list, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            out = torch.from_numpy(tensor_list.as_array())  # as_array copies: a fresh tensor
        if self.dtype == torch.bfloat16:
            out = out.to(torch.bfloat16)
        if self.memory_format == torch.channels_last:
            out = out.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last strides
        return out

    def _decode_error(self, error: Exception, order: np.ndarray, batch: int) -> Exception:
        """An ImageDecodeError naming the file(s) behind a DALI failure, else ``error``."""
        # DALI computes a few batches ahead: the failure may come from any of them.
        lo = batch * self.batch_size
        candidates = order[lo : lo + 5 * self.batch_size].tolist()
        return self.dataset.explain_failure(candidates, str(error)) or error


class _Started:
    """A DALI pipeline for one epoch, run with DALI's scheduled API.

    ``run()`` would keep scheduling iterations past the epoch's last batch (a wasted
    batch or two of decoding per epoch, and a pipeline shutdown that waits for them);
    here exactly ``total`` iterations are scheduled, and the next epoch's pipeline can
    be started while this one delivers its last batches.
    """

    def __init__(self, loader: ReLabelLoader, epoch: int, order: np.ndarray) -> None:
        self.epoch = epoch
        self.order = order
        self.total = loader._num_batches(len(order))
        self.pipe = None
        self.scheduled = 0
        if self.total:
            # The first schedule_run() runs the queue's whole depth: no deeper than the
            # epoch, or a 1-batch epoch would decode a second batch only to drop it.
            depth = min(_PREFETCH_DEPTH, self.total)
            self.pipe = loader.build_pipeline(order, epoch, prefetch_queue_depth=depth)
            self.pipe.schedule_run()
            self.scheduled = depth

    def outputs(self) -> Any:
        outputs = self.pipe.outputs()
        if self.scheduled < self.total:
            self.pipe.schedule_run()
            self.scheduled += 1
        return outputs


class _Epoch:
    """One pass over this rank's samples of one epoch; made by ``iter(loader)``."""

    def __init__(self, loader: ReLabelLoader, epoch: int) -> None:
        self._loader = loader
        order = loader.sampler.indices(epoch)
        ahead, loader._ahead_epoch = loader._ahead_epoch, None
        # An evaluation pipeline has no randomness: any epoch's serves when the order matches.
        same_epoch = ahead is not None and (ahead.epoch == epoch or not loader.train)
        if same_epoch and np.array_equal(ahead.order, order):
            self._run = ahead
        else:
            self._run = _Started(loader, epoch, order)
        self._order = order
        self._total = self._run.total
        self._next = 0
        maps = loader._label_maps
        self._ahead = None if maps is None else maps.read_ahead(self._span, self._total)

    def _span(self, batch: int) -> np.ndarray:
        b = self._loader.batch_size
        return self._order[batch * b : (batch + 1) * b]

    def __iter__(self) -> _Epoch:
        return self

    def __len__(self) -> int:
        return self._total - self._next

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._next >= self._total:
            self._run = None
            raise StopIteration
        batch = self._next
        run = self._run
        try:
            outputs = run.outputs()
        except RuntimeError as e:
            self._run, self._next = None, self._total  # a failed DALI pipeline is dead
            raise self._loader._decode_error(e, self._order, batch) from e
        self._next += 1
        if run.scheduled == self._total and self._loader._ahead_epoch is None:
            self._loader._start_ahead()
        maps = None if self._ahead is None else self._ahead.pop()
        return self._loader._batch(outputs, self._span(batch), maps, run.pipe.exec_dynamic)


# -- helpers ------------------------------------------------------------------------------
def _relabel_targets():
    from dali_relabel.ops.label_pooling import relabel_targets

    return relabel_targets


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_channels(name: str, values: Any, *, positive: bool) -> None:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != 3 or (positive and min(floats) <= 0):
        what = "three numbers > 0" if positive else "three numbers"
        raise ValueError(
            f"{name} must be {what} (R, G, B on the 0-1 scale, e.g. ImageNet's "
            f"{IMAGENET_MEAN if name == 'mean' else IMAGENET_STD}), got {values!r}"
        )


def _local_size(size: int | tuple[int, int] | None, crop_size: int) -> tuple[int, int]:
    if size is None:
        side = max(1, crop_size // 32)
        return side, side
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"local_size must be a positive int or (h, w), got {size!r}")
    return int(pair[0]), int(pair[1])


def _open_store(label_maps: Any) -> LabelMapStore | None:
    if label_maps is None or isinstance(label_maps, LabelMapStore):
        return label_maps
    if isinstance(label_maps, (str, os.PathLike)):
        return LabelMapStore.open(label_maps)
    raise TypeError(
        f"label_maps must be a store path, URL or LabelMapStore, got {type(label_maps).__name__}"
    )


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} but CUDA is not available; use device='cpu'")
        return torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
    if device.type != "cpu":
        raise ValueError(f"device must be a CUDA device or 'cpu', got {device}")
    return device


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
