"""``ReLabelLoader.dataset``: the loader's samples, indexable as an ImageFolder would be.

Training scripts touch a loader's dataset beyond ``len``: pytorch/examples' ImageNet
script evaluates the samples that its distributed sampler leaves out (``N mod
world_size`` of them) by wrapping ``val_loader.dataset`` in a ``Subset`` and a torch
DataLoader of its own; timm sets the dataset's epoch. So ``dataset[i]`` is what
``torchvision.datasets.ImageFolder(root, eval_transform)[i]`` would be: the image with
the evaluation transform (resize the shorter side to ``resize_size``, centre crop
``crop_size``, to float, normalize) and its class index in the loader's class space.
It decodes with Pillow on the CPU, one image at a time: it serves a handful of samples,
not an epoch. The pickled dataset holds paths and numbers only, so DataLoader workers
can take it.

Its pixels are the evaluation loader's up to the two libraries' resampling: Pillow's
antialiased bilinear filter against DALI's (tests/test_dataloader_surface.py measures
the difference on the sample photos).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dali_relabel.imagefolder import ImageFolderList

__all__ = ["LoaderDataset"]


class LoaderDataset(ImageFolderList):
    """The samples of a loader; ``dataset[i]`` is ``(image Tensor[3, S, S] float32, label)``.

    Attributes as :class:`~dali_relabel.imagefolder.ImageFolderList` (``samples``,
    ``targets``, ``classes``, ``class_to_idx``, ``root``, ``keys``, ``paths``).

    Args:
        samples: the loader's sample list.
        crop_size: side S of the centre crop.
        resize_size: shorter side before the crop.
        mean: channel means on the 0-1 scale.
        std: channel standard deviations on the 0-1 scale.
    """

    def __init__(
        self,
        samples: ImageFolderList,
        *,
        crop_size: int,
        resize_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(
            samples.root,
            samples.classes,
            samples.folders,
            samples.keys,
            samples.relative_paths(),
            samples.targets,
        )
        self.crop_size = int(crop_size)
        self.resize_size = int(resize_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        """``(image, class index)``: the image decoded (EXIF orientation ignored, as the
        loader's graph does), resized, centre-cropped and normalized."""
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        with Image.open(self.paths[index]) as img:
            image = img.convert("RGB")
        # the graph's fn.resize(resize_shorter=...) rounds the longer side to the nearest
        # pixel where torchvision's Resize(int) truncates it: its size, for the same pixels
        width, height = image.size
        scale = self.resize_size / min(width, height)
        size = [math.floor(height * scale + 0.5), math.floor(width * scale + 0.5)]
        image = F.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
        # and places the centre crop at floor(offset + 0.5) where center_crop rounds halves
        # to even
        crop = self.crop_size
        top, left = (math.floor((side - crop) / 2 + 0.5) for side in size)
        image = F.crop(image, top, left, crop, crop)
        tensor = F.normalize(F.to_tensor(image), self.mean, self.std)
        return tensor, int(self.targets[index])

    def __repr__(self) -> str:
        return (
            f"LoaderDataset({str(self.root)!r}, samples={len(self)}, classes={len(self.classes)},"
            f" eval transform: resize {self.resize_size}, centre crop {self.crop_size})"
        )
