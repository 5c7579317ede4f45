"""torchvision's RandomResizedCrop window in a DALI graph, from the host's draws.

:mod:`dali_relabel._rrc` holds the crop: its draws (keyed by seed, epoch, rank and
batch), the inputs they make (:func:`~dali_relabel._rrc.crop_inputs`), the window's
arithmetic and the boxes. The window is computed per sample inside the DALI graph from
the image shape that ``fn.peek_image_shape`` reads, because only the graph knows the
shapes: :func:`rrc_window` is :func:`~dali_relabel._rrc.rrc_windows` in DALI operators,
in float64 (DALI's reductions take float32, used only on integer-valued sizes, which
float32 holds exactly). tests/test_crops.py checks both against torchvision's
``get_params``, fed its own recorded draws.

Each DALI arithmetic operator costs about the same per sample whatever the size of its
tensors, so the graph works on (y, x) pairs and all attempts at once: half the operators
of one attempt at a time, a few percent of decoding the sample (README, "Numbers").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from dali_relabel._rrc import ATTEMPTS

__all__ = ["rrc_window"]


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
        attempts, position: :func:`~dali_relabel._rrc.crop_inputs` per sample.
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
