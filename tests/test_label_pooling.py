"""Tests of dali_relabel.ops.label_pooling against references it does not share code with.

Two references: torchvision's roi_align on densified label maps (what ReLabel's official
code computes) and a float64 Python loop written from the ROIAlign formula below.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torchvision.ops import roi_align

from dali_relabel.ops.label_pooling import LabelPooling, label_pooling, relabel_targets

TOLERANCE = {torch.float16: 1e-5, torch.float32: 1e-5, torch.float64: 1e-9}

# Boxes that sit on the kernel's special cases: borders (sample points at exactly -0.5 and
# W - 0.5, and at the validity limits), sizes below one cell (roi forced to 1), zero and
# near-zero extent, and integer roi sizes where the adaptive sampling grid steps.
EDGE_BOXES = [
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.0, 0.0),
    (1.0, 1.0, 1.0, 1.0),
    (0.0, 1.0, 1.0, 1.0),
    (1.0, 0.0, 1.0, 1.0),
    (0.3, 0.3, 0.3, 0.3),
    (0.31, 0.52, 0.33, 0.55),
    (0.0, 0.0, 0.04, 0.05),
    (0.96, 0.95, 1.0, 1.0),
    (0.0, 0.2, 1.0, 0.2001),
    (0.4, 0.0, 0.4001, 1.0),
    (0.0, 0.0, 1.0, 0.5),
    (0.5, 0.5, 1.0, 1.0),
    (1 / 15, 2 / 15, 14 / 15, 13 / 15),
    (0.1, 0.0, 0.9, 1.0),
]


def random_maps(batch, topk, height, width, num_classes, dtype, seed=0):
    """Top-k maps with distinct classes per cell, as a teacher's top-k gives."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, topk, height, width, generator=gen).to(dtype)
    keys = torch.rand(batch, num_classes, height, width, generator=gen)
    classes = keys.topk(topk, dim=1).indices
    return scores, classes


def random_boxes(batch, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, 2, 2, generator=gen, dtype=torch.float64)
    lo, hi = corners.amin(1), corners.amax(1)
    boxes = torch.cat([lo, hi], 1)
    edges = torch.tensor(EDGE_BOXES, dtype=torch.float64)
    n = min(batch, len(edges))
    boxes[:n] = edges[:n]
    return boxes.to(dtype)


def dense_reference(scores, classes, boxes, num_classes, output_size):
    """ReLabel's official path: densify with scatter, then torchvision's roi_align."""
    batch, _, height, width = scores.shape
    dtype = torch.float32 if scores.dtype == torch.float16 else scores.dtype
    dense = torch.zeros(batch, num_classes, height, width, dtype=dtype, device=scores.device)
    dense.scatter_(1, classes.long(), scores.to(dtype))
    b = boxes.to(dtype)
    index = torch.arange(batch, dtype=dtype, device=scores.device)
    rois = torch.stack(
        [index, b[:, 0] * width - 0.5, b[:, 1] * height - 0.5, b[:, 2] * width - 0.5,
         b[:, 3] * height - 0.5],
        1,
    )  # fmt: skip
    return roi_align(dense, rois, output_size, spatial_scale=1.0, sampling_ratio=-1)


def _bilinear(y, x, height, width):
    """(row, col, weight) of the four cells ROIAlign reads for the sample point (y, x)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)]


def loop_reference(scores, classes, boxes, num_classes, out_h, out_w):
    """ROIAlign (aligned=False, adaptive sampling) on the sparse map, one sample at a time."""
    batch, topk, height, width = scores.shape
    s, c, bx = scores.double().tolist(), classes.tolist(), boxes.double().tolist()
    out = torch.zeros(batch, num_classes, out_h, out_w, dtype=torch.float64)
    for b in range(batch):
        x1, y1, x2, y2 = bx[b]
        start_x, start_y = x1 * width - 0.5, y1 * height - 0.5
        roi_w = max(x2 * width - 0.5 - start_x, 1.0)
        roi_h = max(y2 * height - 0.5 - start_y, 1.0)
        bin_w, bin_h = roi_w / out_w, roi_h / out_h
        grid_w, grid_h = math.ceil(roi_w / out_w), math.ceil(roi_h / out_h)
        for i in range(out_h):
            for j in range(out_w):
                acc = defaultdict(float)
                for iy in range(grid_h):
                    y = start_y + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        for row, col, weight in _bilinear(y, x, height, width):
                            for k in range(topk):
                                acc[c[b][k][row][col]] += weight * s[b][k][row][col]
                for cls, value in acc.items():
                    out[b, cls, i, j] = value / (grid_h * grid_w)
    return out


def _as_4d(out, output_size):
    return out[:, :, None, None] if out.dim() == 2 else out


# ---------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("grid", [(15, 15), (15, 11), (4, 7)])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (3, 3), (15, 15)])
def test_matches_roi_align_on_dense_maps(dtype, grid, output_size):
    scores, classes = random_maps(300, 3, *grid, num_classes=12, dtype=dtype)
    boxes = random_boxes(300, seed=grid[1] + output_size[1])
    out = label_pooling(scores, classes, boxes, 12, output_size)
    expected = dense_reference(scores, classes, boxes, 12, output_size)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(_as_4d(out, output_size), expected, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (4, 1)])
def test_matches_float64_loop_reference(output_size):
    scores, classes = random_maps(60, 3, 15, 11, num_classes=10, dtype=torch.float64, seed=3)
    boxes = random_boxes(60, seed=4, dtype=torch.float64)
    out = _as_4d(label_pooling(scores, classes, boxes, 10, output_size), output_size)
    expected = loop_reference(scores, classes, boxes, 10, *output_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


def test_float32_matches_loop_reference_on_edge_boxes():
    scores, classes = random_maps(len(EDGE_BOXES), 5, 15, 15, num_classes=30, dtype=torch.float32)
    boxes = torch.tensor(EDGE_BOXES)
    out = label_pooling(scores, classes, boxes, 30, (2, 2))
    expected = loop_reference(scores, classes, boxes, 30, 2, 2)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_worked_example_of_the_docs():
    # x1 = 0.2 -> 2.5 and x2 = 0.6 -> 8.5 on a 15-wide grid: six samples on the centres of
    # columns 3..8; y spans the full height: fifteen samples on the row centres.
    scores, classes = random_maps(1, 1, 15, 15, num_classes=1, dtype=torch.float64)
    box = torch.tensor([[0.2, 0.0, 0.6, 1.0]], dtype=torch.float64)
    out = label_pooling(scores, classes, box, 1)
    torch.testing.assert_close(out[0, 0], scores[0, 0, :, 3:9].mean(), rtol=0, atol=1e-12)


def test_full_box_is_mean_of_the_map():
    scores, classes = random_maps(4, 5, 15, 15, num_classes=20, dtype=torch.float64)
    out = label_pooling(scores, classes, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4), 20)
    dense = torch.zeros(4, 20, 15, 15, dtype=torch.float64).scatter_(1, classes, scores)
    torch.testing.assert_close(out, dense.mean((2, 3)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("class_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_class_dtypes(class_dtype):
    scores, classes = random_maps(20, 3, 15, 15, num_classes=100, dtype=torch.float32)
    boxes = random_boxes(20)
    out = label_pooling(scores, classes.to(class_dtype), boxes, 100)
    torch.testing.assert_close(out, label_pooling(scores, classes, boxes, 100), rtol=0, atol=0)


def test_local_output_with_int16_classes_and_many_classes():
    # class * cells would overflow int16 (5999 * 6 > 32767) if computed in the input dtype.
    scores, classes = random_maps(30, 3, 15, 15, num_classes=6000, dtype=torch.float32)
    boxes = random_boxes(30)
    out = label_pooling(scores, classes.short(), boxes, 6000, (2, 3))
    expected = dense_reference(scores, classes, boxes, 6000, (2, 3))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_output_dtype_and_shapes():
    scores, classes = random_maps(6, 2, 15, 15, num_classes=8, dtype=torch.float16)
    boxes = random_boxes(6, dtype=torch.float64)
    assert label_pooling(scores, classes, boxes, 8).shape == (6, 8)
    assert label_pooling(scores, classes, boxes, 8, (1, 1)).shape == (6, 8)
    local = label_pooling(scores, classes, boxes, 8, 2)
    assert local.shape == (6, 8, 2, 2)
    assert local.dtype == torch.float32
    assert label_pooling(scores.double(), classes, boxes.float(), 8).dtype == torch.float64


def test_empty_batch():
    scores, classes = random_maps(0, 3, 15, 15, num_classes=8, dtype=torch.float32)
    assert label_pooling(scores, classes, torch.zeros(0, 4), 8).shape == (0, 8)


def test_boxes_within_tolerance_are_clamped():
    scores, classes = random_maps(2, 3, 15, 15, num_classes=8, dtype=torch.float64)
    inside = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.0, 0.5, 1.0]], dtype=torch.float64)
    outside = inside + ((inside == 1).double() - (inside == 0).double()) * 5e-7
    out = label_pooling(scores, classes, outside, 8)
    torch.testing.assert_close(out, label_pooling(scores, classes, inside, 8), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Conventions


def _two_class_map(axis):
    """Class 0 on the first half along `axis` (left or top), class 1 on the second half."""
    classes = torch.zeros(1, 1, 14, 14, dtype=torch.long)
    if axis == "x":
        classes[..., 7:] = 1
    else:
        classes[..., 7:, :] = 1
    return torch.ones(1, 1, 14, 14), classes


@pytest.mark.parametrize("axis", ["x", "y"])
def test_orientation(axis):
    scores, classes = _two_class_map(axis)
    first, second = (0.05, 0.1, 0.4, 0.9), (0.6, 0.1, 0.95, 0.9)
    if axis == "y":  # the same boxes with x and y swapped
        first, second = (first[1], first[0], first[3], first[2]), (0.1, 0.6, 0.9, 0.95)
    boxes = torch.tensor([first, second])
    out = label_pooling(scores.expand(2, -1, -1, -1), classes.expand(2, -1, -1, -1), boxes, 2)
    assert out.argmax(1).tolist() == [0, 1]


def test_flip_leaves_global_targets_unchanged():
    scores, classes = random_maps(50, 3, 15, 15, num_classes=10, dtype=torch.float64)
    boxes = random_boxes(50, dtype=torch.float64)
    flip = torch.ones(50, dtype=torch.bool)
    torch.testing.assert_close(
        label_pooling(scores, classes, boxes, 10, flip=flip),
        label_pooling(scores, classes, boxes, 10),
        rtol=0,
        atol=1e-12,
    )


def test_flip_mirrors_local_targets():
    scores, classes = random_maps(50, 3, 15, 11, num_classes=10, dtype=torch.float64)
    boxes = random_boxes(50, dtype=torch.float64)
    flip = torch.arange(50) % 2 == 1
    out = label_pooling(scores, classes, boxes, 10, (2, 3), flip=flip)
    plain = label_pooling(scores, classes, boxes, 10, (2, 3))
    torch.testing.assert_close(out[~flip], plain[~flip], rtol=0, atol=0)
    torch.testing.assert_close(out[flip], plain[flip].flip(-1), rtol=0, atol=0)
    # The left column of the flipped target sits on the right of the box.
    scores, classes = _two_class_map("x")
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    mirrored = label_pooling(scores, classes, box, 2, (1, 2), flip=torch.tensor([True]))
    assert mirrored[0].argmax(0).flatten().tolist() == [1, 0]


# ---------------------------------------------------------------------------------------
# Targets and module


def test_relabel_targets_is_softmax_of_pooled_scores():
    scores, classes = random_maps(40, 5, 15, 15, num_classes=50, dtype=torch.float32)
    boxes = random_boxes(40)
    dense = dense_reference(scores, classes, boxes, 50, (1, 1)).flatten(1)
    for temperature in (1.0, 2.0):
        targets = relabel_targets(scores, classes, boxes, 50, temperature=temperature)
        expected = torch.softmax(dense / temperature, 1)
        torch.testing.assert_close(targets, expected, rtol=0, atol=1e-6)
    local = relabel_targets(scores, classes, boxes, 50, (2, 2))
    torch.testing.assert_close(local.sum(1), torch.ones(40, 2, 2))


def test_module():
    scores, classes = random_maps(8, 3, 15, 15, num_classes=10, dtype=torch.float32)
    boxes, flip = random_boxes(8), torch.arange(8) % 3 == 0
    pool = LabelPooling(10, (2, 3))
    assert repr(pool) == (
        "LabelPooling(num_classes=10, output_size=(2, 3), softmax=False, temperature=1.0, "
        "validate=True)"
    )
    expected = label_pooling(scores, classes, boxes, 10, (2, 3), flip)
    torch.testing.assert_close(pool(scores, classes, boxes, flip), expected, rtol=0, atol=0)
    targets = LabelPooling(10, softmax=True, temperature=0.5)(scores, classes, boxes)
    expected = relabel_targets(scores, classes, boxes, 10, temperature=0.5)
    torch.testing.assert_close(targets, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only applies with softmax=True"):
        LabelPooling(10, temperature=2.0)


# ---------------------------------------------------------------------------------------
# Registration


def _op_samples():
    """(global, float32, no grad), (global, float64, grad), (local with flips, grad)."""
    scores, classes = random_maps(3, 2, 15, 11, num_classes=7, dtype=torch.float64)
    boxes, flip = random_boxes(3, dtype=torch.float64), torch.tensor([True, False, True])
    return [
        (scores.float(), classes.int(), boxes.float(), 7, 1, 1, None),
        (scores.clone().requires_grad_(), classes, boxes, 7, 1, 1, None),
        (scores.clone().requires_grad_(), classes.short(), boxes, 7, 2, 3, flip),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(sample):
    torch.library.opcheck(torch.ops.dali_relabel.label_pooling.default, _op_samples()[sample])


def test_gradient_matches_roi_align():
    scores, classes = random_maps(20, 3, 15, 11, num_classes=9, dtype=torch.float64)
    boxes = random_boxes(20, dtype=torch.float64)
    flip = torch.arange(20) % 2 == 0
    weights = torch.randn(20, 9, 2, 3, dtype=torch.float64)
    ours = scores.clone().requires_grad_()
    (label_pooling(ours, classes, boxes, 9, (2, 3), flip) * weights).sum().backward()
    theirs = scores.clone().requires_grad_()
    pooled = dense_reference(theirs, classes, boxes, 9, (2, 3))
    (torch.where(flip[:, None, None, None], pooled.flip(-1), pooled) * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def test_torch_compile_fullgraph():
    scores, classes = random_maps(16, 3, 15, 15, num_classes=10, dtype=torch.float32)
    boxes = random_boxes(16)

    def targets(scores, classes, boxes):
        return relabel_targets(scores, classes, boxes, 10, temperature=2.0)

    compiled = torch.compile(targets, fullgraph=True, backend="aot_eager")
    expected = targets(scores, classes, boxes)
    torch.testing.assert_close(compiled(scores, classes, boxes), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_inductor():
    scores, classes = random_maps(16, 3, 15, 15, num_classes=10, dtype=torch.float32)
    boxes = random_boxes(16)
    compiled = torch.compile(LabelPooling(10, (2, 2), softmax=True), fullgraph=True)
    expected = relabel_targets(scores, classes, boxes, 10, (2, 2))
    torch.testing.assert_close(compiled(scores, classes, boxes), expected, rtol=0, atol=1e-6)


# The CUDA kernel is Triton; its CPU interpreter runs the same program on CPU tensors, so
# its arithmetic is checked here even without a GPU. The interpreter reads TRITON_INTERPRET
# when a kernel is defined, hence the subprocess.
TRITON_CASES = [
    # dtype, class dtype, grid, output_size, with flips
    (torch.float32, torch.int64, (15, 11), (2, 3), True),
    (torch.float64, torch.int32, (15, 15), (1, 1), False),
    (torch.float16, torch.uint8, (11, 15), (3, 2), False),
]

TRITON_SCRIPT = """
import sys, torch
from dali_relabel.ops._label_pooling_triton import label_pooling_triton
cases, path = torch.load(sys.argv[1]), sys.argv[2]
torch.save([label_pooling_triton(*case) for case in cases], path)
"""


def test_triton_kernel_under_interpreter(tmp_path):
    pytest.importorskip("triton")
    cases, expected = [], []
    for dtype, class_dtype, grid, output_size, flips in TRITON_CASES:
        scores, classes = random_maps(30, 3, *grid, num_classes=12, dtype=dtype)
        boxes = random_boxes(30, seed=7)
        flip = torch.arange(30) % 3 == 0 if flips else None
        cases.append((scores, classes.to(class_dtype), boxes, 12, *output_size, flip))
        pooled = dense_reference(scores, classes, boxes, 12, output_size)
        expected.append(
            pooled
            if flip is None
            else torch.where(flip[:, None, None, None], pooled.flip(-1), pooled)
        )
    torch.save(cases, tmp_path / "cases.pt")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, tmp_path / "cases.pt", tmp_path / "out.pt"],
        env=env,
        check=True,
        timeout=300,
    )
    for (dtype, *_), out, ref in zip(
        TRITON_CASES, torch.load(tmp_path / "out.pt"), expected, strict=True
    ):
        assert out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize(
    ("score", "cls", "compute", "flips", "output_size"),
    [("fp16", "i16", "fp32", False, (1, 1)), ("fp64", "i32", "fp64", True, (2, 3))],
)
def test_triton_kernel_compiles_for_sm90(score, cls, compute, flips, output_size):
    # Compile-only (Triton's LLVM and ptxas, no driver): catches what the interpreter
    # accepts but the GPU compiler rejects.
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dali_relabel.ops._label_pooling_triton import _label_pooling_kernel

    height, width = 15, 11
    pointers = {
        "scores_ptr": f"*{score}",
        "classes_ptr": f"*{cls}",
        "boxes_ptr": f"*{compute}",
        "flip_ptr": "*u8" if flips else f"*{compute}",
        "out_ptr": f"*{compute}",
    }
    constants = {
        "NUM_CLASSES": 1000,
        "K": 5,
        "H": height,
        "W": width,
        "OUT_H": output_size[0],
        "OUT_W": output_size[1],
        "HAS_FLIP": flips,
        "BLOCK_H": 16,
        "BLOCK_W": 16,
        "GRID_H": -(-height // output_size[0]),
        "GRID_W": -(-width // output_size[1]),
    }
    signature = {**pointers, **dict.fromkeys(constants, "constexpr")}
    source = ASTSource(fn=_label_pooling_kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"]


# ---------------------------------------------------------------------------------------
# Bad input: every message names the argument and the value received.


def _bad_input_cases():
    s, c = random_maps(2, 3, 15, 15, num_classes=10, dtype=torch.float32)
    b = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8]])
    ok = {"scores": s, "classes": c, "boxes": b, "num_classes": 10}

    def box(row):
        return torch.tensor([[0.1, 0.1, 0.5, 0.5], row])

    return [
        ({"scores": s[0]}, ValueError, r"scores must have shape \[B, K, H, W\].*\(3, 15, 15\)"),
        ({"scores": s.int()}, TypeError, r"scores must be float.*torch.int32"),
        ({"scores": s.tolist()}, TypeError, r"scores must be a torch.Tensor, got list"),
        ({"classes": c[:, :2]}, ValueError, r"classes must have the shape.*\(2, 2, 15, 15\)"),
        ({"classes": c.float()}, TypeError, r"classes must hold integer.*torch.float32"),
        ({"boxes": b.long()}, TypeError, r"boxes must be a floating point.*torch.int64"),
        ({"boxes": b[:1]}, ValueError, r"boxes must have shape \[B, 4\] = \[2, 4\].*\(1, 4\)"),
        ({"boxes": b[:, :3]}, ValueError, r"boxes must have shape.*\(2, 3\)"),
        ({"boxes": box([0.6, 0.1, 0.5, 0.5])}, ValueError, r"x2 >= x1, got boxes\[1\]"),
        ({"boxes": box([0.1, 0.6, 0.5, 0.5])}, ValueError, r"y2 >= y1, got boxes\[1\]"),
        (
            {"boxes": box([-0.01, 0.1, 0.5, 0.5])},
            ValueError,
            r"\[0, 1\].*boxes\[1\] = \(-0.01, 0.1, 0.5, 0.5\)",
        ),
        ({"boxes": box([0.1, 0.1, 0.5, 1.01])}, ValueError, r"\[0, 1\].*boxes\[1\]"),
        ({"boxes": box([0.1, 0.1, 0.5, 1 + 3e-6])}, ValueError, r"tolerance 1e-06"),
        ({"boxes": box([0.1, float("nan"), 0.5, 0.5])}, ValueError, r"boxes\[1\] = .*nan"),
        ({"boxes": b * 224}, ValueError, r"divide pixel boxes by the image"),
        ({"classes": c - 1}, ValueError, r"classes must be >= 0, got a class id of -1"),
        ({"scores": _poison(s, float("nan"))}, ValueError, r"1 NaN or inf values .*scores\[1\]"),
        ({"scores": _poison(s, float("inf"))}, ValueError, r"NaN or inf values .*verify"),
        ({"scores": _poison(s.half(), -float("inf"))}, ValueError, r"NaN or inf values"),
        ({"num_classes": 5}, ValueError, r"ids up to 9 but num_classes=5; .*>= 10"),
        ({"num_classes": 0}, ValueError, r"num_classes must be a positive int, got 0"),
        ({"num_classes": 10.0}, ValueError, r"num_classes must be a positive int, got 10.0"),
        ({"num_classes": True}, ValueError, r"num_classes must be a positive int, got True"),
        ({"output_size": 0}, ValueError, r"output_size must be .*got 0"),
        ({"output_size": (2,)}, ValueError, r"output_size must be .*got \(2,\)"),
        ({"output_size": (1, 0)}, ValueError, r"output_size .*got \(1, 0\)"),
        ({"output_size": 1.5}, ValueError, r"output_size .*got 1.5"),
        ({"flip": torch.ones(2)}, ValueError, r"flip must be .*\[2\], got torch.float32"),
        ({"flip": torch.ones(3, dtype=torch.bool)}, ValueError, r"flip must be.*\(3,\)"),
        ({"boxes": b.to("meta")}, ValueError, r"one device, got .*boxes on meta"),
    ], ok


def _poison(scores, value):
    out = scores.clone()
    out[1, 0, 4, 2] = value
    return out


BAD_CASES, GOOD_ARGS = _bad_input_cases()


def test_validate_false_skips_the_finite_check():
    # the check costs one reduction; validate=False (a verified store) leaves it out
    out = label_pooling(
        **{**GOOD_ARGS, "scores": _poison(GOOD_ARGS["scores"], float("nan"))}, validate=False
    )
    assert out[1].isnan().any() and not out[0].isnan().any()


@pytest.mark.parametrize(("change", "error", "message"), BAD_CASES)
def test_bad_input(change, error, message):
    with pytest.raises(error, match=message):
        label_pooling(**{**GOOD_ARGS, **change})


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), float("nan"), "2"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match=f"temperature must be .*got {temperature!r}"):
        relabel_targets(**GOOD_ARGS, temperature=temperature)


def test_fake_kernel_names_bad_shapes():
    s, c = random_maps(2, 3, 15, 15, num_classes=10, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, 4\] = \[2, 4\]"):
        torch.ops.dali_relabel.label_pooling(
            s.to("meta"), c.to("meta"), torch.zeros(3, 4, device="meta"), 10, 1, 1, None
        )


# ---------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3)])
def test_cuda_matches_roi_align(dtype, output_size):
    scores, classes = random_maps(500, 5, 15, 11, num_classes=100, dtype=dtype)
    boxes = random_boxes(500)
    scores, classes, boxes = scores.cuda(), classes.cuda(), boxes.cuda()
    out = _as_4d(label_pooling(scores, classes, boxes, 100, output_size), output_size)
    expected = dense_reference(scores, classes, boxes, 100, output_size)
    assert out.device == scores.device
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_local_flips_and_gradient(deterministic):
    scores, classes = random_maps(300, 5, 15, 15, num_classes=50, dtype=torch.float32)
    boxes, flip = random_boxes(300), torch.arange(300) % 2 == 0
    cpu = label_pooling(scores, classes, boxes, 50, (2, 3), flip)
    scores = scores.cuda().requires_grad_()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = label_pooling(scores, classes.cuda(), boxes.cuda(), 50, (2, 3), flip.cuda())
        out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=1e-5)
    assert scores.grad is not None and scores.grad.shape == scores.shape


@pytest.mark.gpu
def test_cuda_opcheck():
    for args in _op_samples():
        cuda = tuple(a.detach().cuda() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.dali_relabel.label_pooling.default, cuda)


@pytest.mark.gpu
def test_cuda_has_no_dense_tensor_and_no_sync():
    batch, num_classes = 256, 1000
    scores, classes = random_maps(batch, 5, 15, 15, num_classes=num_classes, dtype=torch.float16)
    args = (scores.cuda(), classes.short().cuda(), random_boxes(batch).cuda(), num_classes)
    label_pooling(*args, validate=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.cuda.set_sync_debug_mode("error")
    try:
        label_pooling(*args, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    dense_bytes = batch * num_classes * 15 * 15 * 4
    assert torch.cuda.max_memory_allocated() - before < dense_bytes / 10
