"""ReLabelLoader: a DALI ImageNet loader that yields ReLabel targets, used like a DataLoader.

ReLabel (Yun et al., CVPR 2021) trains on each image's label map pooled over the image's
random crop. This module is the loader's surface: its options, checked at construction,
and DataLoader's interface (``len``, ``iter``, ``set_epoch``, ``sampler``, ``dataset``).
The work is behind it, one concept per module, data flowing one way:

- :mod:`~dali_relabel.imagefolder` lists the samples; :mod:`._sampler` orders and
  shards them per epoch;
- :mod:`._graph` is the DALI graph, fed per batch with file paths, *sample indices* and
  (:mod:`dali_relabel._rrc`) the crop and flip draws, which exports every crop window;
- :mod:`._epoch` runs the loader's one pipeline through all epochs, fed ahead across
  epoch ends; :mod:`._state` is its place in them for resuming (``state_dict``);
- :mod:`._batch` joins each batch with its labels and label maps by sample index, so no
  shuffle, shard or prefetch can pair an image with another image's map, and pools them;
- :mod:`._label_maps` is the only door to the store: placement of the maps
  (``label_map_memory``), the gather, the read-ahead.

docs/LOADER.md describes the semantics and the design.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dali_relabel import _checks
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE
from dali_relabel.errors import ArgumentError
from dali_relabel.imagefolder import MAX_IMAGE_PIXELS
from dali_relabel.loader._batch import BatchAssembler
from dali_relabel.loader._color import check_color_jitter, check_lighting
from dali_relabel.loader._dataset import LoaderDataset
from dali_relabel.loader._epoch import PREFETCH_DEPTH, Epoch, Epochs
from dali_relabel.loader._graph import LoaderGraph, default_resize_size
from dali_relabel.loader._images import HeaderCheck, skip_bad_images
from dali_relabel.loader._label_maps import LOAD, MEMORY, LabelMaps, store_rows
from dali_relabel.loader._options import (
    check_channels,
    check_range,
    default_threads,
    loader_mixer,
    mix_drawer,
    resolve_device,
    resolve_local_size,
)
from dali_relabel.loader._sampler import ShardBatchSampler, ShardSampler, resolve_shard
from dali_relabel.loader._state import STATE_VERSION, check_state, dataset_fingerprint
from dali_relabel.store import LabelMapStore, open_store, scan_in_store_classes

__all__ = ["BAD_IMAGE", "TARGETS", "ReLabelLoader"]

#: What ``targets=`` accepts; see :class:`ReLabelLoader`.
TARGETS = ("soft", "hard", "both", "local")
#: What ``on_bad_image=`` accepts.
BAD_IMAGE = ("raise", "skip")
# image dtype -> what DALI computes in (bfloat16 is converted from float32 in torch)
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
        label_maps: label-map store (a path, ``s3://bucket/path.zarr`` or an open
            :class:`LabelMapStore`), or None for hard targets only.
        batch_size: samples per batch (the last batch of an epoch may be smaller; above
            the samples of a rank, one batch of all of them). Default: 256.
        train: RandomResizedCrop + flip, shuffled; False: resize, center crop, sample
            order. Default: True.
        targets: one of :data:`TARGETS`. Default: None ("soft" for training with label
            maps, else "hard").
        crop_size: side S of the output images. Default: 224.
        seed: seed of the order, crops and flips, an int >= 0; batch ``b`` of epoch ``e``
            on rank ``r`` depends only on (seed, e, r, b). Default: 0.
        rank: this process's shard. Default: None (torch.distributed's rank when it is
            initialized, as under torchrun (docs/DISTRIBUTED.md), else 0).
        world_size: number of shards. Default: None (torch.distributed's, else 1).
        drop_last: training: cut the samples to a multiple of ``world_size`` and drop
            each epoch's last, smaller batch; evaluation: leave out the last ``N mod
            world_size`` samples (as ``DistributedSampler(shuffle=False, drop_last=True)``)
            and keep the last batch. Default: None (False, as DataLoader).
        even_shards: every rank yields the same number of batches (ranks that
            all-reduce per batch cannot hang): shards are padded with repeats of the first
            samples, as DistributedSampler pads, or cut with ``drop_last``. False: every
            sample exactly once, shard sizes differing by at most one (for loops without
            per-batch collectives). Default: True.
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
        scale: RandomResizedCrop area range, 0 < low <= high <= 1 (torchvision's
            ``get_params``, computed in the DALI graph). Default: (0.08, 1.0).
        ratio: RandomResizedCrop aspect-ratio range (width / height). Default: (3/4, 4/3).
        resize_size: evaluation's shorter side before the center crop. Default: None
            (``round(crop_size / 0.875)``, 256 for 224).
        local_size: (h, w) of ``"local"`` targets. Default: None (``crop_size // 32`` per
            side, the final feature map of ResNet-like backbones: 7x7 at 224).
        temperature: divides pooled scores before the softmax. Default: 1.0.
        label_map_memory: "host" (the dataset's maps in host memory), "device" (on the
            CUDA device), "shared" (one table per node, decoded by the first local rank
            into a file under /dev/shm or ``label_map_cache`` and memory-mapped by every
            rank; reused by later runs while the store is unchanged), "stream" (read from
            the store per batch, read-ahead in a thread) or "auto" (device if they take
            under a quarter of its free memory, else, under half of the available memory,
            shared when several local ranks run (``LOCAL_WORLD_SIZE`` > 1) and host
            otherwise, else stream; a store on S3 is never streamed by "auto": its table
            is read once, shard by shard). docs/SCALE.md. Default: "auto".
        label_map_cache: node-local folder of the shared table. Default: None
            (/dev/shm when it has room, else ``$DALI_RELABEL_CACHE`` or
            ``~/.cache/dali_relabel``).
        label_map_load: when a "host" or "shared" table is read: "now" (in the
            constructor), "background" (on a thread from the first batch taken on: the
            constructor returns after listing the images, and batches read their maps
            from the store, as "stream" does, until the table is complete; the same maps,
            as strictly checked; an error of the load is raised at the next batch) or
            "auto" (background from 65,536 samples on; ImageNet's table takes 40-50
            CPU-seconds to decode).
            :attr:`label_maps_loading` tells whether it is still being read.
            Default: "auto".
        storage_options: how an ``s3://`` store is reached (``endpoint_url``,
            ``region``, ``profile``, ...; :meth:`LabelMapStore.open`); unset ones come
            from the AWS environment variables. Default: None.
        on_bad_image: "raise" stops at the first undecodable file with an error naming
            it; "skip" checks every file at construction (signature bytes, the size its
            header declares, JPEG end marker, Pillow) and leaves out those that fail,
            listed in :attr:`skipped_images`, with a warning. Default: "raise".
        max_image_pixels: the most pixels (width x height) an image's header may declare;
            more is refused as a damaged header or a decompression bomb (a 1.5 kB JPEG
            can declare 20,000 x 20,000): left out at construction with
            ``on_bad_image="skip"``, else read before the batch is fed to DALI, which
            never decodes it, and an error naming the file when the batch is due. None
            for no limit (and no header read). Default: Pillow's ``MAX_IMAGE_PIXELS``
            (89,478,485).
        cutmix_alpha, mixup_alpha, cutmix_minmax, mix_prob, switch_prob, mix_mode,
            correct_lam, label_smoothing: CutMix (Yun et al., ICCV 2019) and Mixup of
            training batches with timm's parameters and semantics, and label smoothing
            of the soft targets (:class:`~dali_relabel.loader._mixing.Mixer` explains
            each; docs/LOADER.md, "Mixing"). Defaults: 0, 0, None, 1.0, 0.5, "batch",
            True, 0 (no mixing, no smoothing).
        mix_targets: "region" gives each part of a mixed image the label map of the
            pixels it shows (crop and flip accounted for); "area" is the paper's
            lambda-weighted sum of the two crops' targets. Default: "region".
        color_jitter: ColorJitter of training images (after the DALI graph, on the
            images' device, before any mixing), a number or
            (brightness, contrast, saturation); 0.4 is the official ReLabel recipe's and
            timm's default. docs/LOADER.md ("Colour"). Default: None (off).
        lighting: standard deviation of AlexNet's PCA lighting (0.1 in the official
            recipe). Default: 0 (off).
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
        even_shards: bool = True,
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
        storage_options: dict[str, Any] | None = None,
        label_map_cache: str | os.PathLike | None = None,
        label_map_load: str = "auto",
        on_bad_image: str = "raise",
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        cutmix_alpha: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        mix_mode: str = "batch",
        correct_lam: bool = True,
        mix_targets: str = "region",
        label_smoothing: float = 0.0,
        color_jitter: float | tuple[float, ...] | None = None,
        lighting: float = 0.0,
    ) -> None:
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("crop_size", crop_size)
        if resize_size is not None:
            _checks.positive_int("resize_size", resize_size)
            if not train and resize_size < crop_size:
                raise ArgumentError(
                    f"resize_size={resize_size} is smaller than crop_size={crop_size}: "
                    "evaluation resizes the shorter side to resize_size, then crops "
                    "crop_size; pass resize_size >= crop_size, or None for "
                    "round(crop_size / 0.875)"
                )
        _checks.positive_number("temperature", temperature)
        _checks.at_least("seed", seed, 0)
        check_range("scale", scale, "(0.08, 1.0)", high=1.0)
        check_range("ratio", ratio, "(3/4, 4/3)")
        if max_image_pixels is not None:
            _checks.positive_int("max_image_pixels", max_image_pixels)
        check_channels("mean", mean, positive=False)
        check_channels("std", std, positive=True)
        if targets is None:
            targets = "soft" if train and label_maps is not None else "hard"
        _checks.one_of("targets", targets, TARGETS)
        _checks.one_of("label_map_memory", label_map_memory, MEMORY)
        _checks.one_of("label_map_load", label_map_load, LOAD)
        _checks.one_of("on_bad_image", on_bad_image, BAD_IMAGE)
        _checks.one_of("dtype", dtype, tuple(_DTYPES))
        _checks.one_of(
            "memory_format", memory_format, (torch.contiguous_format, torch.channels_last)
        )
        if drop_last and not even_shards:
            raise ArgumentError(
                "drop_last=True evens the shards by cutting the last N mod world_size samples; "
                "even_shards=False keeps every sample in uneven shards: pass one of them"
            )
        color_jitter, lighting = check_color_jitter(color_jitter), check_lighting(lighting)
        #: RandomResizedCrop's area and aspect-ratio ranges (training).
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        #: ColorJitter's (brightness, contrast, saturation) spans, or None; PCA lighting std.
        self.color_jitter, self.lighting = color_jitter, lighting
        if not train and (color_jitter is not None or lighting):
            raise ArgumentError(
                "color_jitter/lighting given to an evaluation loader (train=False): colour "
                "augmentation is a training option; pass it to the training loader only"
            )
        if targets != "hard" and label_maps is None:
            raise ArgumentError(
                f"targets={targets!r} needs label maps; pass label_maps=<store path> or "
                "targets='hard'"
            )
        self.train = bool(train)
        self.targets = targets
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size)
        #: Evaluation's shorter side before the center crop.
        self.resize_size = (
            default_resize_size(self.crop_size) if resize_size is None else int(resize_size)
        )
        self.drop_last = bool(drop_last)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.memory_format = memory_format
        self.temperature = float(temperature)
        self.num_threads = _checks.positive_int(
            "num_threads", default_threads() if num_threads is None else num_threads
        )
        self.local_size = resolve_local_size(local_size, self.crop_size)
        self.seed = int(seed)
        rank, world_size = resolve_shard(rank, world_size)

        self.store = None if label_maps is None else open_store(label_maps, storage_options)
        self.dataset = scan_in_store_classes(root, self.store)
        self.skipped_images: list[tuple[str, str]] = []
        if on_bad_image == "skip":
            self.dataset, self.skipped_images = skip_bad_images(self.dataset, max_image_pixels)
        #: The samples; ``dataset[i]`` is (image with the evaluation transform, class index),
        #: as ImageFolder with eval transforms gives it (:class:`LoaderDataset`).
        self.dataset = LoaderDataset(
            self.dataset,
            crop_size=self.crop_size,
            resize_size=self.resize_size,
            mean=mean,
            std=std,
        )
        self.num_classes = (
            self.store.num_classes if self.store is not None else len(self.dataset.classes)
        )
        self._mixer = loader_mixer(
            self.num_classes,
            self.train,
            self.targets,
            cutmix_alpha=cutmix_alpha,
            mixup_alpha=mixup_alpha,
            cutmix_minmax=cutmix_minmax,
            mix_prob=mix_prob,
            switch_prob=switch_prob,
            mode=mix_mode,
            correct_lam=correct_lam,
            mix_targets=mix_targets,
            label_smoothing=label_smoothing,
        )
        self.label_map_memory: str | None = None
        maps = None
        if self.targets != "hard":
            maps = LabelMaps(
                self.store,
                store_rows(self.store, self.dataset.keys, self.dataset.root),
                self.device,
                label_map_memory,
                progress=rank == 0,
                cache_dir=label_map_cache,
                load=label_map_load,
            )
            self.label_map_memory = maps.memory
        self._label_maps = maps
        self.sampler = ShardSampler(
            len(self.dataset),
            shuffle=self.train if shuffle is None else bool(shuffle),
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            drop_last=self.drop_last,
            even=bool(even_shards),
        )
        #: The batches of sample indices of an epoch (a DataLoader always has one; timm
        #: sets its epoch).
        self.batch_sampler = ShardBatchSampler(
            self.sampler, self.batch_size, drop_last=self.drop_last and self.train
        )
        if self.drop_last and self.train and len(self.sampler) < self.batch_size:
            raise ArgumentError(
                f"batch_size={self.batch_size} with drop_last=True and {len(self.sampler):,} "
                f"samples per rank: every epoch would be empty; pass a batch_size of at most "
                f"{len(self.sampler):,}, or drop_last=False for one batch of all samples"
            )
        self._graph = LoaderGraph(
            self.dataset.paths,
            train=self.train,
            crop_size=self.crop_size,
            resize_size=self.resize_size,
            mean=tuple(mean),
            std=tuple(std),
            scale=(float(scale[0]), float(scale[1])),
            ratio=(float(ratio[0]), float(ratio[1])),
            dtype=_DTYPES[dtype],
            channels_last=memory_format == torch.channels_last,
            device_id=self.device.index if self.device.type == "cuda" else None,
            num_threads=self.num_threads,
            seed=self.seed,
            rank=rank,
            color_jitter=color_jitter,
            lighting=lighting,
            paste=self._mixer is not None and self._mixer.cutmix_alpha > 0,
        )
        self._assemble = BatchAssembler(
            self._graph,
            targets=self.targets,
            device=self.device,
            dtype=dtype,
            channels_last=memory_format == torch.channels_last,
            labels=torch.as_tensor(self.dataset.targets, dtype=torch.int64).to(self.device),
            label_maps=maps,
            num_classes=self.num_classes,
            local_size=self.local_size,
            temperature=self.temperature,
            mixer=self._mixer,
        )
        self._epochs = Epochs(
            self.sampler,
            graph=self._graph,
            build=_build_pipeline_of(self),
            assemble=self._assemble,
            label_maps=maps,
            dataset=self.dataset,
            batch_size=self.batch_size,
            drop_last=self.drop_last and self.train,
            epoch_free=not (self.train or self.sampler.shuffle),
            draw_mix=mix_drawer(self._mixer, self.seed, rank, self.crop_size),
            headers=None
            if max_image_pixels is None or on_bad_image == "skip"  # checked at construction
            else HeaderCheck(self.dataset.paths, max_image_pixels, self.num_threads),
        )
        # (epoch, first batch) that the next iter() resumes, set by load_state_dict
        self._resume: tuple[int, int] | None = None
        self._fingerprint: str | None = None

    # -- DataLoader surface ------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return self._epochs.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Run epoch ``epoch`` next (same as ``loader.sampler.set_epoch(epoch)``).

        A trainer that starts at epoch E (``--start-epoch E``) and never calls it otherwise
        calls ``set_epoch(E)`` once before its first epoch: epochs then count on from E.
        """
        self.sampler.set_epoch(epoch)

    @property
    def label_maps_loading(self) -> bool:
        """Whether the label-map table is still being read on a thread
        (``label_map_load``); batches read their maps from the store meanwhile."""
        return self._label_maps is not None and self._label_maps.loading

    def wait_for_label_maps(self, timeout: float | None = None) -> bool:
        """Block until the label-map table is in memory (at once unless it is read in the
        background); False if ``timeout`` seconds passed first. Raises the error that
        ended the load (a damaged store's :class:`~dali_relabel.errors.StoreCorruptError`)."""
        return self._label_maps is None or self._label_maps.wait(timeout)

    @property
    def mixup_enabled(self) -> bool:
        """Whether training batches are mixed (timm's loader property of that name): False
        when no CutMix or Mixup is configured. Setting it to False stops mixing from the
        next batch taken on, including batches DALI made ahead (timm's train loop does it
        at ``--mixup-off-epoch``); label smoothing goes on."""
        return self._mixer is not None and self._mixer.active and self._mixer.enabled

    @mixup_enabled.setter
    def mixup_enabled(self, value: bool) -> None:
        if self._mixer is None or not self._mixer.active:
            if value:
                raise ArgumentError(
                    "mixup_enabled=True, but this loader has neither CutMix nor Mixup; pass "
                    "cutmix_alpha > 0 or mixup_alpha > 0 at construction"
                )
            return
        if self._mixer.enabled != bool(value):
            self._mixer.enabled = bool(value)
            self._epochs.refeed()  # the batches in flight were drawn the other way

    def reset(self) -> None:
        """Does nothing: every ``iter(loader)`` starts a new epoch (DALI iterators need it)."""

    def __iter__(self) -> Epoch:
        epoch, start = self.sampler.epoch, 0
        if self._resume is not None:
            (resumed, first), self._resume = self._resume, None
            if resumed == epoch:
                start = first
            else:
                warnings.warn(
                    f"the loader state loaded resumes epoch {resumed} at batch {first}, but "
                    f"epoch {epoch} was set to run: it runs from its start. Call "
                    f"set_epoch({resumed}) (or none) after load_state_dict to resume",
                    stacklevel=2,
                )
        self.sampler.epoch = epoch + 1
        return self._epochs.run(epoch, start)

    # -- resuming ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the loader is, to resume there with :meth:`load_state_dict` (torchdata's
        StatefulDataLoader convention).

        ``epoch`` and ``batches_yielded``: the epoch of the latest ``iter(loader)`` and the
        batches it has yielded while it runs, else the epoch that runs next and 0. The
        other entries (seed, world_size, dataset, ...) identify the batches; ``rank`` is
        recorded only: the state is the same on every rank. docs/LOADER.md ("Resuming").
        """
        if self._resume is not None:
            epoch, done = self._resume
        elif self._epochs.progress is not None and self._epochs.progress[1] < len(self):
            epoch, done = self._epochs.progress
        else:
            epoch, done = self.sampler.epoch, 0
        progress = {"version": STATE_VERSION, "epoch": epoch, "batches_yielded": done}
        return {**progress, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from :meth:`state_dict`) was: the next ``iter(loader)``
        yields the rest of that epoch, exactly the batches (samples, crops, flips,
        targets) the interrupted run would have yielded.

        Raises LoaderStateError for a state that another loader wrote (other seed, world
        size, dataset, batch size, ...). Calling ``set_epoch`` with that same epoch
        afterwards keeps the resume; another epoch starts from its beginning, with a
        warning.
        """
        epoch, start = check_state(state, self._identity(), len(self))
        self.sampler.set_epoch(epoch)
        self._resume = (epoch, start) if start else None

    def _identity(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.dataset.keys)
        s = self.sampler
        return {
            "train": self.train,
            "seed": self.seed,
            "rank": s.rank,
            "world_size": s.world_size,
            "num_samples": len(self.dataset),
            "dataset": self._fingerprint,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": s.shuffle,
            "even_shards": s.even,
        }

    def build_pipeline(self, *, prefetch_queue_depth: int = PREFETCH_DEPTH) -> Any:
        """The loader's DALI pipeline, built; the loader builds it once, at its first epoch
        (and again only after DALI failed on a batch).

        Its inputs are fed by name before each ``schedule_run()``
        (:data:`~dali_relabel.loader.TRAIN_INPUTS` or :data:`~dali_relabel.loader.EVAL_INPUTS`),
        its outputs are :data:`~dali_relabel.loader.TRAIN_OUTPUTS` or
        :data:`~dali_relabel.loader.EVAL_OUTPUTS`, its batch size is ``batch_size``
        (at most the samples per rank). A subclass or a wrapper of this method is what
        the loader runs.

        Args:
            prefetch_queue_depth: batches DALI computes ahead. Default: 2.
        """
        return self._graph.build(self._epochs.pipeline_batch_size, prefetch_queue_depth)

    def __del__(self) -> None:
        assemble = getattr(self, "_assemble", None)
        if assemble is not None:
            assemble.close()

    def __repr__(self) -> str:
        s = self.sampler
        return (
            f"ReLabelLoader({str(self.dataset.root)!r}, samples={len(self.dataset)}, "
            f"batch_size={self.batch_size}, train={self.train}, targets={self.targets!r}, "
            f"crop_size={self.crop_size}, device={self.device}, rank={s.rank}/{s.world_size}, "
            f"label_map_memory={self.label_map_memory!r})"
        )


# -- option helpers -----------------------------------------------------------------------
def _build_pipeline_of(loader: ReLabelLoader) -> Callable[[int], Any]:
    """``loader.build_pipeline``, looked up when called (a subclass's or a wrapper's runs),
    through a weak reference: the loader's parts hold no reference back to it, so a
    dropped loader is freed at once, with its pipeline and threads."""
    ref = weakref.ref(loader)

    def build(prefetch_queue_depth: int) -> Any:
        owner = ref()
        if owner is None:
            raise RuntimeError("the loader of this epoch was garbage collected")
        return owner.build_pipeline(prefetch_queue_depth=prefetch_queue_depth)

    return build
