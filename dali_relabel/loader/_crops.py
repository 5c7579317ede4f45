"""torchvision's RandomResizedCrop in a DALI graph, its random draws made on the host.

The crop window is ``RandomResizedCrop.get_params`` of torchvision (the transform the
ReLabel paper trains with), computed per sample inside the DALI graph from the image
shape that ``fn.peek_image_shape`` reads, because only the graph knows the shapes:

    10 attempts: target_area = H * W * area[t], aspect = ratio[t],
                 w = round(sqrt(target_area * aspect)), h = round(sqrt(target_area / aspect));
                 the first attempt with 0 < w <= W and 0 < h <= H is the window, placed at
                 i = floor(position[0] * (H - h + 1)), j = floor(position[1] * (W - w + 1));
    fallback:    the central crop of the whole image with its aspect ratio clamped to the
                 ratio range.

The uniform draws behind it (``area``, ``ratio``, ``position``, and the ``mirror`` flag of
RandomHorizontalFlip) come from the host, keyed by (seed, epoch, rank, batch) through
numpy's SeedSequence and Philox: a batch's crops depend on nothing else, so any epoch, or
the rest of an interrupted one, can be drawn again exactly (:func:`batch_generator`).

The window is computed in float64 (DALI's reductions take float32, used only on
integer-valued sizes, which float32 holds exactly). The host multiplies each attempt's
area and aspect ratio into (area / ratio, area * ratio) (:func:`crop_inputs`), so the
graph computes H * W * (area * ratio) where torchvision computes (H * W * area) * ratio:
the windows are the same unless a last-bit rounding of that product decides an exact
half, about once in 10^12 windows. ``round`` is ``floor(x + 0.5)`` (Python's rounds exact
halves to even). The placement draws a uniform ``position`` where torchvision calls
``torch.randint``: the same distribution from another generator. tests/test_crops.py
checks the windows against ``get_params`` itself, fed its own recorded draws.

Each DALI arithmetic operator costs about the same per sample whatever the size of its
tensors, so the graph works on (y, x) pairs and all attempts at once: half the operators
of one attempt at a time, a few percent of decoding the sample (README, "Numbers").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

__all__ = ["ATTEMPTS", "batch_generator", "crop_inputs", "draw_crops", "rrc_window"]

#: RandomResizedCrop's attempts before the central fallback (torchvision's 10).
ATTEMPTS = 10


def batch_generator(seed: int, epoch: int, rank: int, batch: int) -> np.random.Generator:
    """The generator of one batch's draws, keyed by (seed, epoch, rank, batch) only."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch, rank, batch])))


def draw_crops(
    rng: np.random.Generator,
    count: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> dict[str, np.ndarray]:
    """One batch's random draws, in the order they are made.

    Args:
        rng: the batch's generator (:func:`batch_generator`).
        count: samples in the batch.
        scale: RandomResizedCrop's range of the crop's area, as a fraction of the image's.
        ratio: RandomResizedCrop's range of the crop's aspect ratio (width / height).

    Returns:
        ``area`` float64 [count, 10] (uniform in ``scale``), ``ratio`` float64 [count, 10]
        (exp of a uniform in log ``ratio``), ``position`` float64 [count, 2] (uniform in
        [0, 1), for y then x) and ``mirror`` int32 [count] (1 with probability 0.5).
    """
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    return {
        "area": rng.uniform(scale[0], scale[1], (count, ATTEMPTS)),
        "ratio": np.exp(rng.uniform(log_lo, log_hi, (count, ATTEMPTS))),
        "position": rng.random((count, 2)),
        "mirror": (rng.random(count) < 0.5).astype(np.int32),
    }


def crop_inputs(draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs made of :func:`draw_crops`' draws, by input name.

    ``attempts`` float64 [count, 10, 2] holds, per attempt, (area / ratio, area * ratio):
    the attempt's (h, w) is round(sqrt(H * W * attempts[t])), torchvision's
    ``round(sqrt(target_area / aspect_ratio))`` and ``round(sqrt(target_area *
    aspect_ratio))``. ``position`` and ``mirror`` pass through.
    """
    area, ratio = draws["area"], draws["ratio"]
    return {
        "attempts": np.stack([area / ratio, area * ratio], axis=-1),
        "position": draws["position"],
        "mirror": draws["mirror"],
    }


def _round(x):
    return dmath.floor(x + 0.5)


def _float64(value: float) -> Any:
    # A Python float in a DALI expression is a float32 constant: 4/3 would lose digits.
    return types.Constant(np.float64(value), dtype=types.FLOAT64)


def rrc_window(image_shapes, attempts, position, ratio_range: tuple[float, float]):
    """The RandomResizedCrop window of each sample, as DALI graph nodes.

    Works on (y, x) pairs throughout: each DALI arithmetic operator costs about the same
    per sample whatever its size, so fewer, wider operators are cheaper.

    Args:
        image_shapes: (H, W, C) per sample (``fn.peek_image_shape``).
        attempts, position: :func:`crop_inputs` per sample.
        ratio_range: the aspect-ratio range, for the fallback's clamp.

    Returns:
        (anchors, shapes): int32 (y, x) of the window's top-left pixel and its (h, w).
    """
    f64 = types.FLOAT64
    hw = fn.cast(image_shapes[0:2], dtype=f64)  # (H, W)
    height, width = hw[0], hw[1]
    total = height * width
    sizes = _round(dmath.sqrt(total * attempts))  # [ATTEMPTS, 2]: (h, w) per attempt
    fits = (sizes <= hw) & (sizes >= 1.0)
    fits = fn.reductions.min(fn.cast(fits, dtype=types.UINT8), axes=[1], keep_dims=True)
    # the first attempt that fits: the smallest key among attempt - 10 (fits) or attempt
    attempt = types.Constant(np.arange(ATTEMPTS, dtype=np.float32).reshape(-1, 1))
    key = attempt - fits * float(ATTEMPTS)  # [ATTEMPTS, 1], float32
    first = fn.reductions.min(key, axes=[0])  # [1]
    found = first < 0.0
    chosen = fn.reductions.sum(fn.cast(sizes, dtype=types.FLOAT) * (key == first), axes=[0])
    # fallback: the whole image, its aspect ratio clamped to ratio_range, centred:
    # (h, w) = (min(H, round(W / lo)), min(W, round(H * hi)))
    lo, hi = _float64(ratio_range[0]), _float64(ratio_range[1])
    fallback = fn.stack(
        dmath.min(height, _round(width / lo)), dmath.min(width, _round(height * hi))
    )
    shapes = found * (fn.cast(chosen, dtype=f64) - fallback) + fallback
    free = hw - shapes
    centred = dmath.floor(free * 0.5)
    # min(): u * (n + 1) may round up to n + 1 for u just below 1
    placed = dmath.min(dmath.floor(position * (free + 1.0)), free)
    anchors = found * (placed - centred) + centred
    return fn.cast(anchors, dtype=types.INT32), fn.cast(shapes, dtype=types.INT32)
