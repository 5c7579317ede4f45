"""Images for ``dali-relabel generate``: decoding, resizing and batching, off the teacher's path.

Each image is decoded whole and squashed to the teacher's square input, as ReLabel
(Yun et al., CVPR 2021, appendix) resizes its training images, once per teacher
resolution. Two decoders give the same batches: PIL with torchvision's antialiased
resize, in DataLoader worker processes, or a DALI pipeline (GPU decoding on CUDA).
With PIL an unreadable image becomes a placeholder carrying its error message, so that
generation (:mod:`._generate`) can skip it; DALI stops at the first one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dali_relabel._deps import require_dali
from dali_relabel.errors import ImageDecodeError

if TYPE_CHECKING:
    import torch

__all__ = ["DECODERS", "decode_image", "image_batches", "resize_square"]

DECODERS = ("torchvision", "dali")


def decode_image(path: str | Path) -> torch.Tensor:
    """An image file as RGB uint8 Tensor[3, H, W], decoded by PIL (libjpeg-turbo).

    PIL rather than ``torchvision.io``, whose decoders torchvision 0.29 deprecates; PIL
    also reads the CMYK and grayscale JPEGs and the PNG-named-JPEG of ImageNet's train set.
    Raises ImageDecodeError when the file cannot be read.
    """
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on bad files
        raise ImageDecodeError(f"cannot decode {str(path)!r}: {e}") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The whole image squashed to ``size`` x ``size`` (bilinear, antialiased), as ReLabel
    resizes a training image for its teacher: the label map covers the whole image.

    Args:
        image: uint8 Tensor[3, H, W] (:func:`decode_image`).
        size: the side of the square.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


class _Images:
    """Dataset of (sample index, one uint8 image per resolution, error message or "")."""

    def __init__(self, paths: Sequence[Path], indices: np.ndarray, resolutions: Sequence[int]):
        self.paths = paths
        self.indices = indices
        self.resolutions = tuple(resolutions)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        import torch

        index = int(self.indices[i])
        try:
            image = decode_image(self.paths[index])
        except ImageDecodeError as e:
            empty = tuple(torch.zeros(3, r, r, dtype=torch.uint8) for r in self.resolutions)
            return index, empty, str(e)
        return index, tuple(resize_square(image, r) for r in self.resolutions), ""


def _collate(items):
    import torch

    indices = torch.tensor([it[0] for it in items], dtype=torch.int64)
    images = tuple(torch.stack(group) for group in zip(*(it[1] for it in items), strict=True))
    return indices, images, [it[2] for it in items]


def _torchvision_batches(paths, indices, resolutions, batch_size, workers, pin) -> Iterator:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Images(paths, indices, resolutions),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def _dali_batches(paths, indices, resolutions, batch_size, workers, device) -> Iterator:
    """The same batches from a DALI pipeline (GPU decoding when ``device`` is CUDA)."""
    import torch

    require_dali("generate's DALI decoder (decoder='dali')")
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    gpu = torch.device(device).type == "cuda"
    files = [str(paths[int(i)]) for i in indices]

    @pipeline_def(
        batch_size=batch_size,
        num_threads=max(1, workers),
        device_id=(torch.device(device).index or 0) if gpu else None,
    )
    def pipe():
        encoded, position = fn.readers.file(
            files=files, labels=list(range(len(files))), name="reader", pad_last_batch=True
        )
        image = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        outs = [
            fn.resize(
                image, resize_x=r, resize_y=r, interp_type=types.INTERP_LINEAR, antialias=True
            )
            for r in resolutions
        ]
        return (position, *outs)

    # Named by place, not size: DALI refuses two outputs of one name.
    names = ["position", *(f"image{i}" for i in range(len(resolutions)))]
    try:
        iterator = DALIGenericIterator(
            pipe(), names, reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL
        )
        for (batch,) in iterator:
            pos = batch["position"].reshape(-1).long().cpu()
            images = tuple(batch[n].permute(0, 3, 1, 2) for n in names[1:])
            yield torch.as_tensor(indices)[pos], images, [""] * len(pos)
    except RuntimeError as e:
        raise ImageDecodeError(
            f"DALI stopped on an image it cannot decode ({str(e).splitlines()[0]}); run with "
            "--decoder torchvision to find the file, or with --skip-bad-images to leave it out"
        ) from e


def image_batches(
    decoder: str,
    paths: Sequence[Path],
    indices: np.ndarray,
    resolutions: Sequence[int],
    batch_size: int,
    workers: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...], list[str]]]:
    """Batches of the images ``paths[indices]``, in order, decoded while the caller computes.

    Each batch is (sample indices Tensor[B], one uint8 Tensor[B, 3, r, r] per entry of
    ``resolutions``, error messages: "" for a decoded image). Nothing is decoded until
    the first batch is asked for.

    Args:
        decoder: one of :data:`DECODERS`.
        paths: image files, indexed by sample index.
        indices: the sample indices to decode.
        resolutions: square sizes each image is resized to, one image per size.
        batch_size: images per batch; the last batch may be smaller.
        workers: decoding processes (DALI: threads); 0 decodes in this process.
        device: where the batches go: CUDA pins memory (torchvision) or decodes on the GPU
            (DALI).
    """
    if decoder == "dali":
        return _dali_batches(paths, indices, resolutions, batch_size, workers, device)
    pin = device.type == "cuda"
    return _torchvision_batches(paths, indices, resolutions, batch_size, workers, pin)
