"""Colour augmentation of the official ReLabel recipe in the DALI graph, draws from the host.

The official training pipeline (naver-ai/relabel_imagenet ``utils/data_loader.py``) is
RandomResizedCrop -> flip -> ``ColorJitter(0.4, 0.4, 0.4)`` -> ToTensor -> ``Lighting(0.1)``
(AlexNet's PCA lighting, Krizhevsky et al., NeurIPS 2012) -> Normalize; timm's default
training transform has the same ColorJitter without Lighting. Here, per image:

- ``color_jitter=(b, c, s)``: factors ``fb``, ``fc``, ``fs`` uniform in ``[max(0, 1 - b),
  1 + b]`` (and so on), as torchvision draws them. Brightness scales the image, contrast
  blends it with the mean of its grayscale, saturation with its grayscale (``0.299 R +
  0.587 G + 0.114 B``). Without clipping these three are linear and commute (the gray of
  a saturated image is the gray of the image, so its mean is too):

      out = fb * (fc * (fs * x + (1 - fs) * gray(x)) + (1 - fc) * mean(gray(x)))

  Brightness and contrast run as one ``fn.brightness_contrast`` (its contrast centre the
  image's mean gray, a ``fn.reductions.mean`` in the graph), rounded and clipped to
  0-255; saturation as ``fn.hsv`` (which keeps the luma and scales the chroma: the same
  blend), in float and not clipped, as the normalized output needs no 0-255 range and a
  clamp would cost as much again on the CPU. torchvision applies the three in a random
  order on uint8 images, clipping and rounding after each: results differ where a pixel
  clips (and by rounding), not in the distribution of the factors.
  tests/test_color.py checks each formula and compares the statistics.
- ``lighting=std``: ``alpha ~ N(0, std^2)`` (3 values), the offset ``eigvec @ (alpha *
  eigval)`` (ImageNet's RGB eigen decomposition, the official constants) added to every
  pixel on the 0-1 scale, without clipping, before normalization: folded into
  ``crop_mirror_normalize`` as a per-image mean ``255 * (mean - offset)``, so it costs
  nothing.

The draws come from the batch's generator after the crop's (:mod:`dali_relabel._rrc`): turning
colour on changes no crop. Where it runs: after the resize to S x S, on the images'
device, before normalization (the flip commutes with all of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from nvidia.dali import fn, types

from dali_relabel.errors import ArgumentError

__all__ = [
    "COLOR_INPUTS",
    "EIGVAL",
    "EIGVEC",
    "GRAY",
    "apply_color",
    "check_color_jitter",
    "check_lighting",
    "draw_color",
    "lighting_mean",
]

#: ImageNet's RGB eigenvalues and eigenvectors (columns), the official ``Lighting``'s.
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
#: Grayscale weights of torchvision's ``rgb_to_grayscale`` (ITU-R 601-2 luma).
GRAY = (0.299, 0.587, 0.114)
#: Graph inputs of the colour draws: name -> (DALI type, dimensions per sample).
COLOR_INPUTS = {
    "brightness": (types.FLOAT, 0),
    "contrast": (types.FLOAT, 0),
    "saturation": (types.FLOAT, 0),
    "lighting": (types.FLOAT, 1),
}


def check_color_jitter(value: Any) -> tuple[float, float, float] | None:
    """``color_jitter`` as (brightness, contrast, saturation), or None when all are 0.

    Accepts a number (the same for the three) or 3 numbers, or 4 with hue 0 (timm's and
    torchvision's order); each in [0, 1]. Hue jitter is not offered.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * 3
    else:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            values = []
    if len(values) == 4 and values[3] == 0:
        values = values[:3]
    if len(values) != 3 or not all(0 <= v <= 1 for v in values):
        hint = " (hue jitter is not offered)" if len(values) == 4 else ""
        raise ArgumentError(
            "color_jitter must be a number or (brightness, contrast, saturation) in [0, 1], "
            f"e.g. 0.4 as the official ReLabel recipe and timm's default, got {value!r}{hint}"
        )
    return None if not any(values) else (values[0], values[1], values[2])


def check_lighting(value: Any) -> float:
    """``lighting`` (the standard deviation of AlexNet's PCA lighting) as a float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ArgumentError(
            "lighting must be the standard deviation of the PCA lighting, a number in "
            f"[0, 1) (0.1 in the official ReLabel recipe; 0 turns it off), got {value!r}"
        )
    return float(value)


def draw_color(
    rng: np.random.Generator,
    count: int,
    jitter: Sequence[float] | None,
    lighting: float,
) -> dict[str, np.ndarray]:
    """One batch's colour draws by input name (see the module docstring).

    Args:
        rng: the batch's generator, after the crop draws.
        count: samples in the batch.
        jitter: (brightness, contrast, saturation), or None.
        lighting: standard deviation of the PCA lighting; 0 for none.

    Returns:
        ``brightness``, ``contrast``, ``saturation`` float32 [count] (the factors) and
        ``lighting`` float32 [count, 3] (the RGB offset on the 0-1 scale).
    """
    spans = jitter if jitter is not None else (0.0, 0.0, 0.0)
    draws = {
        name: rng.uniform(max(0.0, 1 - v), 1 + v, count).astype(np.float32)
        for name, v in zip(("brightness", "contrast", "saturation"), spans, strict=True)
    }
    alpha = rng.normal(0.0, lighting, (count, 3)) if lighting else np.zeros((count, 3))
    draws["lighting"] = ((alpha * np.asarray(EIGVAL)) @ np.asarray(EIGVEC).T).astype(np.float32)
    return draws


def apply_color(images: Any, inputs: dict[str, Any], *, on_gpu: bool) -> Any:
    """ColorJitter of uint8 HWC ``images`` in the graph; float HWC out (see the module
    docstring)."""
    means = fn.reductions.mean(images, axes=[0, 1], dtype=types.FLOAT)  # per channel, [3]
    if on_gpu:
        means = means.cpu()  # an argument input lives on the CPU (3 floats per image)
    gray_mean = fn.reductions.sum(means * types.Constant(np.float32(GRAY)))
    images = fn.brightness_contrast(
        images,
        brightness=inputs["brightness"],
        contrast=inputs["contrast"],
        contrast_center=gray_mean,
    )
    # DALI's saturation keeps the luma (0.299, 0.587, 0.114) and scales the chroma (YIQ):
    # the blend with the grayscale image; float out, as rounding to uint8 costs more
    # than the operation itself on the CPU
    return fn.hsv(images, saturation=inputs["saturation"], dtype=types.FLOAT)


def lighting_mean(inputs: dict[str, Any], mean: Sequence[float]) -> Any:
    """Per-image means for ``crop_mirror_normalize`` (0-255) that add the lighting offset:
    ``(x / 255 + offset - mean) / std = (x - 255 * (mean - offset)) / (255 * std)``."""
    return types.Constant(np.float32([255.0 * m for m in mean])) - 255.0 * inputs["lighting"]
