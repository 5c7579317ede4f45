"""Triton kernel of LabelPooling for CUDA devices.

The vectorized PyTorch kernel of :mod:`dali_relabel.ops._label_pooling_torch` launches
some eighty small kernels, so on a GPU it is bound by launch latency; this one computes a
whole batch in a single launch (plus the zeroing of the output). One program handles one
(box, output row): it builds the 1-D ROIAlign weights of that row along y and of each
output column along x, exactly as torchvision's kernel samples them (aligned=False,
adaptive sampling grid), and adds weight * score into the output at each stored class with
atomics.

Semantics match ``label_pooling_torch``; the tests run this kernel under Triton's CPU
interpreter (``TRITON_INTERPRET=1``) against torchvision, and on CUDA where one is present.
Atomic adds make the summation order vary between runs (a few ulps); under
``torch.use_deterministic_algorithms(True)`` the op uses the PyTorch kernel instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["label_pooling_triton"]


@triton.jit
def _axis_weights(
    start, end, index, cells, SIZE: tl.constexpr, BINS: tl.constexpr, MAX_GRID: tl.constexpr
):
    """Weights of `cells` (float cell ids) for output bin `index` along one axis."""
    # aligned=False: ROIs thinner than one cell count as one cell.
    extent = tl.maximum(end - start, 1.0)
    bin_size = extent / BINS
    grid = tl.ceil(bin_size)
    base = start + index * bin_size
    acc = tl.zeros(cells.shape, dtype=start.dtype)
    # Boxes lie in [0, 1], so the adaptive grid has at most ceil(SIZE / BINS) points.
    for g in tl.static_range(MAX_GRID):
        pos = base + (g + 0.5) * bin_size / grid
        inside = (pos >= -1.0) & (pos <= SIZE) & (g < grid)
        # Clamping to [0, SIZE - 1] is the kernel's border handling (see the PyTorch path).
        pos = tl.minimum(tl.maximum(pos, 0.0), SIZE - 1.0)
        low = tl.floor(pos)
        frac = pos - low
        weight = tl.where(cells == low, 1.0 - frac, 0.0) + tl.where(cells == low + 1.0, frac, 0.0)
        acc += tl.where(inside, weight, 0.0)
    return acc / grid


@triton.jit
def _label_pooling_kernel(
    scores_ptr,
    classes_ptr,
    boxes_ptr,
    flip_ptr,
    out_ptr,
    NUM_CLASSES: tl.constexpr,
    K: tl.constexpr,
    H: tl.constexpr,
    W: tl.constexpr,
    OUT_H: tl.constexpr,
    OUT_W: tl.constexpr,
    HAS_FLIP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1)
    box = boxes_ptr + b * 4
    x1 = tl.minimum(tl.maximum(tl.load(box), 0.0), 1.0)
    y1 = tl.minimum(tl.maximum(tl.load(box + 1), 0.0), 1.0)
    x2 = tl.minimum(tl.maximum(tl.load(box + 2), 0.0), 1.0)
    y2 = tl.minimum(tl.maximum(tl.load(box + 3), 0.0), 1.0)
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    wy = _axis_weights(y1 * H - 0.5, y2 * H - 0.5, i, rows.to(x1.dtype), H, OUT_H, GRID_H)
    on_grid = (rows[:, None] < H) & (cols[None, :] < W)
    offsets = rows[:, None] * W + cols[None, :]
    flipped = False
    if HAS_FLIP:
        flipped = tl.load(flip_ptr + b) != 0
    out_row = out_ptr + b * (NUM_CLASSES * OUT_H * OUT_W) + i * OUT_W
    for j in range(OUT_W):
        # A mirrored crop shows, in output column j, what column OUT_W - 1 - j pools.
        source = tl.where(flipped, OUT_W - 1 - j, j)
        wx = _axis_weights(x1 * W - 0.5, x2 * W - 0.5, source, cols.to(x1.dtype), W, OUT_W, GRID_W)
        weight = wy[:, None] * wx[None, :]
        active = on_grid & (weight != 0.0)
        for k in range(K):
            plane = (b * K + k) * (H * W) + offsets
            score = tl.load(scores_ptr + plane, mask=active, other=0.0).to(x1.dtype)
            cls = tl.load(classes_ptr + plane, mask=active, other=0).to(tl.int64)
            tl.atomic_add(out_row + cls * (OUT_H * OUT_W) + j, score * weight, mask=active)


def label_pooling_triton(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    num_classes: int,
    output_height: int,
    output_width: int,
    flip: Tensor | None,
) -> Tensor:
    """Same contract as the op ``dali_relabel::label_pooling`` (inputs already checked)."""
    batch, topk, height, width = scores.shape
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    out = torch.zeros(
        batch, num_classes, output_height, output_width, dtype=dtype, device=scores.device
    )
    if out.numel() == 0 or topk == 0:
        return out
    _label_pooling_kernel[(batch, output_height)](
        scores.contiguous(),
        classes.contiguous(),
        boxes.to(dtype).contiguous(),
        flip.to(torch.uint8) if flip is not None else out,  # any pointer when unused
        out,
        NUM_CLASSES=num_classes,
        K=topk,
        H=height,
        W=width,
        OUT_H=output_height,
        OUT_W=output_width,
        HAS_FLIP=flip is not None,
        BLOCK_H=triton.next_power_of_2(height),
        BLOCK_W=triton.next_power_of_2(width),
        GRID_H=-(-height // output_height),
        GRID_W=-(-width // output_width),
    )
    return out
