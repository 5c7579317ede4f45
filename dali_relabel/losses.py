"""Cross-entropy against soft targets, global ([B, C]) and per cell ([B, C, h, w]).

ReLabel (Yun et al., CVPR 2021) trains on class distributions instead of class indices:
the loss is the cross-entropy ``-sum_c t_c log softmax(x)_c``, averaged over the batch.
:class:`SoftTargetCrossEntropy` is that loss with timm's name and numbers
(``timm.loss.SoftTargetCrossEntropy`` and the official ReLabel ``utils/loss.py`` compute
the same ``sum(-t * log_softmax(x, -1), -1).mean()``), so that a training script needs
no timm. :class:`LocalSoftTargetCrossEntropy` is the same loss per cell of a grid, for
the loader's ``targets="local"``: the model's classifier applied to every cell of its
last feature map gives logits ``[B, C, h, w]``, each cell trained on the label map pooled
over that cell (the paper's localized labels).

``torch.nn.CrossEntropyLoss`` accepts probability targets [B, C] too and gives the same
value; the classes here add the shape checks that name what went wrong and the per-cell
form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dali_relabel.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "LocalSoftTargetCrossEntropy",
    "SoftTargetCrossEntropy",
    "soft_target_cross_entropy",
]


def _check(input: Tensor, target: Tensor, dims: tuple[int, ...], what: str) -> None:
    for name, value in (("input", input), ("target", target)):
        if not isinstance(value, Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if input.dim() not in dims:
        raise ArgumentError(f"input must be {what} logits, got shape {tuple(input.shape)}")
    if not target.is_floating_point():
        raise ArgumentTypeError(
            f"target must be class probabilities (a float tensor of input's shape "
            f"{tuple(input.shape)}), got {target.dtype} {tuple(target.shape)}; for class "
            "indices use torch.nn.CrossEntropyLoss"
        )
    if target.shape != input.shape:
        hint = ""
        if input.dim() == 4 and target.dim() == 4 and target.shape[:2] == input.shape[:2]:
            hint = (
                f"; the loader's local_size must be the model's output grid: pass "
                f"local_size={tuple(input.shape[2:])}"
            )
        raise ArgumentError(
            f"target must have input's shape {tuple(input.shape)}, got {tuple(target.shape)}{hint}"
        )


def soft_target_cross_entropy(input: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of logits against class distributions, averaged over samples and cells.

    ``mean(sum_c -target[:, c] * log_softmax(input, dim=1)[:, c])``: for [B, C] this is
    timm's ``SoftTargetCrossEntropy``; for [B, C, h, w] the mean runs over the batch and
    the h * w cells.

    Args:
        input (Tensor[B, C] or Tensor[B, C, h, w]): logits, classes on dim 1.
        target (Tensor of input's shape): probabilities over dim 1 (rows summing to 1, as
            the loader's soft and local targets); float, any float dtype.

    Returns:
        A scalar tensor, in input's dtype.
    """
    _check(input, target, (2, 4), "[B, C] or [B, C, h, w]")
    loss = torch.sum(-target * torch.log_softmax(input, dim=1), dim=1)
    return loss.mean()


class SoftTargetCrossEntropy(nn.Module):
    """Module form of :func:`soft_target_cross_entropy` for [B, C] targets (timm's name and
    value; ``targets="soft"`` or a mixed batch of the loader)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Args and returns: see :func:`soft_target_cross_entropy`; input is [B, C]."""
        _check(input, target, (2,), "[B, C]")
        return soft_target_cross_entropy(input, target)


class LocalSoftTargetCrossEntropy(nn.Module):
    """Per-cell :func:`soft_target_cross_entropy` for the loader's ``targets="local"``.

    ``input`` is the classifier applied to every cell of the model's last feature map,
    ``[B, C, h, w]``; ``target`` the loader's local targets of the same grid (its
    ``local_size`` must be ``(h, w)``). The loss is the mean over batch and cells.
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Args and returns: see :func:`soft_target_cross_entropy`; input is [B, C, h, w]."""
        _check(input, target, (4,), "[B, C, h, w] (per-cell)")
        return soft_target_cross_entropy(input, target)
