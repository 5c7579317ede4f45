"""torchvision's RandomResizedCrop on the host, in numpy: the draws, the windows, the boxes.

The one implementation of the crops that the loader trains on, without DALI, so that the
parts that must import without DALI can draw them too:

- the loader's graph (:mod:`dali_relabel.loader._crops`) is fed :func:`draw_crops`'
  draws through :func:`crop_inputs` and computes the window of each sample inside the
  graph (only the graph knows the image shapes); :func:`rrc_windows` is the same
  arithmetic on the host, for images whose sizes are known;
- :func:`~dali_relabel.labelmaps.label_map_report` draws its random crops with
  :func:`draw_crops` and :func:`rrc_windows` and turns them into boxes with
  :func:`train_boxes`, as the loader does.

The window is ``RandomResizedCrop.get_params`` of torchvision (the transform the ReLabel
paper trains with):

    10 attempts: target_area = H * W * area[t], aspect = ratio[t],
                 w = round(sqrt(target_area * aspect)), h = round(sqrt(target_area / aspect));
                 the first attempt with 0 < w <= W and 0 < h <= H is the window, placed at
                 i = floor(position[0] * (H - h + 1)), j = floor(position[1] * (W - w + 1));
    fallback:    the central crop of the whole image with its aspect ratio clamped to the
                 ratio range.

The uniform draws behind it (``area``, ``ratio``, ``position``, and the ``mirror`` flag of
RandomHorizontalFlip) are keyed by (seed, epoch, rank, batch) through numpy's
SeedSequence and Philox (:func:`batch_generator`): a batch's crops depend on nothing
else, so any epoch, or the rest of an interrupted one, can be drawn again exactly.

The window is computed in float64. Each attempt's area and aspect ratio are multiplied
into (area / ratio, area * ratio) (:func:`crop_inputs`), so H * W * (area * ratio) is
computed where torchvision computes (H * W * area) * ratio: the windows are the same
unless a last-bit rounding of that product decides an exact half, about once in 10^12
windows. ``round`` is ``floor(x + 0.5)`` (Python's rounds exact halves to even). The
placement uses a uniform ``position`` where torchvision calls ``torch.randint``: the same
distribution from another generator. tests/test_crops.py checks the graph's windows and
:func:`rrc_windows` against ``get_params`` itself and against a float64 transcription.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "ATTEMPTS",
    "batch_generator",
    "crop_inputs",
    "draw_crops",
    "rrc_windows",
    "train_boxes",
]

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
    """The window's inputs made of :func:`draw_crops`' draws, by the graph's input names.

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


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def rrc_windows(
    sizes: np.ndarray,
    attempts: np.ndarray,
    position: np.ndarray,
    ratio_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """The RandomResizedCrop window of each image, the graph's arithmetic on the host.

    Args:
        sizes: (H, W) of each image in pixels, int [N, 2] (more columns, e.g. (H, W, C),
            are ignored).
        attempts, position: :func:`crop_inputs` of N samples' draws.
        ratio_range: the aspect-ratio range, for the fallback's clamp.

    Returns:
        (anchors, shapes): int64 (y, x) of each window's top-left pixel and its (h, w),
        [N, 2] each, as the loader's graph outputs them.
    """
    hw = np.asarray(sizes)[:, :2].astype(np.float64)
    height, width = hw[:, 0], hw[:, 1]
    total = (height * width)[:, None, None]
    tried = _round(np.sqrt(total * np.asarray(attempts, dtype=np.float64)))  # [N, 10, 2]
    fits = ((tried <= hw[:, None]) & (tried >= 1.0)).all(axis=2)  # [N, 10]
    found = fits.any(axis=1)
    chosen = tried[np.arange(len(hw)), fits.argmax(axis=1)]  # the first that fits
    # fallback: the whole image, its aspect ratio clamped to ratio_range, centred:
    # (h, w) = (min(H, round(W / lo)), min(W, round(H * hi)))
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    fallback = np.stack(
        [np.minimum(height, _round(width / lo)), np.minimum(width, _round(height * hi))], axis=1
    )
    shapes = np.where(found[:, None], chosen, fallback)
    free = hw - shapes
    # min(): u * (n + 1) may round up to n + 1 for u just below 1
    placed = np.minimum(np.floor(np.asarray(position, dtype=np.float64) * (free + 1.0)), free)
    anchors = np.where(found[:, None], placed, np.floor(free * 0.5))
    return anchors.astype(np.int64), shapes.astype(np.int64)


def train_boxes(anchors: np.ndarray, shapes: np.ndarray, image_shapes: np.ndarray) -> np.ndarray:
    """Crop windows as normalized (x1, y1, x2, y2) boxes of the original images, float32 [B, 4].

    Args:
        anchors: (y, x) of each window's top-left pixel, [B, 2].
        shapes: (h, w) of each window in pixels, [B, 2].
        image_shapes: (H, W, C) of each decoded image, [B, 3] (``peek_image_shape``), or
            (H, W), [B, 2].
    """
    hw = np.asarray(image_shapes)[:, :2].astype(np.float64)
    start = np.asarray(anchors).astype(np.float64) / hw
    stop = (np.asarray(anchors) + np.asarray(shapes)).astype(np.float64) / hw
    # (y, x) pairs become x1, y1, x2, y2
    boxes = np.stack([start[:, 1], start[:, 0], stop[:, 1], stop[:, 0]], axis=1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)
