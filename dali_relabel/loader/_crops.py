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
integer-valued sizes, which float32 holds exactly), so it equals torchvision's
``get_params`` given the same draws; ``round`` is ``floor(x + 0.5)``, which differs from
Python's ``round`` only at exact halves. The placement draws a uniform ``position`` where
torchvision calls ``torch.randint``: the same distribution from another generator.
"""

from __future__ import annotations

import math

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

__all__ = ["ATTEMPTS", "batch_generator", "draw_crops", "rrc_window"]

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
    """One batch's draws for :func:`rrc_window` and the mirror flags, by input name.

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


def _round(x):
    return dmath.floor(x + 0.5)


def _float64(value: float):
    # A Python float in a DALI expression is a float32 constant: 4/3 would lose digits.
    return types.Constant(np.float64(value), dtype=types.FLOAT64)


def _pick(sizes, chosen):
    """The size of the chosen attempt (sizes are integers, exact in float32)."""
    picked = fn.reductions.sum(fn.cast(sizes, dtype=types.FLOAT) * chosen, axes=[0], keep_dims=True)
    return fn.cast(picked, dtype=types.FLOAT64)


def rrc_window(image_shapes, area, ratio, position, ratio_range: tuple[float, float]):
    """The RandomResizedCrop window of each sample, as DALI graph nodes.

    Args:
        image_shapes: (H, W, C) per sample (``fn.peek_image_shape``).
        area, ratio, position: the draws of :func:`draw_crops`, one row per sample.
        ratio_range: the aspect-ratio range, for the fallback's clamp.

    Returns:
        (anchors, shapes): int32 (y, x) of the window's top-left pixel and its (h, w).
    """
    f64, f32 = types.FLOAT64, types.FLOAT
    height = fn.cast(fn.slice(image_shapes, 0, 1, axes=[0]), dtype=f64)  # [1]
    width = fn.cast(fn.slice(image_shapes, 1, 1, axes=[0]), dtype=f64)
    target = height * width * area  # [ATTEMPTS], float64 as torchvision's Python floats
    w = _round(dmath.sqrt(target * ratio))
    h = _round(dmath.sqrt(target / ratio))
    fits = (w > 0.0) & (w <= width) & (h > 0.0) & (h <= height)
    # the first attempt that fits: the smallest attempt number among those that fit
    attempt = types.Constant(np.arange(ATTEMPTS, dtype=np.float32))
    penalty = float(ATTEMPTS) * (1.0 - fn.cast(fits, dtype=f32))
    first = fn.reductions.min(attempt + penalty, axes=[0], keep_dims=True)
    chosen = fn.cast(attempt == first, dtype=f32)
    found = fn.cast(first < float(ATTEMPTS), dtype=f64)
    w_found = _pick(w, chosen)
    h_found = _pick(h, chosen)
    # fallback: the whole image, its aspect ratio clamped to ratio_range, centred
    lo, hi = _float64(ratio_range[0]), _float64(ratio_range[1])
    in_ratio = width / height
    narrow = fn.cast(in_ratio < lo, dtype=f64)
    wide = fn.cast(in_ratio > hi, dtype=f64)
    w_fallback = wide * _round(height * hi) + (1.0 - wide) * width
    h_fallback = narrow * _round(width / lo) + (1.0 - narrow) * height
    w_crop = found * w_found + (1.0 - found) * w_fallback
    h_crop = found * h_found + (1.0 - found) * h_fallback
    free_y, free_x = height - h_crop, width - w_crop
    u_y = fn.slice(position, 0, 1, axes=[0])
    u_x = fn.slice(position, 1, 1, axes=[0])
    # min(): u * (n + 1) may round up to n + 1 for u just below 1
    y = found * dmath.min(dmath.floor(u_y * (free_y + 1.0)), free_y) + (1.0 - found) * dmath.floor(
        free_y * 0.5
    )
    x = found * dmath.min(dmath.floor(u_x * (free_x + 1.0)), free_x) + (1.0 - found) * dmath.floor(
        free_x * 0.5
    )
    anchors = fn.cast(fn.cat(y, x), dtype=types.INT32)
    shapes = fn.cast(fn.cat(h_crop, w_crop), dtype=types.INT32)
    return anchors, shapes
