"""region_pooling: the weighted sum of torchvision roi_align poolings on densified maps."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from dali_relabel.ops import label_pooling, region_pooling


def _maps(batch, topk, height, width, num_classes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, topk, height, width, generator=g).to(dtype)
    classes = torch.rand(batch, num_classes, height, width, generator=g).topk(topk, 1).indices
    return scores, classes


def _roi_align_sum(scores, classes, boxes, weights, num_classes):
    """sum_r w_r * roi_align(dense map, box r, aligned=True), float64, one box at a time:
    label_pooling's mapping without the widening of boxes thinner than a cell."""
    batch, _, height, width = scores.shape
    dense = torch.zeros(batch, num_classes, height, width, dtype=torch.float64)
    dense.scatter_(1, classes.long(), scores.double())
    out = torch.zeros(batch, num_classes, dtype=torch.float64)
    for b in range(batch):
        for r in range(boxes.shape[1]):
            x1, y1, x2, y2 = boxes[b, r].double().tolist()
            roi = torch.tensor([[0, x1 * width, y1 * height, x2 * width, y2 * height]],
                               dtype=torch.float64)  # fmt: skip
            pooled = roi_align(dense[b : b + 1], roi, 1, 1.0, -1, aligned=True)
            out[b] += float(weights[b, r]) * pooled.view(-1)
    return out


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("grid", [(15, 15), (16, 9)])
def test_matches_weighted_roi_align(dtype, atol, grid):
    batch, regions, num_classes = 24, 5, 40
    scores, classes = _maps(batch, 5, *grid, num_classes, dtype, seed=grid[1])
    g = torch.Generator().manual_seed(7)
    corners = torch.rand(batch, regions, 2, 2, generator=g, dtype=torch.float64)
    boxes = torch.cat([corners.amin(2), corners.amax(2)], 2)
    boxes[0, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # full, degenerate and thin boxes too
    boxes[0, 1] = torch.tensor([0.3, 0.3, 0.3, 0.3])
    boxes[1, 2] = torch.tensor([0.0, 0.5, 1.0, 0.52])
    weights = torch.rand(batch, regions, generator=g, dtype=torch.float64)
    weights[2] = 0.0
    out = region_pooling(scores, classes, boxes.to(dtype), weights.to(dtype), num_classes)
    expected = _roi_align_sum(scores, classes, boxes.to(dtype), weights, num_classes)
    assert out.dtype == dtype and out.shape == (batch, num_classes)
    assert torch.allclose(out.double(), expected, rtol=0, atol=atol)
    assert out[2].abs().max() == 0  # weights 0 add nothing


def test_one_box_of_weight_one_is_label_pooling():
    # boxes of at least one cell: label_pooling widens nothing either
    scores, classes = _maps(8, 3, 15, 15, 20, torch.float16, seed=3)
    g = torch.Generator().manual_seed(4)
    lo = torch.rand(8, 2, generator=g) * 0.5
    boxes = torch.cat([lo, lo + 0.1 + 0.4 * torch.rand(8, 2, generator=g)], 1)
    single = label_pooling(scores, classes, boxes, 20)
    region = region_pooling(scores, classes, boxes[:, None], torch.ones(8, 1), 20)
    assert region.dtype == torch.float32 and torch.allclose(region, single, atol=1e-6)


def test_errors_name_the_argument():
    scores, classes = _maps(2, 3, 15, 15, 10, torch.float32, seed=0)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 0.5, 0.5]]])
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, R, 4\]"):
        region_pooling(scores, classes, boxes[:, 0], torch.ones(2, 1), 10)
    with pytest.raises(ValueError, match="weights must be a float tensor of shape"):
        region_pooling(scores, classes, boxes, torch.ones(2, 1, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="normalized to"):
        region_pooling(scores, classes, boxes * 224, torch.ones(2, 1), 10)
    with pytest.raises(ValueError, match="num_classes >= "):
        region_pooling(scores, classes, boxes, torch.ones(2, 1), 5)
    poisoned = scores.clone()
    poisoned[1, 0, 3, 4] = float("nan")  # label_pooling's finite check, here too
    with pytest.raises(ValueError, match=r"1 NaN or inf values \(first in scores\[1\]\)"):
        region_pooling(poisoned, classes, boxes, torch.ones(2, 1), 10)
