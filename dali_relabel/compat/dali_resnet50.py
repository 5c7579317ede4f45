"""NVIDIA DALI's ResNet-50 example (``docs/examples/use_cases/pytorch/resnet50/main.py``)
on ReLabel targets: its ``create_dali_pipeline`` and ``DALIClassificationIterator``.

The user's edit (docs/INTEGRATION.md, 4 lines): import both names from here just before
``def main():`` (they shadow the script's own pipeline function and DALI's iterator),
add ``label_maps="relabel_imagenet.zarr"`` to the two ``create_dali_pipeline`` calls, and
train on ``data[0]["soft"]`` instead of ``target``. Batches are DALI's iterator's
``[{"data": images, "label": labels [B, 1], "soft": targets [B, C]}]`` (evaluation:
``data`` and ``label``), so the script's ``data[0]["label"].squeeze(-1).long()``,
``_size`` and its accuracy on hard labels work as they are.

What the example's pipeline did and the loader does:

- the training crop is the example's ``random_area=[0.1, 1.0]``,
  ``random_aspect_ratio=[0.8, 1.25]`` (ReLabel's recipe is torchvision's 0.08-1 and
  3/4-4/3: pass ``scale``/``ratio`` to ``create_dali_pipeline`` for it);
- evaluation resizes the shorter side to ``size`` and crops ``crop`` at the centre;
- ``seed``: the example passes ``12 + local_rank``; the loader draws per rank by itself
  and needs one seed on every rank to agree on each epoch's order, so it uses
  ``seed - shard_id``;
- ``dali_cpu``: the loader decodes where its batches live (the GPU's "mixed" decoder
  with CUDA), with a warning;
- evaluation shards are padded to equal size (the script all-reduces every batch).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from dali_relabel.errors import ArgumentError
from dali_relabel.loader import ReLabelLoader

__all__ = ["DALIClassificationIterator", "PipelineSpec", "create_dali_pipeline"]

#: The example's training crop ranges (its image_processing_func).
EXAMPLE_SCALE = (0.1, 1.0)
EXAMPLE_RATIO = (0.8, 1.25)


class PipelineSpec:
    """What ``create_dali_pipeline`` returns: the loader's options; ``build()`` does
    nothing (the loader builds its own DALI pipeline)."""

    def __init__(self, root: str, label_maps: Any, batch_size: int, options: dict) -> None:
        self.root = root
        self.label_maps = label_maps
        self.batch_size = batch_size
        self.options = options

    def build(self) -> None:
        """Nothing to do: the loader builds and runs its pipeline."""


def create_dali_pipeline(
    *,
    batch_size: int,
    num_threads: int,
    device_id: int,
    seed: int,
    data_dir: str | os.PathLike,
    crop: int,
    size: int,
    dali_cpu: bool = False,
    shard_id: int = 0,
    num_shards: int = 1,
    is_training: bool = True,
    label_maps: Any = None,
    **kwargs: Any,
) -> PipelineSpec:
    """The example's ``create_dali_pipeline`` arguments, plus ``label_maps``.

    Args:
        batch_size, num_threads, device_id, seed, data_dir, crop, size, dali_cpu,
            shard_id, num_shards, is_training: the example's (see the module docstring).
        label_maps: the label-map store of the images; needed for training.
        **kwargs: further ReLabelLoader arguments (``scale``, ``ratio``, ``cutmix_alpha``,
            ``color_jitter``, ...).
    """
    if label_maps is None and is_training:
        raise ArgumentError(
            "create_dali_pipeline(is_training=True) needs label_maps=<label-map store> "
            "(the ReLabel targets); add label_maps=... to the call"
        )
    if dali_cpu:
        warnings.warn(
            "dali_cpu=True: dali_relabel decodes where its batches live (the GPU's mixed "
            "decoder when CUDA is there)",
            stacklevel=2,
        )
    device = f"cuda:{device_id}" if torch.cuda.is_available() else "cpu"
    options: dict[str, Any] = {
        "train": bool(is_training),
        "crop_size": int(crop),
        "num_threads": int(num_threads),
        "device": device,
        "seed": max(0, int(seed) - int(shard_id)),
        "rank": int(shard_id),
        "world_size": int(num_shards),
    }
    if is_training:
        options.update(targets="both", scale=EXAMPLE_SCALE, ratio=EXAMPLE_RATIO)
    else:
        options.update(targets="hard", resize_size=int(size))
    options.update(kwargs)
    return PipelineSpec(os.fspath(data_dir), label_maps, int(batch_size), options)


class DALIClassificationIterator:
    """DALI's PyTorch iterator over a :class:`PipelineSpec`: each ``iter()`` an epoch of
    ``[{"data", "label", "soft"}]`` batches (see the module docstring).

    Args:
        pipelines: the spec from :func:`create_dali_pipeline` (or a one-item list).
        reader_name: accepted ("Reader" in the example); the loader knows its sizes.
        last_batch_policy: ``LastBatchPolicy.PARTIAL`` (the last batch smaller) or
            ``DROP``; ``FILL`` is refused. Default: PARTIAL.
        auto_reset: accepted: every ``iter()`` is an epoch. Default: True.
        **kwargs: ``size``, ``fill_last_batch``, ``dynamic_shape``, ``prepare_first_batch``
            are accepted and ignored; others are refused.
    """

    def __init__(
        self,
        pipelines: PipelineSpec | list[PipelineSpec],
        reader_name: str | None = None,
        last_batch_policy: Any = None,
        auto_reset: bool | str = True,
        **kwargs: Any,
    ) -> None:
        spec = pipelines[0] if isinstance(pipelines, (list, tuple)) else pipelines
        if not isinstance(spec, PipelineSpec):
            raise ArgumentError(
                f"pipelines must come from dali_relabel.compat.dali_resnet50."
                f"create_dali_pipeline, got {type(spec).__name__}"
            )
        unknown = set(kwargs) - {"size", "fill_last_batch", "dynamic_shape", "prepare_first_batch"}
        if unknown:
            raise ArgumentError(f"DALIClassificationIterator got arguments it does not take: "
                                f"{sorted(unknown)}")  # fmt: skip
        policy = getattr(last_batch_policy, "name", last_batch_policy or "PARTIAL")
        if policy not in ("PARTIAL", "DROP"):
            raise ArgumentError(
                f"last_batch_policy={last_batch_policy}: PARTIAL or DROP are offered (FILL "
                "would repeat samples to fill the last batch)"
            )
        options = dict(spec.options)
        # DROP leaves out the last, smaller batch: the training loader's drop_last; an
        # evaluation loader's drop_last cuts shards instead, so its epoch stops one early
        if policy == "DROP" and options["train"]:
            options["drop_last"] = True
        self.loader = ReLabelLoader(spec.root, spec.label_maps, spec.batch_size, **options)
        self.batch_size = spec.batch_size
        self._batches = len(self.loader)
        if policy == "DROP" and not options["train"]:
            self._batches = len(self.loader.sampler) // self.batch_size

    @property
    def _size(self) -> int:
        """Samples this rank reads per epoch, as DALI's iterator reports them:
        ``ceil(_size / batch_size) == len(iterator)``."""
        if self._batches < -(-len(self.loader.sampler) // self.batch_size):
            return self._batches * self.batch_size
        return len(self.loader.sampler)

    @property
    def size(self) -> int:
        """Same as :attr:`_size`."""
        return self._size

    def __len__(self) -> int:
        return self._batches

    def reset(self) -> None:
        """Does nothing: every ``iter()`` is an epoch (older examples call it per epoch)."""

    def __iter__(self):
        epoch = iter(self.loader)
        for _ in range(self._batches):
            batch = next(epoch)
            if self.loader.train:
                images, soft, labels = batch
                yield [{"data": images, "label": labels.view(-1, 1), "soft": soft}]
            else:
                images, labels = batch
                yield [{"data": images, "label": labels.view(-1, 1)}]

    def __repr__(self) -> str:
        return f"DALIClassificationIterator({self.loader!r})"
