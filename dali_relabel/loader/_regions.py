"""Where the parts of a CutMix image come from: boxes in the original images, and pastes.

A CutMix box is drawn in the output's pixels (S x S, after the crop, the resize and the
flip). The loader's region targets (:mod:`._mixing`) pool each part of a mixed image
over the pixels it shows, so the box and the rest of the crop have to be mapped back
into each original image, and the DALI graph has to paste the partner's pixels of
exactly that region.

The mapping of an output pixel rectangle ``[xa, xb] x [ya, yb]`` into normalized
coordinates of the original image, for a crop ``(x1, y1, x2, y2)``: a mirrored output
reads column ``S - x`` of the crop, so ``[xa, xb]`` becomes ``[S - xb, S - xa]``; then
``x = x1 + x / S * (x2 - x1)`` and ``y = y1 + y / S * (y2 - y1)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dali_relabel.loader._mixing import MixParams

__all__ = ["paste_inputs", "region_boxes"]


def region_boxes(
    params: MixParams, crop_boxes: np.ndarray, mirrors: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each part of the mixed images lies in the original images (module docstring).

    Args:
        params: the batch's mixing.
        crop_boxes: float [B, 4], each crop as normalized (x1, y1, x2, y2).
        mirrors: bool [B].
        size: (height, width) of the output images.

    Returns:
        ``strips`` float64 [B, 4, 4]: the kept image's four strips around its box (above,
        below, left, right) as normalized boxes of its own original image; ``shares``
        float64 [B, 4]: their pixel areas as shares of the output (for a sample not cut,
        strip 0 is the whole crop with share 1 and the others 0); ``source`` float64
        [B, 4]: for sample s, the box of its partner ``B - 1 - s`` (which shows s's
        pixels) in s's original image, or s's whole crop where that partner is not cut.
    """
    height, width = size
    batch = len(params.lam)
    yl, yh, xl, xh = params.boxes.T.astype(np.float64)
    zero, h, w = np.zeros(batch), np.full(batch, float(height)), np.full(batch, float(width))
    # output pixel rectangles (ya, yb, xa, xb), [B, 4 strips]
    ya = np.stack([zero, yh, yl, yl], 1)
    yb = np.stack([yl, h, yh, yh], 1)
    xa = np.stack([zero, zero, zero, xh], 1)
    xb = np.stack([w, w, xl, w], 1)
    cut = params.cutmix
    full = np.array([0.0, height, 0.0, width])
    for a, value in zip((ya, yb, xa, xb), full, strict=True):
        a[~cut, 0] = value
    shares = (yb - ya) * (xb - xa) / float(height * width)
    shares[~cut, 1:] = 0.0
    strips = _to_original(ya, yb, xa, xb, crop_boxes[:, None], mirrors[:, None], size)
    # the partner's box, read in this sample's image (partner of s is B - 1 - s)
    box = np.where(cut[:, None], params.boxes.astype(np.float64), full)[::-1]
    source = _to_original(*box.T, crop_boxes, mirrors, size)
    return strips, shares, source


def _to_original(ya, yb, xa, xb, crop, mirror, size) -> np.ndarray:
    """Output pixel rectangles -> normalized (x1, y1, x2, y2) of the original images."""
    height, width = size
    crop = np.asarray(crop, dtype=np.float64)
    x1, y1, x2, y2 = (crop[..., i] for i in range(4))
    mirror = np.asarray(mirror, dtype=bool)
    xa, xb = np.where(mirror, width - xb, xa), np.where(mirror, width - xa, xb)
    fx, fy = (x2 - x1) / width, (y2 - y1) / height
    out = np.stack([x1 + xa * fx, y1 + ya * fy, x1 + xb * fx, y1 + yb * fy], axis=-1)
    return np.clip(out, 0.0, 1.0)


def paste_inputs(
    params: MixParams, mirrors: np.ndarray, size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """``fn.multi_paste`` arguments that paste the CutMix boxes into a batch whose
    flips are still to come (``crop_mirror_normalize`` mirrors after the paste).

    Sample i gets two pastes: itself whole, then its partner's box. The box is in
    output (flipped) coordinates, so each side reads it through its own flip: columns
    ``[xl, xh)`` become ``[W - xh, W - xl)`` in a sample that is mirrored later. The
    pasted pixels are then exactly the partner's pixels of that region, the ones the
    region targets pool; where the two flips differ, the patch appears mirrored
    relative to the partner's own image (the same distribution of patches, as flips
    are drawn at random). Samples not cut paste a 1x1 copy of themselves instead.

    Returns:
        ``paste_ids`` int32 [B, 2], ``paste_shapes``, ``paste_in`` and ``paste_out``
        int32 [B, 2, 2] ((h, w) and (y, x) anchors), by input name.
    """
    height, width = size
    batch = len(params.lam)
    own = np.arange(batch, dtype=np.int32)
    partner = own[::-1]
    yl, yh, xl, xh = params.boxes.T.astype(np.int32)
    mirrors = np.asarray(mirrors, dtype=bool)
    x_read = np.where(mirrors[partner], width - xh, xl)
    x_write = np.where(mirrors, width - xh, xl)
    cut = params.cutmix
    ids = np.stack([own, np.where(cut, partner, own)], 1)
    full = np.broadcast_to(np.int32([height, width]), (batch, 2))
    box = np.where(cut[:, None], np.stack([yh - yl, xh - xl], 1), 1)
    zero = np.zeros((batch, 2), np.int32)
    read = np.where(cut[:, None], np.stack([yl, x_read], 1), 0)
    write = np.where(cut[:, None], np.stack([yl, x_write], 1), 0)
    return {
        "paste_ids": ids.astype(np.int32),
        "paste_shapes": np.stack([full, box], 1).astype(np.int32),
        "paste_in": np.stack([zero, read], 1).astype(np.int32),
        "paste_out": np.stack([zero, write], 1).astype(np.int32),
    }
