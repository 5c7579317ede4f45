"""LabelPooling: soft training targets from a crop box and a sparse top-k label map.

ReLabel (Yun et al., "Re-labeling ImageNet: from Single to Multi-Labels, from Global to
Localized Labels", CVPR 2021) trains on the label map of the image pooled over the random
crop box with ROIAlign, then turned into a distribution with a softmax. The official code
first densifies the top-k map into a [B, 1000, 15, 15] tensor, which costs most of the time
and memory. ROIAlign is linear in its input, so this op computes, per box, the bilinear
sampling weight of every grid cell once (the weights do not depend on the class), multiplies
them by the k stored scores and adds the products into the classes they belong to. The
result equals ``torchvision.ops.roi_align`` on the densified map (``aligned=False``, adaptive
``sampling_ratio``) without ever building it.

The op is registered as ``torch.ops.dali_relabel.label_pooling`` (a ``torch.library`` custom
op with a fake kernel and an autograd formula for ``scores``), so it runs under
``torch.compile(fullgraph=True)``. Kernels: vectorized PyTorch (``_label_pooling_torch``),
free of host syncs and of Python loops over the batch, for CPU and any other device; on
CUDA a single-launch Triton kernel (``_label_pooling_triton``), or the PyTorch one where
Triton is missing or deterministic algorithms are requested.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError, ArgumentTypeError
from dali_relabel.ops._label_pooling_torch import (
    compute_dtype,
    label_pooling_torch,
    label_pooling_torch_grad,
)

__all__ = ["LabelPooling", "label_pooling", "relabel_targets"]

#: How far outside [0, 1] a box coordinate may lie (float rounding of crop parameters).
BOX_TOLERANCE = 1e-6

_SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CLASS_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------------------------------
# Checks. The static ones (types, shapes, devices) also run in the fake kernel, so that a
# compiled graph fails with the same message; the value ones need to read the data.


def _pair(output_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ArgumentError(
            f"output_size must be a positive int or a pair (h, w) of positive ints, "
            f"got {output_size!r}"
        )
    return int(size[0]), int(size[1])


def _check_tensors(scores: Tensor, classes: Tensor, boxes: Tensor, flip: Tensor | None) -> None:
    for name, value in (("scores", scores), ("classes", classes), ("boxes", boxes)):
        if not isinstance(value, Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if scores.dtype not in _SCORE_DTYPES:
        raise ArgumentTypeError(
            f"scores must be float16, bfloat16, float32 or float64, got {scores.dtype}"
        )
    if classes.dtype not in _CLASS_DTYPES:
        raise ArgumentTypeError(
            f"classes must hold integer class ids (uint8, int8, int16, int32 or int64), "
            f"got {classes.dtype}"
        )
    if not boxes.is_floating_point():
        raise ArgumentTypeError(f"boxes must be a floating point tensor, got {boxes.dtype}")
    if scores.dim() != 4 or min(scores.shape[2:], default=0) < 1:
        raise ArgumentError(
            f"scores must have shape [B, K, H, W] with H, W >= 1, got {tuple(scores.shape)}"
        )
    if classes.shape != scores.shape:
        raise ArgumentError(
            f"classes must have the shape of scores {tuple(scores.shape)}, "
            f"got {tuple(classes.shape)}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != scores.shape[0]:
        raise ArgumentError(
            f"boxes must have shape [B, 4] = [{scores.shape[0]}, 4] (one normalized "
            f"x1, y1, x2, y2 box per label map), got {tuple(boxes.shape)}"
        )
    if flip is not None and (
        not isinstance(flip, Tensor) or flip.dtype != torch.bool or flip.shape != boxes.shape[:1]
    ):
        got = f"{flip.dtype} {tuple(flip.shape)}" if isinstance(flip, Tensor) else repr(flip)
        raise ArgumentError(
            f"flip must be None or a bool tensor of shape [{boxes.shape[0]}], got {got}"
        )
    devices = {"scores": scores.device, "classes": classes.device, "boxes": boxes.device}
    if flip is not None:
        devices["flip"] = flip.device
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ArgumentError(f"all inputs must be on one device, got {listed}")


def _format_box(box: Tensor) -> str:
    return "(" + ", ".join(f"{v:.7g}" for v in box.tolist()) + ")"


def _check_values(scores: Tensor, classes: Tensor, boxes: Tensor, num_classes: int) -> None:
    if boxes.numel() == 0:
        return
    # All checks reduce into one small tensor read back once: on CUDA that read is the only
    # host sync of label_pooling (validate=False skips it).
    coords = boxes.double()
    stats = [
        coords.amin(),
        coords.amax(),
        (coords[:, 2] - coords[:, 0]).amin(),
        (coords[:, 3] - coords[:, 1]).amin(),
        coords.isnan().any().double(),  # NaN passes every comparison below
    ]
    # NaN or inf scores would make every target of their row NaN
    stats.append((~torch.isfinite(scores)).sum().double())
    if classes.numel():
        stats += [x.double() for x in torch.aminmax(classes)]
    values = torch.stack(stats).tolist()
    box_min, box_max, min_w, min_h, has_nan, non_finite = values[:6]
    if non_finite:
        row = int((~torch.isfinite(scores)).flatten(1).any(1).nonzero()[0])
        raise ArgumentError(
            f"scores hold {int(non_finite):,} NaN or inf values (first in scores[{row}]); label "
            "maps must be finite: check the store with `dali-relabel verify`, or the teacher "
            "that made them"
        )
    if has_nan or box_min < -BOX_TOLERANCE or box_max > 1.0 + BOX_TOLERANCE:
        bad = ~((boxes >= -BOX_TOLERANCE) & (boxes <= 1.0 + BOX_TOLERANCE)).all(1)
        row = int(bad.nonzero()[0])
        raise ArgumentError(
            f"boxes must be normalized to [0, 1] (tolerance {BOX_TOLERANCE}), got boxes[{row}]"
            f" = {_format_box(boxes[row])}; divide pixel boxes by the image width and height"
        )
    for axis, smallest, lo, hi in (("x", min_w, 0, 2), ("y", min_h, 1, 3)):
        if smallest < 0:
            row = int((boxes[:, hi] < boxes[:, lo]).nonzero()[0])
            raise ArgumentError(
                f"boxes must be (x1, y1, x2, y2) with {axis}2 >= {axis}1, got boxes[{row}] = "
                f"{_format_box(boxes[row])}"
            )
    if classes.numel():
        low, high = int(values[6]), int(values[7])
        if low < 0:
            raise ArgumentError(f"classes must be >= 0, got a class id of {low}")
        if high >= num_classes:
            raise ArgumentError(
                f"classes hold ids up to {high} but num_classes={num_classes}; pass "
                f"num_classes >= {high + 1}"
            )


@functools.cache
def _triton_kernel() -> Callable[..., Tensor] | None:
    # Imported on first CUDA call: Triton takes a while to import and CPU users never need it.
    try:
        from dali_relabel.ops._label_pooling_triton import label_pooling_triton
    except ImportError:  # PyTorch's CUDA wheels ship Triton; other builds may not
        return None
    return label_pooling_triton


def _cuda_kernel() -> Callable[..., Tensor]:
    triton_kernel = _triton_kernel()
    # Atomic adds are not deterministic; the PyTorch kernel's index_add_ can be.
    if triton_kernel is None or torch.are_deterministic_algorithms_enabled():
        return label_pooling_torch
    return triton_kernel


def _eager(scores: Tensor) -> bool:
    """Whether the kernel can be called directly instead of through the custom op: plain
    tensors in eager mode that need no gradient. The op adds nothing there but its
    dispatch (about 15 us a call) and, on its first call, torch's import of
    ``torch._dynamo`` (about 2 s, on the loader's first batch); compiling, autograd and
    tensor subclasses (fake tensors) go through the op."""
    return (
        type(scores) is Tensor
        and not (scores.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
    )


# ---------------------------------------------------------------------------------------
# Registration: fully (kernel, fake kernel, autograd) or, where torch.library lacks
# custom_op, not at all, in which case label_pooling calls the kernel directly.


def _register() -> object | None:
    if not hasattr(torch.library, "custom_op"):
        return None

    @torch.library.custom_op("dali_relabel::label_pooling", mutates_args=())
    def op(
        scores: Tensor,
        classes: Tensor,
        boxes: Tensor,
        num_classes: int,
        output_height: int,
        output_width: int,
        flip: Tensor | None,
    ) -> Tensor:
        return label_pooling_torch(
            scores, classes, boxes, num_classes, output_height, output_width, flip
        )

    @op.register_kernel("cuda")
    def _(scores, classes, boxes, num_classes, output_height, output_width, flip):
        kernel = _cuda_kernel()
        return kernel(scores, classes, boxes, num_classes, output_height, output_width, flip)

    @op.register_fake
    def _(scores, classes, boxes, num_classes, output_height, output_width, flip):
        _check_tensors(scores, classes, boxes, flip)
        shape = (scores.shape[0], num_classes, output_height, output_width)
        return scores.new_empty(shape, dtype=compute_dtype(scores.dtype))

    def setup_context(ctx, inputs, output):
        scores, classes, boxes, _, _, _, flip = inputs
        ctx.save_for_backward(classes, boxes, flip)
        ctx.scores_dtype = scores.dtype

    def backward(ctx, grad):
        classes, boxes, flip = ctx.saved_tensors
        height, width = classes.shape[2:]
        grad_scores = label_pooling_torch_grad(grad, classes, boxes, flip, height, width)
        return grad_scores.to(ctx.scores_dtype), None, None, None, None, None, None

    op.register_autograd(backward, setup_context=setup_context)
    return op


_OP = _register()


# ---------------------------------------------------------------------------------------
# Public surface.


def label_pooling(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    num_classes: int,
    output_size: int | tuple[int, int] = 1,
    flip: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    """Pools sparse top-k label maps over crop boxes, as ROIAlign on the dense maps would.

    The result equals, for every box, densifying the map to Tensor[B, C, H, W] (zeros, then
    ``scores`` written at ``classes``) and calling ``torchvision.ops.roi_align(dense, rois,
    output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)`` with
    ``rois[b] = (b, x1 * W - 0.5, y1 * H - 0.5, x2 * W - 0.5, y2 * H - 0.5)``, the mapping
    of ReLabel's ``get_relabel``. The dense map is never built.

    Convention: label maps are in image orientation, row 0 at the top of the image and
    column 0 at its left; x runs along W and y along H. Grid cell (i, j) covers the image
    rectangle [j / W, (j + 1) / W] x [i / H, (i + 1) / H], so its centre sits at grid
    coordinate (i, j) after the ``- 0.5``. Example: on a 15-wide grid, x1 = 0.2 becomes
    0.2 * 15 - 0.5 = 2.5, halfway between the centres of columns 2 and 3; the full box
    (0, 0, 1, 1) becomes [-0.5, 14.5] and its 1x1 output is the mean of all 225 cells.

    Note:
        The official ReLabel code passes its crop coordinates in (top, left, bottom,
        right) order where ROIAlign expects (x1, y1, x2, y2), and scales both axes by the
        map width. Its label maps therefore pair with transposed boxes; they are
        transposed once when imported into a store, and this op uses the convention above.

    Args:
        scores (Tensor[B, K, H, W]): top-k label-map scores (float16, bfloat16, float32 or
            float64). Classes outside the top k count as score 0.
        classes (Tensor[B, K, H, W]): class id of each score, an integer tensor (uint8,
            int8, int16, int32 or int64) with values in [0, num_classes), distinct within
            a cell as a top-k is (a repeated id adds up, where densifying keeps one).
        boxes (Tensor[B, 4]): one crop per label map, (x1, y1, x2, y2) normalized to
            [0, 1] by the original image's width and height, x1 <= x2 and y1 <= y2.
            Coordinates up to 1e-6 outside [0, 1] are accepted and clamped.
        num_classes (int): number of classes C of the output.
        output_size (int or Tuple[int, int]): (h, w) cells of the pooled output; 1 gives
            one global target per box, more gives local targets. Default: 1.
        flip (Tensor[B] of bool, optional): True where the crop was mirrored horizontally
            after cropping; the output cells of that row are mirrored along w so that
            they match the mirrored image. Global (1x1) outputs do not change.
            Default: None (no flips).
        validate (bool): check box ranges, class ids and that scores are finite. On CUDA this
            costs one host sync; pass False in a training loop once the store is verified.
            Under ``torch.compile`` these data checks are skipped (shape, type and device
            checks still run). Default: True.

    Returns:
        Tensor[B, C] when ``output_size`` is 1 or (1, 1), else Tensor[B, C, h, w]. float32
        for float16 or bfloat16 scores (computed in float32), else the dtype of ``scores``,
        on the device of the inputs.
    """
    out_h, out_w = _pair(output_size)
    num_classes = _checks.positive_int("num_classes", num_classes)
    _check_tensors(scores, classes, boxes, flip)
    if validate and not torch.compiler.is_compiling():
        _check_values(scores, classes, boxes, num_classes)
    if _OP is not None and not _eager(scores):
        out = torch.ops.dali_relabel.label_pooling(
            scores, classes, boxes, num_classes, out_h, out_w, flip
        )
    else:
        kernel = _cuda_kernel() if scores.device.type == "cuda" else label_pooling_torch
        out = kernel(scores, classes, boxes, num_classes, out_h, out_w, flip)
    return out.flatten(1) if (out_h, out_w) == (1, 1) else out


def relabel_targets(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    num_classes: int,
    output_size: int | tuple[int, int] = 1,
    flip: Tensor | None = None,
    temperature: float = 1.0,
    *,
    validate: bool = True,
) -> Tensor:
    """ReLabel's training targets: softmax over classes of :func:`label_pooling` / temperature.

    Classes outside the top k take part in the softmax with score 0, as in the paper's
    ``get_relabel``.

    Args:
        scores, classes, boxes, num_classes, output_size, flip, validate: as in
            :func:`label_pooling`.
        temperature (float): divides the pooled scores before the softmax; above 1
            flattens the targets. Default: 1.0 (the paper).

    Returns:
        Class probabilities summing to 1 over dim 1: Tensor[B, C] for a 1x1 output_size,
        else Tensor[B, C, h, w]; dtype and device as in :func:`label_pooling`.
    """
    temperature = _checks.positive_number("temperature", temperature)
    pooled = label_pooling(
        scores, classes, boxes, num_classes, output_size, flip, validate=validate
    )
    return torch.softmax(pooled if temperature == 1.0 else pooled / temperature, dim=1)


class LabelPooling(nn.Module):
    """Module form of :func:`label_pooling` (and, with ``softmax=True``, of
    :func:`relabel_targets`), as ``torchvision.ops.RoIAlign`` pairs ``roi_align``.

    Args:
        num_classes (int): see :func:`label_pooling`.
        output_size (int or Tuple[int, int]): see :func:`label_pooling`. Default: 1.
        softmax (bool): return ReLabel's targets (softmax over classes) instead of the
            pooled scores. Default: False.
        temperature (float): see :func:`relabel_targets`; only with ``softmax=True``.
            Default: 1.0.
        validate (bool): see :func:`label_pooling`. Default: True.
    """

    def __init__(
        self,
        num_classes: int,
        output_size: int | tuple[int, int] = 1,
        softmax: bool = False,
        temperature: float = 1.0,
        *,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _checks.positive_int("num_classes", num_classes)
        _pair(output_size)
        _checks.positive_number("temperature", temperature)
        if not softmax and temperature != 1.0:
            raise ArgumentError(
                f"temperature={temperature} only applies with softmax=True; pass "
                f"softmax=True or leave temperature at 1.0"
            )
        self.num_classes = num_classes
        self.output_size = output_size
        self.softmax = softmax
        self.temperature = temperature
        self.validate = validate

    def forward(
        self, scores: Tensor, classes: Tensor, boxes: Tensor, flip: Tensor | None = None
    ) -> Tensor:
        """Args and returns: see :func:`label_pooling` and :func:`relabel_targets`."""
        args = (scores, classes, boxes, self.num_classes, self.output_size, flip)
        if self.softmax:
            return relabel_targets(*args, self.temperature, validate=self.validate)
        return label_pooling(*args, validate=self.validate)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_classes={self.num_classes}, "
            f"output_size={self.output_size}, softmax={self.softmax}, "
            f"temperature={self.temperature}, validate={self.validate})"
        )
