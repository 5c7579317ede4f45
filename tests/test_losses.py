"""Soft-target cross-entropy: timm's value, a float64 loop per cell, and the errors."""

from __future__ import annotations

import math

import pytest
import torch

from dali_relabel import (
    LocalSoftTargetCrossEntropy,
    SoftTargetCrossEntropy,
    soft_target_cross_entropy,
)


def _distributions(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape, generator=generator), dim=1)


def _loop_reference(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over samples and cells of -sum_c t_c log softmax(x)_c, one cell at a time."""
    x, t = logits.double(), target.double()
    if x.dim() == 2:
        x, t = x[:, :, None, None], t[:, :, None, None]
    total, count = 0.0, 0
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                z = x[b, :, i, j].tolist()
                top = max(z)
                log_norm = top + math.log(sum(math.exp(v - top) for v in z))
                probs = t[b, :, i, j].tolist()
                total += sum(-p * (v - log_norm) for p, v in zip(probs, z, strict=True))
                count += 1
    return total / count


def test_global_loss_is_timms_and_the_loop_reference():
    timm_loss = pytest.importorskip("timm.loss").SoftTargetCrossEntropy()
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(16, 10, generator=g)
    target = _distributions(16, 10, generator=g)
    ours = SoftTargetCrossEntropy()(logits, target)
    assert torch.allclose(ours, timm_loss(logits, target), rtol=0, atol=1e-6)
    assert ours.item() == pytest.approx(_loop_reference(logits, target), abs=1e-5)
    # torch's CrossEntropyLoss with probabilities is the same quantity
    assert torch.allclose(ours, torch.nn.CrossEntropyLoss()(logits, target), atol=1e-6)


def test_local_loss_is_the_mean_over_cells():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(3, 7, 4, 5, generator=g, dtype=torch.float64)
    target = _distributions(3, 7, 4, 5, generator=g).double()
    loss = LocalSoftTargetCrossEntropy()(logits, target)
    assert loss.item() == pytest.approx(_loop_reference(logits, target), abs=1e-10)
    assert soft_target_cross_entropy(logits, target).item() == pytest.approx(loss.item())
    # a one-hot target on every cell is the hard cross-entropy of that cell
    hard = torch.randint(0, 7, (3, 4, 5), generator=g)
    one_hot = torch.nn.functional.one_hot(hard, 7).permute(0, 3, 1, 2).double()
    expected = torch.nn.functional.cross_entropy(logits, hard)
    assert torch.allclose(soft_target_cross_entropy(logits, one_hot), expected)


def test_gradient_is_softmax_minus_target():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = _distributions(5, 6, generator=g).double()
    soft_target_cross_entropy(logits, target).backward()
    expected = (torch.softmax(logits.detach(), 1) - target) / 5
    assert torch.allclose(logits.grad, expected, atol=1e-12)


def test_errors_name_the_shapes_and_the_fix():
    logits = torch.randn(2, 10, 7, 7)
    with pytest.raises(ValueError, match=r"pass local_size=\(7, 7\)"):
        LocalSoftTargetCrossEntropy()(logits, torch.full((2, 10, 5, 5), 0.1))
    with pytest.raises(TypeError, match=r"class probabilities.*torch\.nn\.CrossEntropyLoss"):
        SoftTargetCrossEntropy()(torch.randn(2, 10), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"input must be \[B, C\] logits"):
        SoftTargetCrossEntropy()(logits, torch.full_like(logits, 0.1))
    with pytest.raises(ValueError, match="per-cell"):
        LocalSoftTargetCrossEntropy()(torch.randn(2, 10), torch.full((2, 10), 0.1))
