"""Label pooling over a region made of several boxes, each weighted.

:func:`~dali_relabel.ops.label_pooling.label_pooling` pools a label map over one box.
Some regions are not boxes: after CutMix (Yun et al., ICCV 2019) pastes a box of another
image into a crop, what is left of the crop is the crop minus that box, four disjoint
strips. Its pooled scores are the area-weighted mean of the strips' poolings, which is
what this function computes, ``sum_r weights[b, r] * pool(box r of sample b)``, at the
cost of one pooling: ROIAlign is linear in the map, so the strips' sampling
weights are summed per grid cell before the scores are added into their classes.
:mod:`dali_relabel.loader._mixing` uses it for the loader's region targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError, ArgumentTypeError
from dali_relabel.ops._label_pooling_torch import region_pooling_torch
from dali_relabel.ops.label_pooling import _check_tensors, _check_values

__all__ = ["region_pooling"]


def region_pooling(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    weights: Tensor,
    num_classes: int,
    *,
    validate: bool = True,
) -> Tensor:
    """Weighted sum of each label map's poolings over several boxes, Tensor[B, C].

    ``out[b] = sum_r weights[b, r] * pool(scores[b], classes[b], boxes[b, r])`` (1x1
    output), computed as one pooling, where ``pool`` is :func:`label_pooling` except that
    a box keeps its exact extent: ROIAlign's ``aligned=False`` rule widens a box thinner
    than one cell to one cell, which would make a thin strip of a region stand for more
    than itself; here it is sampled as ``aligned=True`` samples it (an empty box gets no
    sample and adds 0). For boxes at least one cell wide and high both are the same.
    With the boxes' areas (as shares of the region) as weights, the result is the mean
    of the map over the union of disjoint boxes.

    Args:
        scores (Tensor[B, K, H, W]): as in :func:`~dali_relabel.ops.label_pooling`.
        classes (Tensor[B, K, H, W]): as in :func:`~dali_relabel.ops.label_pooling`.
        boxes (Tensor[B, R, 4]): R boxes per map, normalized (x1, y1, x2, y2) of the
            original image, as ``label_pooling``'s boxes. A box of weight 0 adds nothing,
            whatever its size.
        weights (Tensor[B, R]): float weight of each box.
        num_classes (int): number of classes C of the output.
        validate (bool): check box ranges and class ids (one host sync on CUDA).
            Default: True.

    Returns:
        Tensor[B, C] of pooled scores (before any softmax); dtype as ``label_pooling``'s.
    """
    num_classes = _checks.positive_int("num_classes", num_classes)
    for name, value in (("boxes", boxes), ("weights", weights)):
        if not isinstance(value, Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if (
        boxes.dim() != 3
        or boxes.shape[1:] == (0, 4)
        or boxes.shape[2] != 4
        or boxes.shape[0] != scores.shape[0]
    ):
        raise ArgumentError(
            f"boxes must have shape [B, R, 4] = [{scores.shape[0]}, R, 4] (R normalized "
            f"x1, y1, x2, y2 boxes per label map), got {tuple(boxes.shape)}"
        )
    if not weights.is_floating_point() or weights.shape != boxes.shape[:2]:
        raise ArgumentError(
            f"weights must be a float tensor of shape {tuple(boxes.shape[:2])} (one per "
            f"box), got {weights.dtype} {tuple(weights.shape)}"
        )
    flat = boxes.reshape(-1, 4)
    # the checks of label_pooling, on a batch whose rows are the R boxes of each map
    _check_tensors(scores, classes, flat[: scores.shape[0]], None)
    if weights.device != scores.device or boxes.device != scores.device:
        raise ArgumentError(
            f"all inputs must be on one device, got scores on {scores.device}, boxes on "
            f"{boxes.device}, weights on {weights.device}"
        )
    if validate and not torch.compiler.is_compiling():
        _check_values(scores, classes, flat, num_classes)
    return region_pooling_torch(scores, classes, boxes, weights, num_classes)
