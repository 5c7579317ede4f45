"""The loader's DALI graphs: RandomResizedCrop training and center-crop evaluation.

One graph per loader, fed per batch from the host through ``fn.external_source`` inputs
named :data:`TRAIN_INPUTS` / :data:`EVAL_INPUTS`: each sample's file path (read by
``fn.io.file.read`` on DALI's threads), its *sample index* (the key on which labels and
label maps are joined, returned as an output), and in training the random draws of its
crop and flip (:mod:`dali_relabel._rrc`; the window is computed in :mod:`._crops`).
Batches may have any size up to the pipeline's batch size, so an epoch's last batch is
just smaller: nothing is padded, nothing decoded twice.

The training graph is torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
with the crop window leaving the graph: ReLabel (Yun et al., CVPR 2021) pools each
image's label map over the same window. ``fn.decoders.image_random_crop`` picks its
window internally and cannot export it, so the graph is

    io.file.read -> peek_image_shape -> RandomResizedCrop window (in the graph, from the
    host's draws) -> decoders.image_slice -> resize -> crop_mirror_normalize (mirror)

and exports, per sample, the window (anchor and shape in pixels, HW order), the image's
shape and the mirror flag; :func:`train_boxes` turns them into normalized (x1, y1, x2, y2)
boxes of the original image. :class:`LoaderGraph` is the graph of one loader: its
pipeline, a batch's inputs, and a batch's outputs read by name (never by position);
:mod:`._pipelines` builds the same graphs fed from a list of files, for comparison.

Decoding runs on the GPU ("mixed") when a ``device_id`` is given and on the CPU
otherwise. EXIF orientation is ignored, as Pillow (and so torchvision's ImageFolder and
the teachers that made the label maps) ignores it: the maps and the decoded pixels
must share one orientation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_relabel import _checks
from dali_relabel._rrc import batch_generator, crop_inputs, draw_crops, train_boxes
from dali_relabel.loader._color import COLOR_INPUTS, draw_color, lighting_mean
from dali_relabel.loader._crops import rrc_window
from dali_relabel.loader._mixing import MixParams
from dali_relabel.loader._regions import paste_inputs

__all__ = [
    "EVAL_INPUTS",
    "EVAL_OUTPUTS",
    "TRAIN_INPUTS",
    "TRAIN_OUTPUTS",
    "GraphSpec",
    "LoaderGraph",
    "build_graph",
    "center_crop_boxes",
    "dali_dtype",
    "default_resize_size",
    "sample_indices",
    "train_boxes",
]

#: Outputs of the training graph, in order.
TRAIN_OUTPUTS = ("images", "indices", "anchors", "shapes", "image_shapes", "mirrors")
#: Outputs of the evaluation graph, in order.
EVAL_OUTPUTS = ("images", "indices", "image_shapes")
#: Inputs of the training graph, by name: file path (uint8 bytes), sample index (int64),
#: and the crop and flip draws (:func:`~dali_relabel._rrc.crop_inputs`).
TRAIN_INPUTS = ("paths", "indices", "attempts", "position", "mirror")
#: Inputs of the evaluation graph.
EVAL_INPUTS = ("paths", "indices")
#: Inputs of a training graph that pastes CutMix boxes (:func:`._regions.paste_inputs`).
PASTE_INPUTS = ("paste_ids", "paste_shapes", "paste_in", "paste_out")
# (DALI type, dimensions per sample) of each input
_INPUT_TYPES = {
    "paths": (types.UINT8, 1),
    "indices": (types.INT64, 0),
    "attempts": (types.FLOAT64, 2),
    "position": (types.FLOAT64, 1),
    "mirror": (types.INT32, 0),
    **COLOR_INPUTS,
    **{name: (types.INT32, 1 if name == "paste_ids" else 2) for name in PASTE_INPUTS},
}
# The "mixed" decoder keeps DALI's own preallocation (16 MiB of device memory and 2 x 8 MiB
# of pinned host memory per thread, grown on demand to the largest image seen): the plain
# DALI pipeline ran at full speed with it on the lent H200. DALI's ResNet-50 example
# preallocates for the largest ImageNet image instead (211 MB device and 2 x 140 MB pinned
# per thread): with 16 threads 3.4 GB of device memory and 4.5 GB of pinned host memory
# held for good, to save a few reallocations per thread in an epoch.


def dali_dtype(dtype: str):
    """DALI's type of the image dtype ``dtype`` ("float32" or "float16")."""
    table = {"float32": types.FLOAT, "float16": types.FLOAT16}
    return table[_checks.one_of("dtype", dtype, sorted(table))]


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """What a graph computes; fields as the arguments of
    :func:`~dali_relabel.loader.build_train_pipeline` and ``build_eval_pipeline``."""

    train: bool
    crop_size: int
    resize_size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str
    channels_last: bool
    device_id: int | None
    color_jitter: tuple[float, float, float] | None = None
    lighting: float = 0.0
    paste: bool = False

    @property
    def color(self) -> bool:
        """Whether the training batches are coloured (:mod:`._color`): the graph then takes
        the colour draws, adds the lighting and passes the jitter's draws on."""
        return self.train and (self.color_jitter is not None or self.lighting > 0)

    def define(self, inputs: dict[str, Any]) -> tuple[Any, ...]:
        """The graph on ``inputs`` (DALI nodes by input name); outputs in the order of
        :attr:`output_names`."""
        decoder = "cpu" if self.device_id is None else "mixed"
        # read(), not mmap: the decoder reads every page of a file once, and a page fault
        # per 4 kB costs more than one copy of the whole file
        encoded = fn.io.file.read(inputs["paths"], dont_use_mmap=True)
        image_shapes = fn.peek_image_shape(encoded, adjust_orientation=False)
        if not self.train:
            images = fn.decoders.image(
                encoded, device=decoder, output_type=types.RGB, adjust_orientation=False
            )
            images = fn.resize(
                images,
                resize_shorter=self.resize_size,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            images = self._normalize(images, mirror=0, crop=self.crop_size)
            return images, inputs["indices"], image_shapes
        anchors, shapes = rrc_window(
            image_shapes, inputs["attempts"], inputs["position"], self.ratio
        )
        images = fn.decoders.image_slice(
            encoded,
            anchors,
            shapes,
            device=decoder,
            output_type=types.RGB,
            axis_names="HW",  # the window's anchor and shape are (y, x) and (h, w)
            normalized_anchor=False,
            normalized_shape=False,
            adjust_orientation=False,
        )
        images = fn.resize(
            images,
            size=[self.crop_size, self.crop_size],
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        if self.paste:  # CutMix's boxes, before the flip (see Mixer.paste_inputs)
            images = fn.multi_paste(
                images,
                in_ids=inputs["paste_ids"],
                shapes=inputs["paste_shapes"],
                in_anchors=inputs["paste_in"],
                out_anchors=inputs["paste_out"],
            )
        mean = lighting_mean(inputs["color"], self.mean) if self.lighting > 0 else None
        mirrors = inputs["mirror"]
        images = self._normalize(images, mirror=mirrors, mean=mean)
        outputs = (images, inputs["indices"], anchors, shapes, image_shapes, mirrors)
        # the jitter runs after the graph (._color), each image with its own draws
        return outputs + ((inputs["color"],) if self.color_jitter is not None else ())

    def _normalize(self, images, *, mirror, crop=None, mean=None):
        kwargs = {}
        if crop is not None:
            kwargs = {"crop": (crop, crop), "crop_pos_x": 0.5, "crop_pos_y": 0.5}
        return fn.crop_mirror_normalize(
            images,
            mirror=mirror,
            dtype=dali_dtype(self.dtype),
            output_layout="HWC" if self.channels_last else "CHW",
            mean=[255.0 * m for m in self.mean] if mean is None else mean,
            std=[255.0 * s for s in self.std],
            **kwargs,
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        if not self.train:
            return EVAL_INPUTS
        color = tuple(COLOR_INPUTS) if self.color else ()
        return TRAIN_INPUTS + color + (PASTE_INPUTS if self.paste else ())

    @property
    def output_names(self) -> tuple[str, ...]:
        """What each output is, in order: :data:`TRAIN_OUTPUTS` (and ``color``, the colour
        draws, where the loader jitters colours after the graph) or :data:`EVAL_OUTPUTS`."""
        if not self.train:
            return EVAL_OUTPUTS
        return TRAIN_OUTPUTS + (("color",) if self.color_jitter is not None else ())

    def draw(self, rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
        """A training batch's random draws by input name: crops and flips, then colours
        (only the inputs the graph has: DALI removes an input that nothing reads)."""
        draws = crop_inputs(draw_crops(rng, count, self.scale, self.ratio))
        if self.color:
            draws["color"] = draw_color(rng, count, self.color_jitter, self.lighting)
        return draws


def build_graph(
    spec: GraphSpec,
    *,
    batch_size: int,
    num_threads: int,
    prefetch_queue_depth: int,
    source: Callable[[], tuple] | None = None,
):
    """The built pipeline of ``spec``: inputs fed by name, or pulled from ``source``."""

    @pipeline_def(exec_dynamic=True)  # each iteration's outputs in buffers of their own
    def graph():
        names = spec.input_names
        if source is None:
            nodes = [
                fn.external_source(name=n, dtype=_INPUT_TYPES[n][0], ndim=_INPUT_TYPES[n][1])
                for n in names
            ]
        else:
            nodes = fn.external_source(
                source=source,
                num_outputs=len(names),
                batch=True,
                dtype=[_INPUT_TYPES[n][0] for n in names],
                ndim=[_INPUT_TYPES[n][1] for n in names],
            )
        return spec.define(dict(zip(names, nodes, strict=True)))

    pipe = graph(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=spec.device_id,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    pipe.build()
    return pipe


def default_resize_size(crop_size: int) -> int:
    """Shorter side before the evaluation center crop: ``round(crop_size / 0.875)``."""
    return round(crop_size / 0.875)


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


class LoaderGraph:
    """One loader's DALI graph: its pipeline, a batch's inputs, a batch's outputs by name.

    Args:
        paths: every sample's image file; position = sample index. Relative paths are
            taken from the current directory at construction.
        train: RandomResizedCrop + flip, else resize and center crop.
        crop_size, resize_size, mean, std, scale, ratio, dtype, channels_last, device_id:
            as in :func:`build_train_pipeline` and :func:`build_eval_pipeline`.
        num_threads: DALI CPU worker threads.
        seed, rank: training batch ``b`` of epoch ``e`` draws its crops and flips from
            (seed, e, rank, b) and from nothing else.
        color_jitter, lighting: the colour augmentation (:mod:`._color`), checked.
        paste: CutMix is on: the graph pastes its boxes, each batch then fed its mixing,
            unless it colours the images (:attr:`pastes`).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        train: bool,
        crop_size: int,
        resize_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        scale: tuple[float, float],
        ratio: tuple[float, float],
        dtype: str,
        channels_last: bool,
        device_id: int | None,
        num_threads: int,
        seed: int,
        rank: int,
        color_jitter: tuple[float, float, float] | None = None,
        lighting: float = 0.0,
        paste: bool = False,
    ) -> None:
        self._spec = GraphSpec(
            train=train,
            crop_size=crop_size,
            resize_size=resize_size,
            scale=scale,
            ratio=ratio,
            mean=mean,
            std=std,
            dtype=dtype,
            channels_last=channels_last,
            device_id=device_id,
            color_jitter=color_jitter,
            lighting=lighting,
            # a patch keeps its own image's colours: with colour, torch pastes after it
            paste=paste and train and color_jitter is None and not lighting,
        )
        self._paths = paths
        # DALI opens the paths from its own threads: make them independent of a later chdir
        self._cwd = os.fsencode(os.getcwd()) + b"/"
        self.num_threads = num_threads
        self.seed = seed
        self.rank = rank

    @property
    def train(self) -> bool:
        return self._spec.train

    @property
    def output_names(self) -> tuple[str, ...]:
        """What each pipeline output is, in order (:attr:`GraphSpec.output_names`)."""
        return self._spec.output_names

    @property
    def pastes(self) -> bool:
        """Whether the graph pastes CutMix boxes (not where it colours the images: a patch
        is then pasted after its own image's colours, by the batch assembler)."""
        return self._spec.paste

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the images' normalization, channels on the 0-1 scale."""
        return self._spec.mean, self._spec.std

    def build(self, batch_size: int, prefetch_queue_depth: int) -> Any:
        """The built pipeline, inputs by name (:meth:`feed`), batches of up to ``batch_size``."""
        return build_graph(
            self._spec,
            batch_size=batch_size,
            num_threads=self.num_threads,
            prefetch_queue_depth=prefetch_queue_depth,
        )

    def inputs(
        self, indices: np.ndarray, epoch: int, batch: int, mix: MixParams | None = None
    ) -> dict[str, Any]:
        """The inputs of the batch ``batch`` of ``epoch``, which holds samples ``indices``;
        ``mix``, the batch's mixing, where the graph pastes CutMix boxes."""
        paths = []
        for i in indices.tolist():
            path = os.fsencode(self._paths[i])
            paths.append(np.frombuffer(path if os.path.isabs(path) else self._cwd + path, np.uint8))
        feed: dict[str, Any] = {"paths": paths, "indices": indices}
        if self.train:
            rng = batch_generator(self.seed, epoch, self.rank, batch)
            feed.update(self._spec.draw(rng, len(indices)))
        if self._spec.paste:
            if mix is None:
                raise RuntimeError("a graph that pastes CutMix boxes was fed no mixing")
            size = (self._spec.crop_size, self._spec.crop_size)
            feed.update(paste_inputs(mix, feed["mirror"], size))
        return feed

    @staticmethod
    def feed(pipe: Any, inputs: dict[str, Any]) -> None:
        """Give ``pipe`` one iteration's ``inputs`` (from :meth:`inputs`)."""
        for name, value in inputs.items():
            pipe.feed_input(name, value)

    def by_name(self, outputs: Sequence[Any]) -> dict[str, Any]:
        """One iteration's outputs (DALI TensorLists) keyed by :attr:`output_names`."""
        return dict(zip(self.output_names, outputs, strict=True))

    def boxes(self, named: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """A batch's crops: boxes float32 [B, 4] as normalized (x1, y1, x2, y2) of the
        original images, and mirror flags bool [B]."""
        if "anchors" in named:  # training: the exported random windows
            boxes = train_boxes(
                named["anchors"].as_array(),
                named["shapes"].as_array(),
                named["image_shapes"].as_array(),
            )
            return boxes, named["mirrors"].as_array().reshape(-1).astype(bool)
        shapes = named["image_shapes"].as_array()
        boxes = center_crop_boxes(shapes, self._spec.crop_size, self._spec.resize_size)
        return boxes, np.zeros(len(shapes), dtype=bool)


def sample_indices(named: dict[str, Any]) -> np.ndarray:
    """The sample indices of a batch, int64 [B]."""
    return np.asarray(named["indices"].as_array()).reshape(-1).astype(np.int64)
