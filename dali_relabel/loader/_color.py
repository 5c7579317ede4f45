"""Colour augmentation of the official ReLabel recipe: ColorJitter and PCA lighting.

The official training pipeline (naver-ai/relabel_imagenet ``utils/data_loader.py``) is
RandomResizedCrop -> flip -> ``ColorJitter(0.4, 0.4, 0.4)`` -> ToTensor -> ``Lighting(0.1)``
(AlexNet's PCA lighting, Krizhevsky et al., NeurIPS 2012) -> Normalize; timm's default
training transform has the same ColorJitter without Lighting. Per image, on the 0-1
scale of ToTensor (``x``, RGB):

- ``color_jitter=(b, c, s)``: factors ``fb``, ``fc``, ``fs`` uniform in ``[max(0, 1 - b),
  1 + b]`` (and so on), as torchvision draws them. Brightness scales the image, contrast
  blends it with the mean ``m`` of its grayscale, saturation with its grayscale
  ``gray(x) = g . x``, ``g = (0.299, 0.587, 0.114)``. Without clipping the three are
  linear and commute (``g`` sums to 1: the gray of a saturated image is the gray of the
  image, so its mean is too), and together they are one affine map of each pixel:

      jitter(x) = fb * (fc * (fs * x + (1 - fs) * gray(x)) + (1 - fc) * m)
                = A x + fb * (1 - fc) * m,   A = fb * fc * (fs * I + (1 - fs) * 1 g^T)

- ``lighting=std``: ``alpha ~ N(0, std^2)`` (3 values), the offset ``o = eigvec @ (alpha *
  eigval)`` (ImageNet's RGB eigen decomposition, the official constants) added to every
  pixel, unclipped: ``lit = jitter(x) + o``.

Where it runs. The lighting is folded into ``crop_mirror_normalize`` as a per-image
mean ``255 * (mean - o)``: it costs nothing. The jitter runs after the graph, on the
images' device, on the normalized batch ``z = (x + o - mean) / std`` that DALI returns,
as one affine map per image (the jitter conjugated by the normalization, ``S =
diag(std)``):

    z' = S^-1 A S z + S^-1 ((A - I) (mean - o) + fb (1 - fc) m 1),
    m = g . (S mean_pixels(z) + mean - o)

written over the batch in place (:func:`jitter_`, :func:`jitter_maps`). ``A`` is the
identity scaled by ``a = fb fc fs`` plus a rank-one term that adds a multiple of each
pixel's gray to all three channels, so an image takes two passes: one product for each
pixel's ``v . z`` (``v = S g``: the gray of ``S z``) and its mean over the image, then
``z <- a z + [u | s + k mean(v . z)] @ [v . z; 1]`` in place. On the CPU each image's
two passes run back to back, the image still in the core's cache; on a GPU the batch is
one step. DALI's CPU operators for the same (``fn.reductions.mean`` for ``m``,
``fn.brightness_contrast``, ``fn.hsv`` for the saturation) cost several times as much
(README, "Numbers"). A CutMix patch keeps its own image's colours: where colour is on,
the loader pastes CutMix boxes in torch after the jitter rather than in the graph
(:mod:`._batch`); Mixup blends in torch either way.

Differences from torchvision, which jitters uint8 (or 0-1 float) images in a random order
of the three, rounding and clipping to 0-255 after each: here nothing is rounded or
clipped (pixels pushed past 0 or 255 keep their values; the order is then irrelevant),
and the contrast centre is the exact mean of the float grayscale (torchvision's tensor
path uses the mean of the truncated uint8 grayscale, with 0.2989 for red; PIL's the
rounded mean of the rounded luma). The factors' distribution is torchvision's.
tests/test_color.py checks each formula against a float64 reference and compares the
statistics of the whole recipe with torchvision's ColorJitter and the official Lighting.

The draws come from the batch's generator after the crop's (:mod:`dali_relabel._rrc`):
turning colour on changes no crop. The graph passes them through as its ``color``
output, so each image meets its own draws (the flip commutes with all of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from nvidia.dali import types

from dali_relabel.errors import ArgumentError
from dali_relabel.loader._transfer import to_device

__all__ = [
    "COLOR_INPUTS",
    "EIGVAL",
    "EIGVEC",
    "GRAY",
    "check_color_jitter",
    "check_lighting",
    "draw_color",
    "jitter_",
    "jitter_maps",
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
#: Graph input of the colour draws: name -> (DALI type, dimensions per sample). Per image
#: float32 [6]: the brightness, contrast and saturation factors, then the lighting offset
#: (RGB, 0-1 scale).
COLOR_INPUTS = {"color": (types.FLOAT, 1)}
# Images per matrix product on the CPU: one image's product (4 x 224 x 224 floats) stays
# in the core's cache while its mean is taken and it is written back; on a GPU the batch
# is one product.
_CPU_GROUP = 1


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
) -> np.ndarray:
    """One batch's colour draws, the graph's ``color`` input (see the module docstring).

    Args:
        rng: the batch's generator, after the crop draws.
        count: samples in the batch.
        jitter: (brightness, contrast, saturation), or None.
        lighting: standard deviation of the PCA lighting; 0 for none.

    Returns:
        float32 [count, 6]: the brightness, contrast and saturation factors (1 where
        off), then the lighting offset (RGB, 0-1 scale; 0 where off).
    """
    spans = jitter if jitter is not None else (0.0, 0.0, 0.0)
    factors = [rng.uniform(max(0.0, 1 - v), 1 + v, count) for v in spans]
    alpha = rng.normal(0.0, lighting, (count, 3)) if lighting else np.zeros((count, 3))
    offset = (alpha * np.asarray(EIGVAL)) @ np.asarray(EIGVEC).T
    return np.column_stack([*factors, offset]).astype(np.float32)


def lighting_mean(color: Any, mean: Sequence[float]) -> Any:
    """Per-image means for ``crop_mirror_normalize`` (0-255) that add the lighting offset
    of the graph's ``color`` input: ``(x / 255 + o - mean) / std = (x - 255 * (mean - o))
    / (255 * std)``."""
    return types.Constant(np.float32([255.0 * m for m in mean])) - 255.0 * color[3:6]


def jitter_maps(
    color: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's jitter as a map of its normalized pixels (module docstring), float64.

    With ``v = S g`` (so that ``v . z`` is the gray of ``S z``), each pixel becomes

        z' = a z + [u | s + k mean(v . z)] @ [v . z; 1]

    (the mean over the image's pixels).

    Args:
        color: the batch's draws, [B, 6] (:func:`draw_color`).
        mean, std: the normalization's channel means and deviations (0-1 scale).

    Returns:
        ``scale`` [B]: ``a = fb fc fs``; ``weights`` [B, 3, 2]: ``[u | s]``, the gray's
        weight ``u = fb fc (1 - fs) / std`` and the shift ``s = S^-1 ((A - I) (mean -
        o) + fb (1 - fc) (g . (mean - o)) 1)``; ``contrast`` [B, 3, 2]: ``[0 | k]``,
        ``k = fb (1 - fc) / std``, what ``mean(v . z)`` adds to ``weights``.
    """
    color = np.asarray(color, dtype=np.float64)
    fb, fc, fs = color[:, 0, None], color[:, 1, None], color[:, 2, None]  # [B, 1]
    gray, mean, std = np.asarray(GRAY), np.asarray(mean, np.float64), np.asarray(std, np.float64)
    eye = np.eye(3)
    jitter = (fb * fc)[:, :, None] * (fs[:, :, None] * eye + (1 - fs)[:, :, None] * gray)  # A
    base = mean - color[:, 3:6]  # mean - o, [B, 3]
    weights = np.empty((len(color), 3, 2))
    weights[:, :, 0] = fb * fc * (1 - fs) / std
    shift = np.einsum("bij,bj->bi", jitter - eye, base) + fb * (1 - fc) * (base @ gray)[:, None]
    weights[:, :, 1] = shift / std
    contrast = np.zeros_like(weights)
    contrast[:, :, 1] = fb * (1 - fc) / std
    return (fb * fc * fs)[:, 0], weights, contrast


def jitter_(
    images: torch.Tensor,
    color: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    group: int | None = None,
) -> torch.Tensor:
    """ColorJitter of a normalized batch, in place (module docstring); ``images`` returned.

    Args:
        images: Tensor[B, 3, H, W], contiguous or channels_last, float32 or float16, on
            any device: normalized with ``mean`` and ``std`` and lit (the graph's output).
        color: the batch's draws, [B, 6] (:func:`draw_color`).
        mean, std: the normalization's channel means and deviations (0-1 scale).
        group: images per step. Default: None (one on the CPU, where an image's two
            passes then meet it in the core's cache; the whole batch on a GPU).
    """
    batch, count = images.shape[0], images.shape[2] * images.shape[3]
    if images.is_contiguous():
        pixels = images.view(batch, 3, count)
    elif images.is_contiguous(memory_format=torch.channels_last):  # the same, transposed
        pixels = images.permute(0, 2, 3, 1).view(batch, count, 3).transpose(1, 2)
    else:
        raise RuntimeError(f"jitter_ needs NCHW or channels_last images, got {images.stride()}")
    if group is None:
        group = 1 if images.device.type == "cpu" else batch
    scale, weights, contrast = jitter_maps(color, mean, std)
    gray = np.broadcast_to(np.asarray(GRAY) * np.asarray(std), (group, 1, 3))  # v
    host = [a.astype(np.float32) for a in (weights, contrast, gray, scale)]
    weights, contrast, gray, factors = (t.to(images.dtype) for t in to_device(host, images.device))
    # rows [v . z; 1] of a group's pixels, reused from group to group
    rows = torch.ones(group, 2, count, dtype=images.dtype, device=images.device)
    line = rows[:, :1]
    steps = zip(
        pixels.split(group),
        weights.split(group),
        contrast.split(group),
        factors.view(-1, 1, 1).split(group),
        scale[::group].tolist(),  # a of each group's first image
        strict=True,
    )
    for x, w, k, a, beta in steps:
        if x.shape[0] < group:  # the last group, smaller
            rows, line, gray = rows[: x.shape[0]], line[: x.shape[0]], gray[: x.shape[0]]
        torch.bmm(gray, x, out=line)  # v . z
        w = torch.addcmul(w, k, line.mean(2, keepdim=True))  # [u | s + k mean(v . z)]
        if group == 1:  # a z + w @ [v . z; 1], in place: one pass
            x.baddbmm_(w, rows, beta=beta)
        else:
            x.mul_(a).baddbmm_(w, rows)
    return images
