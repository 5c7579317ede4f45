"""One DALI iteration -> one batch: images, and targets joined by sample index.

Every batch carries the sample indices of its images (fed with the file paths and
returned by the graph, see :mod:`dali_relabel.loader._graph`). The targets are looked up
by them: class labels in a tensor on the device, label maps through
:class:`~dali_relabel.loader._label_maps.LabelMaps` (one gather), pooled over each
image's crop box by :func:`~dali_relabel.ops.label_pooling.relabel_targets` on the
images' device, or, when the loader mixes (CutMix, Mixup, label smoothing), by
:class:`~dali_relabel.loader._mixing.Mixer`, which mixes the images too. The images
reach torch through DLPack without a copy; host data reaches a CUDA device from pinned
memory (:mod:`._transfer`), so that no batch waits for the trainer's GPU work. Where
the loader jitters colours, each image is jittered with its own draws (the graph's
``color`` output, :func:`~dali_relabel.loader._color.jitter_`) before anything mixes
the images: Mixup blends and CutMix pastes (here, not in the graph) jittered images.
docs/LOADER.md ("The join", "Keeping the per-batch cost near zero").
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import threading
from typing import Any

import numpy as np
import torch

from dali_relabel.loader._color import jitter_
from dali_relabel.loader._graph import LoaderGraph, sample_indices
from dali_relabel.loader._label_maps import LabelMaps
from dali_relabel.loader._mixing import Mixer, MixParams
from dali_relabel.loader._transfer import to_device
from dali_relabel.ops.label_pooling import relabel_targets

__all__ = ["BatchAssembler"]


class BatchAssembler:
    """Makes the loader's batches from DALI outputs: ``assembler(outputs, expected, ...)``.

    Args:
        graph: the graph whose outputs arrive (read by name, boxes from its crops).
        targets: the loader's ``targets`` ("soft", "hard", "both" or "local").
        device: where batches live.
        dtype: image dtype (float32, float16 or bfloat16).
        channels_last: images in channels_last memory format.
        labels: class index of every sample, int64 Tensor[N] on ``device``.
        label_maps: the samples' label maps; None for hard targets.
        num_classes: classes of the soft targets.
        local_size: (h, w) of "local" targets.
        temperature: divides pooled scores before the softmax.
        mixer: blends images (Mixup) and mixes and smooths soft targets (training); None
            for neither.
    """

    def __init__(
        self,
        graph: LoaderGraph,
        *,
        targets: str,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        labels: torch.Tensor,
        label_maps: LabelMaps | None,
        num_classes: int,
        local_size: tuple[int, int],
        temperature: float,
        mixer: Mixer | None = None,
    ) -> None:
        self._graph = graph
        self._targets = targets
        self._device = device
        self._dtype = dtype
        self._channels_last = channels_last
        self._labels = labels
        self._label_maps = label_maps
        self._num_classes = num_classes
        self._local_size = local_size
        self._temperature = temperature
        self._mixer = mixer
        self._jitters = "color" in graph.output_names
        self._pooler: cf.ThreadPoolExecutor | None = None
        if (targets != "hard" or self._jitters) and device.type == "cpu":
            # Pooling's small ops, parallelized over OpenMP threads that DALI's threads
            # keep busy, wait for each other (two orders of magnitude slower per batch).
            # One thread of its own (the thread count is per calling thread) avoids it;
            # the colour jitter runs there too (one image at a time, in the core's cache).
            self._pooler = cf.ThreadPoolExecutor(
                1,
                thread_name_prefix="dali_relabel_pool",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        if targets != "hard":
            # The first call of a torch custom op imports torch._dynamo (seconds): imported
            # on a thread while DALI makes the first batches instead.
            if self._pooler is not None:
                self._pooler.submit(importlib.import_module, "torch._dynamo")
            else:
                threading.Thread(
                    target=importlib.import_module,
                    args=("torch._dynamo",),
                    name="dali_relabel_warmup",
                    daemon=True,
                ).start()

    def __call__(
        self,
        outputs: Any,
        expected: np.ndarray,
        maps: Any,
        exec_dynamic: bool,
        mix: MixParams | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The batch of one iteration.

        Args:
            outputs: the pipeline's outputs of one iteration.
            expected: the sample indices this batch must hold, in order.
            maps: the batch's (scores, classes), read on a thread; None to gather them here.
            exec_dynamic: DALI's dynamic executor made the outputs (own buffers per
                iteration: images can be handed over without a copy).
            mix: the batch's mixing, drawn when it was fed (the graph pasted its CutMix
                boxes); None without mixing.
        """
        named = self._graph.by_name(outputs)
        indices = sample_indices(named)
        if not np.array_equal(indices, expected):
            # The join below uses the indices DALI returned, so targets stay right; the
            # epoch's coverage would not, hence an error rather than a silent fix.
            raise RuntimeError(
                "DALI returned other samples than the loader fed it "
                f"(first expected {expected[:4].tolist()}, got {indices[:4].tolist()}); "
                "please report this"
            )
        images = self._images(named["images"], exec_dynamic)
        color = named["color"].as_array() if self._jitters else None
        if self._targets == "hard":
            if color is not None:
                images = self._on_pooler(self._jitter, images, color)
            (at,) = to_device([indices], self._device)
            return self._cast(images), self._labels[at]
        boxes, mirrors = self._graph.boxes(named)
        args = (indices, boxes, mirrors, maps, images, mix, color)
        images, soft, at = self._on_pooler(self._soft_targets, *args)
        if self._targets == "both":
            return self._cast(images), soft, self._labels[at]
        return self._cast(images), soft

    def close(self) -> None:
        """Stop the pooling thread (CPU)."""
        if self._pooler is not None:
            self._pooler.shutdown(wait=False)

    def _on_pooler(self, function, *args):
        """``function(*args)`` on the pooling thread where there is one (CPU), else here."""
        if self._pooler is None:
            return function(*args)
        return self._pooler.submit(function, *args).result()

    # -- targets ----------------------------------------------------------------------
    def _soft_targets(
        self,
        indices: np.ndarray,
        boxes: np.ndarray,
        mirrors: np.ndarray,
        maps: Any,
        images: torch.Tensor,
        mix: MixParams | None,
        color: np.ndarray | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, soft targets, sample indices on the device): jittered where the loader
        jitters colours, then mixed where it mixes; on the pooling thread on the CPU (the
        images' ops too)."""
        if color is not None:
            images = self._jitter(images, color)
        host = [indices, boxes, mirrors]
        if self._label_maps.on_device:
            host.append(self._label_maps.rows(indices))
        else:
            host.extend(maps if maps is not None else self._label_maps.read(indices))
        # one copy of one pinned buffer on CUDA: nothing waits for the device
        moved = to_device(host, self._device)
        at, boxes_at, mirrors_at = moved[:3]
        if self._label_maps.on_device:
            scores, classes = self._label_maps.select(moved[3])
        else:
            scores, classes = moved[3], moved[4]
        validate = self._device.type == "cpu"  # a host sync on CUDA; boxes are ours
        if self._mixer is not None and self._targets != "local":
            if mix is not None and mix.mixed and self._graph.pastes:
                images = self._mixer.blend(images, mix)  # Mixup; CutMix pasted by DALI
            elif mix is not None and mix.mixed:  # both, after each image's own colours
                images = self._mixer.mix_images(images, mix)
            soft = self._mixer.targets(
                mix,
                scores=scores,
                classes=classes,
                crop_boxes=boxes,
                mirrors=mirrors,
                size=tuple(images.shape[-2:]),
                temperature=self._temperature,
                validate=validate,
            )
            return images, soft, at
        local = self._targets == "local"
        soft = relabel_targets(
            scores,
            classes,
            boxes_at,
            self._num_classes,
            output_size=self._local_size if local else 1,
            flip=mirrors_at if local else None,
            temperature=self._temperature,
            validate=validate,
        )
        if self._mixer is not None:  # local targets: smoothed per cell, never mixed
            soft = self._mixer.smooth(soft)
        return images, soft, at

    # -- images -----------------------------------------------------------------------
    def _jitter(self, images: torch.Tensor, color: np.ndarray) -> torch.Tensor:
        return jitter_(images, color, *self._graph.normalization)

    def _cast(self, images: torch.Tensor) -> torch.Tensor:
        # bfloat16 after the colours and the mixing, which run in DALI's float32
        return images.to(torch.bfloat16) if self._dtype == torch.bfloat16 else images

    def _images(self, tensor_list: Any, exec_dynamic: bool) -> torch.Tensor:
        if exec_dynamic:
            # DALI's dynamic executor gives every iteration buffers of its own, kept alive
            # by the DLPack reference: zero-copy and still a fresh tensor per batch (as
            # DALI's own PyTorch iterator does), where a copy costs milliseconds per batch.
            with torch.device(self._device):
                out = torch.from_dlpack(tensor_list.as_tensor())
        elif self._device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dtype = torch.float16 if self._dtype == torch.float16 else torch.float32
            out = torch.empty(tensor_list.as_tensor().shape(), dtype=dtype, device=self._device)
            feed_ndarray(tensor_list, out, cuda_stream=torch.cuda.current_stream(self._device))
        else:
            out = torch.from_numpy(tensor_list.as_array())  # as_array copies: a fresh tensor
        if self._channels_last:
            out = out.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last strides
        return out
