"""Pure-PyTorch kernel of LabelPooling, for CPU and every device without the Triton one.

It reproduces torchvision's ``roi_align`` CPU kernel (``aligned=False``, adaptive
``sampling_ratio``) on the densified label map without building that map: per box, the
sampling weights of each axis are built once, as the kernel computes them step by step,
their outer product gives the weight of every (output cell, grid cell) pair, and the
weighted scores are added into their classes with one flat ``index_add_``. Vectorized over
the batch with static shapes, so it has no host syncs and no Python loop over boxes.

:mod:`dali_relabel.ops.label_pooling` registers it as the op's kernel and uses
:func:`label_pooling_torch_grad` for the backward; ``_label_pooling_triton`` is the CUDA
kernel with the same semantics.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "compute_dtype",
    "label_pooling_torch",
    "label_pooling_torch_grad",
    "region_pooling_torch",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the op computes and returns in for scores of `dtype`."""
    # Half-precision scores are accumulated in float32: summing up to H * W * k products
    # in float16 would lose about three digits.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _axis_weights(
    start: Tensor, end: Tensor, size: int, bins: int, window: int, widen: bool = True
) -> tuple[Tensor, Tensor]:
    """1-D ROIAlign weights of one axis, following torchvision's CPU kernel step by step.

    The bilinear weight of a sample on cell (y, x) is wy(y) * wx(x), and a sample off the
    map (y or x out of range) contributes nothing, again a product of per-axis indicators;
    so the 2-D sum over the sampling grid is the product of two 1-D sums, each divided by
    its own grid size (count = grid_h * grid_w).

    Args:
        start, end: ROI start and end in grid units, Tensor[B] (``x1 * size - 0.5``).
        size: grid cells along the axis (H or W); bins: output cells along it (h or w).
        window: consecutive cells that can carry weight for one bin.
        widen: ROIAlign's ``aligned=False`` rule, a ROI thinner than one cell is widened
            to one cell; False samples its exact extent (``aligned=True``'s rule), and an
            empty ROI gets no samples and weight 0.

    Returns:
        Weights Tensor[B, bins, window] and each window's first cell Tensor[B, bins] (int64).
    """
    # aligned=False forces malformed (thinner than one cell) ROIs to one cell.
    extent = (end - start).clamp(min=1.0 if widen else 0.0)
    bin_size = extent / bins
    # Adaptive sampling_ratio: ceil(roi_size / pooled_size) points per bin, data dependent.
    # Boxes lie in [0, 1], so extent <= size and the grid never exceeds ceil(size / bins):
    # pad to that static bound and mask, which keeps the shapes fixed and the GPU sync-free.
    samples = torch.ceil(bin_size)  # 0 only for an empty ROI that is not widened
    grid = samples.clamp(min=1.0)  # the divisor: a no-op for widened ROIs
    max_grid = -(-size // bins)
    g = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    b = torch.arange(bins, dtype=start.dtype, device=start.device)
    # Same operation order as torchvision, so that every sample lands on the same float.
    base = start[:, None] + b * bin_size[:, None]  # [B, bins]
    step = (g + 0.5) * bin_size[:, None] / grid[:, None]  # [B, G]
    pos = base[:, :, None] + step[:, None, :]  # [B, bins, G]
    used = (g < samples[:, None])[:, None, :]
    inside = ((pos >= -1.0) & (pos <= size) & used).to(pos.dtype)
    # Clamping to [0, size - 1] reproduces the kernel's two border rules at once: y <= 0
    # reads cell 0, and y_low >= size - 1 reads cell size - 1 with weight 1 (ly = 0).
    pos = pos.clamp(0.0, size - 1)
    low = pos.floor()
    frac = (pos - low) * inside
    rest = inside - frac
    first = base.clamp(min=0.0).floor().clamp(max=size - window)  # [B, bins]
    # Real samples stay inside the window (see _sampling_plan); the clamp keeps the padded,
    # zero-weight ones from indexing past it.
    low = (low - first[:, :, None]).long().clamp(max=window - 1)
    high = (low + 1).clamp(max=window - 1)
    weights = torch.zeros(pos.shape[0], bins, window, dtype=pos.dtype, device=pos.device)
    weights.scatter_add_(2, low, rest).scatter_add_(2, high, frac)
    return weights / grid[:, None, None], first.long()


def _sampling_plan(
    boxes: Tensor,
    flip: Tensor | None,
    height: int,
    width: int,
    out_h: int,
    out_w: int,
    widen: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Weights of every (output cell, grid cell) pair and where those grid cells lie.

    Returns:
        weight Tensor[B, 1, P] and, when the windows do not cover the whole grid, the flat
        grid index of each entry Tensor[B, 1, P] (else None: entry p is cell p % (H * W) of
        output cell p // (H * W)). P = out_h * out_w * window_h * window_w.
    """
    batch = boxes.shape[0]
    # Clamping is a no-op for validated boxes and bounds the sampling grid for the rest.
    boxes = boxes.clamp(0.0, 1.0)
    x1, y1, x2, y2 = boxes.unbind(1)
    # A bin of size/bins cells touches at most floor(size/bins) + 2 cells; one more for the
    # rounding of sample positions.
    win_h = min(height, height // out_h + 3)
    win_w = min(width, width // out_w + 3)
    wy, fy = _axis_weights(y1 * height - 0.5, y2 * height - 0.5, height, out_h, win_h, widen)
    wx, fx = _axis_weights(x1 * width - 0.5, x2 * width - 0.5, width, out_w, win_w, widen)
    if flip is not None:
        # The crop was mirrored after pooling positions were fixed: output column j of a
        # flipped sample is column out_w - 1 - j of the unflipped one.
        flip = flip.view(batch, 1, 1)
        wx = torch.where(flip, wx.flip(1), wx)
        fx = torch.where(flip.view(batch, 1), fx.flip(1), fx)
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]  # [B, h, w, win_h, win_w]
    entries = out_h * out_w * win_h * win_w
    weight = weight.reshape(batch, 1, entries)
    if win_h == height and win_w == width:
        return weight, None
    rows = fy[:, :, None, None, None] + torch.arange(win_h, device=boxes.device)[:, None]
    cols = fx[:, None, :, None, None] + torch.arange(win_w, device=boxes.device)
    return weight, (rows * width + cols).reshape(batch, 1, entries)


def _spread(grid_values: Tensor, pos: Tensor | None, cells: int) -> Tensor:
    """Lay grid values [B, K, H * W] out in plan order: Tensor[B, K, P]."""
    batch, topk = grid_values.shape[:2]
    if pos is not None:
        return grid_values.gather(2, pos.expand(batch, topk, pos.shape[2]))
    return grid_values.repeat(1, 1, cells) if cells > 1 else grid_values


def _flat_index(classes: Tensor, pos: Tensor | None, cells: int, num_classes: int) -> Tensor:
    """Where each plan entry lands in the flat [B * C * cells] output, Tensor[B, K, P]."""
    batch, topk, height, width = classes.shape
    # A flat index_add_ with int32 indices is several times faster on CPU than scatter_add_
    # along dim 1 (which slows down superlinearly with the batch) and moves half the bytes.
    itype = torch.int32 if batch * num_classes * cells < 2**31 else torch.int64
    index = _spread(classes.reshape(batch, topk, height * width), pos, cells)
    offset = torch.arange(batch, dtype=itype, device=classes.device) * (num_classes * cells)
    if cells == 1:
        # Type promotion turns int16 + int32 into one int32 tensor, without a converted copy.
        return index + offset[:, None, None]
    cell = torch.arange(cells, dtype=itype, device=classes.device)
    cell = offset[:, None, None] + cell.repeat_interleave(index.shape[2] // cells)
    # Widen before multiplying: int16 class ids * cells overflows int16.
    return (index.to(itype) * cells).add_(cell)


def label_pooling_torch(
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
    dtype = compute_dtype(scores.dtype)
    cells = output_height * output_width
    weight, pos = _sampling_plan(boxes.to(dtype), flip, height, width, output_height, output_width)
    values = _spread(scores.reshape(batch, topk, height * width), pos, cells)
    # Type promotion makes float16 * float32 a float32 product without a converted copy.
    values = values * weight
    index = _flat_index(classes, pos, cells, num_classes)
    out = torch.zeros(batch * num_classes * cells, dtype=dtype, device=scores.device)
    out.index_add_(0, index.flatten(), values.flatten())
    return out.view(batch, num_classes, output_height, output_width)


def label_pooling_torch_grad(
    grad: Tensor, classes: Tensor, boxes: Tensor, flip: Tensor | None, height: int, width: int
) -> Tensor:
    """Gradient of the pooled map with respect to the scores, Tensor[B, K, H, W] (compute dtype)."""
    batch, topk = classes.shape[:2]
    out_h, out_w = grad.shape[2:]
    cells = out_h * out_w
    weight, pos = _sampling_plan(boxes.to(grad.dtype), flip, height, width, out_h, out_w)
    index = _flat_index(classes, pos, cells, grad.shape[1])
    picked = grad.flatten().index_select(0, index.flatten()).view(index.shape) * weight
    if pos is None:
        return picked.view(batch, topk, cells, height, width).sum(2)
    out = torch.zeros(batch, topk, height * width, dtype=grad.dtype, device=grad.device)
    out.scatter_add_(2, pos.expand(index.shape), picked)
    return out.view(batch, topk, height, width)


def region_pooling_torch(
    scores: Tensor, classes: Tensor, boxes: Tensor, weights: Tensor, num_classes: int
) -> Tensor:
    """Same contract as :func:`dali_relabel.ops.region_pooling` (inputs already checked).

    ROIAlign is linear in the map, so the weighted sum of a sample's box poolings is one
    pooling with the weighted sum of the boxes' sampling weights: the R plans are summed
    per grid cell before the single ``index_add_``, which costs one pooling, not R. Boxes
    keep their exact extent (no widening of thin ones).
    """
    batch, topk, height, width = scores.shape
    regions = boxes.shape[1]
    dtype = compute_dtype(scores.dtype)
    # A 1x1 output's window is the whole grid: plan entry p is grid cell p (no positions).
    flat = boxes.reshape(-1, 4).to(dtype)
    plan, _ = _sampling_plan(flat, None, height, width, 1, 1, widen=False)
    plan = plan.view(batch, regions, height * width) * weights.to(dtype)[:, :, None]
    values = scores.reshape(batch, topk, height * width) * plan.sum(1, keepdim=True)
    index = _flat_index(classes, None, 1, num_classes)
    out = torch.zeros(batch * num_classes, dtype=dtype, device=scores.device)
    out.index_add_(0, index.flatten(), values.flatten())
    return out.view(batch, num_classes)
