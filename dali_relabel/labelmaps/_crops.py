"""RandomResizedCrop boxes as the loader draws them, without DALI.

The loader's graph draws each crop window with DALI's ``fn.random_crop_generator``
(area uniform in ``scale`` of the image's, aspect ratio log-uniform in ``ratio``, ten
attempts, then the whole image narrowed to the ratio range; DALI's
``dali/util/random_crop_generator.cc``) and turns the window into a normalized box with
:func:`~dali_relabel.loader.train_boxes`. :func:`~dali_relabel.labelmaps.label_map_report`
needs the same boxes for thousands of images at once and on installs without DALI:
:func:`random_crop_windows` draws them vectorized with numpy, :func:`crop_boxes` converts
them. tests/test_report.py checks both against DALI's generator and the loader's boxes.
"""

from __future__ import annotations

import math

import numpy as np

from dali_relabel.constants import RRC_RATIO, RRC_SCALE

__all__ = ["crop_boxes", "random_crop_windows"]

#: DALI's random_crop_generator default.
_ATTEMPTS = 10


def random_crop_windows(
    sizes: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> tuple[np.ndarray, np.ndarray]:
    """RandomResizedCrop windows as DALI's ``fn.random_crop_generator`` draws them.

    Vectorized over images: area uniform in ``scale`` of the image's, aspect ratio
    (width / height) log-uniform in ``ratio``, sides rounded to pixels; the first of ten
    attempts that fits and keeps the ratio in range wins, else the whole image narrowed
    to the ratio range (DALI's fallback). The position is uniform over the pixels.

    Args:
        sizes: (H, W) of each image in pixels, int [N, 2].
        rng: the random generator.
        scale: range of the window's area as a fraction of the image's. Default: (0.08, 1).
        ratio: range of the window's width / height. Default: (3/4, 4/3).

    Returns:
        (anchors, shapes): (y, x) of each window's top-left pixel and its (h, w), int64
        [N, 2] each, the layout of the loader's graph outputs.
    """
    hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    h_img, w_img = hw[:, 0], hw[:, 1]
    n = len(hw)
    area = (h_img * w_img).astype(np.float64)
    lo, hi = float(ratio[0]), float(ratio[1])
    max_w = np.maximum(1, np.floor(h_img * hi)).astype(np.int64)  # widest window allowed
    max_h = np.maximum(1, np.floor(w_img / lo)).astype(np.int64)  # tallest window allowed

    s = rng.uniform(scale[0], scale[1], (_ATTEMPTS, n))
    r = np.exp(rng.uniform(math.log(lo), math.log(hi), (_ATTEMPTS, n)))
    w = np.maximum(1, np.floor(np.sqrt(s * area * r) + 0.5)).astype(np.int64)
    h = np.maximum(1, np.floor(np.sqrt(s * area / r) + 0.5)).astype(np.int64)
    kept = w / h
    fits = (w <= w_img) & (h <= h_img) & (kept >= lo) & (kept <= hi)
    first = fits.argmax(axis=0)
    cols = np.arange(n)
    cw, ch = w[first, cols], h[first, cols]

    # No attempt fitted: the whole image, narrowed to the ratio range, shrunk to the
    # largest area allowed.
    aspect = w_img / h_img
    fw = np.where(aspect > hi, max_w, w_img)
    fh = np.where(aspect < lo, max_h, h_img)
    shrink = np.sqrt(np.minimum(1.0, scale[1] * area / (fw * fh)))
    fw = np.maximum(1, (fw * shrink).astype(np.int64))
    fh = np.maximum(1, (fh * shrink).astype(np.int64))
    failed = ~fits.any(axis=0)
    cw, ch = np.where(failed, fw, cw), np.where(failed, fh, ch)
    # Images so wide (or tall) that no window of the smallest area keeps the ratio.
    min_area = area * scale[0]
    too_wide = h_img * max_w < min_area
    too_tall = ~too_wide & (w_img * max_h < min_area)
    cw, ch = np.where(too_wide, max_w, cw), np.where(too_wide, h_img, ch)
    cw, ch = np.where(too_tall, w_img, cw), np.where(too_tall, max_h, ch)

    x = rng.integers(0, w_img - cw + 1)
    y = rng.integers(0, h_img - ch + 1)
    return np.stack([y, x], axis=1), np.stack([ch, cw], axis=1)


def crop_boxes(anchors: np.ndarray, shapes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pixel windows as the op's boxes: normalized (x1, y1, x2, y2), float32 [N, 4].

    The loader's convention (:func:`~dali_relabel.loader.train_boxes`): anchors (y, x),
    shapes (h, w) and sizes (H, W) in pixels; x is divided by W and y by H.
    """
    hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    start = np.asarray(anchors, dtype=np.float64) / hw
    stop = (np.asarray(anchors) + np.asarray(shapes)).astype(np.float64) / hw
    boxes = np.stack([start[:, 1], start[:, 0], stop[:, 1], stop[:, 0]], axis=1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)
