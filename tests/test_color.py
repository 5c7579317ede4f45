"""Colour augmentation in the DALI graph: each operation's formula and the distribution of
its random factors, measured on real photos against the same crops without colour (the
crops do not depend on it), and the whole recipe against torchvision's ColorJitter and
the official Lighting applied to those crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dali_relabel import ReLabelLoader
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.loader._color import EIGVAL, EIGVEC, GRAY

CROP = 48
EPOCHS = 3
# Kolmogorov-Smirnov critical value at a significance of 0.001: sqrt(-log(0.0005) / 2)
KS_001 = 1.95
_MEAN = np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)
_STD = np.array(IMAGENET_STD).reshape(1, 3, 1, 1)


def _batches(sample_data, sample_store, device="cpu", **color) -> np.ndarray:
    """Every image of EPOCHS epochs, float64 [N, 3, S, S] on the 0-255 scale (unclipped)."""
    loader = ReLabelLoader(sample_data.train, sample_store, 20, crop_size=CROP, num_threads=2,
                           seed=5, device=device, **color)  # fmt: skip
    out = [x.double().cpu().numpy() for _ in range(EPOCHS) for x, _ in loader]
    return (np.concatenate(out) * _STD + _MEAN) * 255


@pytest.fixture(scope="module")
def plain(sample_data, sample_store) -> np.ndarray:
    return np.rint(_batches(sample_data, sample_store))  # integers: uint8 pixels


def _gray(x: np.ndarray) -> np.ndarray:
    return np.tensordot(np.array(GRAY), x, axes=([0], [1]))[:, None]  # [N, 1, S, S]


def _fit(out: np.ndarray, x: np.ndarray, centre: np.ndarray, clipped: bool) -> np.ndarray:
    """Per image, the factor f of ``out = f * (x - centre) + centre`` by least squares over
    the pixels that did not clip (all of them where the operation does not clip)."""
    keep = (out > 0.5) & (out < 254.5) if clipped else np.ones(out.shape, bool)
    dx, dy = (x - centre) * keep, (out - centre) * keep
    return (dx * dy).sum((1, 2, 3)) / (dx * dx).sum((1, 2, 3))


def _ks_uniform(values: np.ndarray, low: float, high: float) -> float:
    v = np.sort(values)
    cdf = np.clip((v - low) / (high - low), 0, 1)
    n = len(v)
    return max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max())


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_each_jitter_is_torchvisions_formula_with_uniform_factors(
    sample_data, sample_store, plain, op
):
    jitter = {"brightness": (0.4, 0, 0), "contrast": (0, 0.4, 0), "saturation": (0, 0, 0.4)}
    out = _batches(sample_data, sample_store, color_jitter=jitter[op])
    if op == "brightness":  # scaled
        centre = np.zeros_like(plain)
    elif op == "contrast":  # blended with the mean of the grayscale image
        centre = np.broadcast_to(_gray(plain).mean((2, 3), keepdims=True), plain.shape)
    else:  # blended with the grayscale image
        centre = np.broadcast_to(_gray(plain), plain.shape)
    factors = _fit(out, plain, centre, clipped=op != "saturation")
    expected = factors[:, None, None, None] * (plain - centre) + centre
    if op == "saturation":  # in float, not clipped (see dali_relabel.loader._color)
        assert np.abs(out - expected).max() < 0.5, np.abs(out - expected).max()
    else:  # rounded and clipped once: within one level nearly everywhere
        expected = np.clip(np.rint(expected), 0, 255)
        assert np.mean(np.abs(out - expected) <= 1.01) > 0.999
    assert factors.min() >= 0.6 - 1e-3 and factors.max() <= 1.4 + 1e-3
    assert factors.min() < 0.65 and factors.max() > 1.35  # the whole range is drawn
    assert _ks_uniform(factors, 0.6, 1.4) < KS_001 / np.sqrt(len(factors)), np.sort(factors)


def test_lighting_adds_the_official_pca_offset_with_alpha_std_0_1(sample_data, sample_store, plain):
    out = _batches(sample_data, sample_store, lighting=0.1)
    offset = (out - plain) / 255  # the 0-1 scale of the official Lighting
    per_image = offset.mean((2, 3))
    assert np.abs(offset - per_image[:, :, None, None]).max() < 1e-3  # the same on every pixel
    alpha = np.linalg.solve(np.array(EIGVEC), per_image.T).T / np.array(EIGVAL)
    assert abs(alpha.std() - 0.1) < 0.015 and abs(alpha.mean()) < 0.02
    normal = np.sort(alpha.ravel() / 0.1)
    from math import erf, sqrt

    cdf = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in normal])
    n = len(normal)
    assert np.abs(np.arange(1, n + 1) / n - cdf).max() < KS_001 / np.sqrt(n)


def _official(images: np.ndarray, seed: int) -> np.ndarray:
    """torchvision's ColorJitter(0.4, 0.4, 0.4) on PIL images, then the official Lighting
    (utils/utils.py of naver-ai/relabel_imagenet, written from its formula), 0-255."""
    torch.manual_seed(seed)
    jitter = transforms.ColorJitter(0.4, 0.4, 0.4)
    out = []
    for img in images.astype(np.uint8).transpose(0, 2, 3, 1):
        x = np.asarray(jitter(Image.fromarray(img)), dtype=np.float64).transpose(2, 0, 1) / 255
        alpha = torch.randn(3).numpy() * 0.1
        x += (np.array(EIGVEC) @ (alpha * np.array(EIGVAL)))[:, None, None]
        out.append(x * 255)
    return np.stack(out)


def test_the_recipe_matches_torchvision_and_the_official_lighting_in_distribution(
    sample_data, sample_store, plain
):
    ours = _batches(sample_data, sample_store, color_jitter=0.4, lighting=0.1)
    reference = _official(plain, seed=0)
    n = len(plain)
    critical = KS_001 * np.sqrt(2 / n)

    def stats(images):  # per image: brightness, contrast and saturation relative to plain
        mean = images.mean((1, 2, 3)) / plain.mean((1, 2, 3))
        spread = images.std((1, 2, 3)) / plain.std((1, 2, 3))
        sat = np.abs(images - _gray(images)).mean((1, 2, 3)) / np.abs(plain - _gray(plain)).mean(
            (1, 2, 3)
        )
        return {"brightness": mean, "contrast": spread, "saturation": sat}

    for name, (a, b) in zip(
        ("brightness", "contrast", "saturation"),
        zip(stats(ours).values(), stats(reference).values(), strict=True),
        strict=True,
    ):
        both = np.sort(np.concatenate([a, b]))
        ecdf_a = np.searchsorted(np.sort(a), both, side="right") / len(a)
        ecdf_b = np.searchsorted(np.sort(b), both, side="right") / len(b)
        assert np.abs(ecdf_a - ecdf_b).max() < critical, name


def test_colour_is_a_training_option_and_checked(sample_data, sample_store):
    with pytest.raises(ValueError, match="evaluation loader"):
        ReLabelLoader(sample_data.train, sample_store, 8, train=False, color_jitter=0.4)
    with pytest.raises(ValueError, match="hue jitter is not offered"):
        ReLabelLoader(sample_data.train, sample_store, 8, color_jitter=(0.4, 0.4, 0.4, 0.1))
    with pytest.raises(ValueError, match="lighting must be"):
        ReLabelLoader(sample_data.train, sample_store, 8, lighting=-0.1)
    # off by default; timm's 4-tuple with hue 0 is accepted
    loader = ReLabelLoader(sample_data.train, sample_store, 8, color_jitter=(0.4, 0.4, 0.4, 0))
    assert loader is not None
    assert torch.is_tensor(next(iter(loader))[0])


@pytest.mark.gpu
def test_colour_on_the_gpu_is_the_same_computation(sample_data, sample_store):
    """On "mixed" (the image's mean gray goes back to the CPU as the contrast's argument):
    the contrast formula and the lighting offsets as on the CPU, against the same crops
    decoded on the GPU without colour."""
    plain = np.rint(_batches(sample_data, sample_store, "cuda"))
    out = _batches(sample_data, sample_store, "cuda", color_jitter=(0, 0.4, 0))
    centre = np.broadcast_to(_gray(plain).mean((2, 3), keepdims=True), plain.shape)
    factors = _fit(out, plain, centre, clipped=True)
    expected = np.clip(np.rint(factors[:, None, None, None] * (plain - centre) + centre), 0, 255)
    assert np.mean(np.abs(out - expected) <= 1.01) > 0.999
    assert factors.min() >= 0.6 - 1e-3 and factors.max() <= 1.4 + 1e-3
    lit = _batches(sample_data, sample_store, "cuda", lighting=0.1)
    per_image = ((lit - plain) / 255).mean((2, 3))
    alpha = np.linalg.solve(np.array(EIGVEC), per_image.T).T / np.array(EIGVAL)
    assert abs(alpha.std() - 0.1) < 0.015
