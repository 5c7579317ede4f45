"""Colour augmentation: the jitter's affine map against float64 references (the formulas
written out here, and torchvision's own ColorJitter functions where nothing clips), each
operation's formula and the distribution of its random factors measured on real photos
against the same crops without colour (the crops do not depend on it), the whole recipe
against torchvision's ColorJitter and the official Lighting applied to those crops, and
CutMix/Mixup mixing images that each carry their own colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cutmix_samples
from PIL import Image
from torchvision import transforms

from dali_relabel import ReLabelLoader
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.loader._color import EIGVAL, EIGVEC, GRAY, draw_color, jitter_

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


def _fit(out: np.ndarray, x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Per image, the factor f of ``out = f * (x - centre) + centre`` by least squares."""
    dx, dy = x - centre, out - centre
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
    factors = _fit(out, plain, centre)
    expected = factors[:, None, None, None] * (plain - centre) + centre
    # in float, neither rounded nor clipped (see dali_relabel.loader._color)
    assert np.abs(out - expected).max() < 2e-3, np.abs(out - expected).max()
    assert (out > 255.5).any() or op == "saturation"  # not clipped: brightness 1.4 passes 255
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
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


# -- the affine map, against float64 references ------------------------------------------
_MEAN64, _STD64 = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def _reference(x: np.ndarray, color: np.ndarray, order=(0, 1, 2)) -> np.ndarray:
    """torchvision's ColorJitter without clipping (brightness, contrast, saturation in
    ``order``), then the official Lighting, on 0-1 images x [B, 3, H, W], float64."""
    out = x.copy()
    for op in order:
        for i, (fb, fc, fs) in enumerate(color[:, :3].astype(np.float64)):
            gray = np.tensordot(np.array(GRAY), out[i], axes=1)  # [H, W]
            if op == 0:
                out[i] = fb * out[i]
            elif op == 1:
                out[i] = fc * out[i] + (1 - fc) * gray.mean()
            else:
                out[i] = fs * out[i] + (1 - fs) * gray
    return out + color[:, 3:6, None, None].astype(np.float64)


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x - _MEAN64[None, :, None, None]) / _STD64[None, :, None, None]


def _lit_input(x: np.ndarray, color: np.ndarray) -> np.ndarray:
    """What the graph returns: the 0-1 image lit and normalized."""
    return _normalize(x + color[:, 3:6, None, None].astype(np.float64))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("group", [None, 3, 64])  # one image at a time (CPU), batch (GPU)
def test_jitter_is_the_recipe_in_float64(layout, group):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (7, 3, 20, 24))
    color = draw_color(rng, 7, (1.0, 1.0, 1.0), 0.5)  # the widest ranges: pixels leave 0-1
    images = torch.from_numpy(_lit_input(x, color)).float()
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    out = jitter_(images, color, IMAGENET_MEAN, IMAGENET_STD, group=group)
    assert out.data_ptr() == images.data_ptr() and out.stride() == images.stride()  # in place
    for order in [(0, 1, 2), (2, 1, 0), (1, 2, 0)]:  # unclipped, the order does not matter
        expected = _normalize(_reference(x, color, order))
        assert np.abs(out.double().numpy() - expected).max() < 2e-5
    assert expected.max() > _normalize(np.ones((1, 3, 1, 1))).max()  # unclipped above 1


def test_jitter_in_float16():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (2, 3, 224, 224))  # a mean over 50,176 pixels in float16
    color = draw_color(rng, 2, (0.4, 0.4, 0.4), 0.1)
    out = jitter_(torch.from_numpy(_lit_input(x, color)).half(), color, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float16
    expected = _normalize(_reference(x, color))
    assert np.abs(out.double().numpy() - expected).max() < 2e-2  # float16 steps near 2.6


def test_jitter_is_torchvisions_colorjitter_where_nothing_clips():
    """torchvision's own adjust_brightness/contrast/saturation (they clamp to 0-1 after
    each, and weigh red 0.2989 in the gray), on images that no permutation pushes out of
    0-1: the same result, whatever the order."""
    from itertools import permutations

    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(5)
    x = rng.uniform(0.3, 0.5, (6, 3, 16, 16))
    color = draw_color(rng, 6, (0.4, 0.4, 0.4), 0.0)
    out = jitter_(torch.from_numpy(_lit_input(x, color)).float(), color,
                  IMAGENET_MEAN, IMAGENET_STD).double().numpy()  # fmt: skip
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for order in permutations(range(3)):
        for i in range(len(x)):
            image = torch.from_numpy(x[i])
            for op in order:
                image = ops[op](image, float(color[i, op]))
                assert image.min() > 0 and image.max() < 1  # no clamp was at work
            expected = (image.numpy() - _MEAN64[:, None, None]) / _STD64[:, None, None]
            assert np.abs(out[i] - expected).max() < 5e-4  # 0.2989 vs 0.299


# -- mixing images that carry their own colours -------------------------------------------
_RECIPE = {"color_jitter": 0.4, "lighting": 0.1}


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_the_partners_own_colours(sample_data, sample_store, mode):
    """Same seed: the same crops, flips and colours with and without CutMix. Inside its box
    an image shows its partner as the partner's own draws coloured it (timm's and
    torchvision's order: colour per image, then mixing), elsewhere itself."""
    kwargs = {"seed": 7, "crop_size": 48, "num_threads": 2, **_RECIPE}
    plain = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs)
    mixed = ReLabelLoader(
        sample_data.train, sample_store, 10, cutmix_alpha=1.0, mix_mode=mode, **kwargs
    )
    pasted = 0
    for image, own, partner, inside, _ in cutmix_samples(plain, mixed, mode, 7, 48):
        assert torch.equal(image[:, ~inside], own[:, ~inside])
        if inside.any():
            assert torch.equal(image[:, inside], partner[:, inside])
            pasted += 1
    assert pasted >= 10


def test_mixup_blends_images_with_their_own_colours(sample_data, sample_store):
    from dali_relabel.loader._mixing import Mixer, mix_generator

    kwargs = {"seed": 8, "crop_size": 48, "num_threads": 2, **_RECIPE}
    plain = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs)
    mixed = ReLabelLoader(sample_data.train, sample_store, 10, mixup_alpha=0.8, **kwargs)
    mixer = Mixer(1000, mixup_alpha=0.8)
    for b, ((x, _), (y, _)) in enumerate(zip(plain, mixed, strict=True)):
        lam = float(mixer.draw(mix_generator(8, 0, 0, b), len(x), 48, 48).lam[0])
        assert torch.allclose(y, lam * x + (1 - lam) * x.flip(0), atol=1e-5)


def test_colour_changes_no_crop(sample_data, sample_store):
    """The colour draws come after the crop's: the same windows and flips with colour."""
    kwargs = {"seed": 9, "crop_size": 48, "num_threads": 2, "targets": "both"}
    plain = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs)
    coloured = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs, **_RECIPE)
    for (x, soft, hard), (y, soft_c, hard_c) in zip(plain, coloured, strict=True):
        assert torch.equal(soft, soft_c) and torch.equal(hard, hard_c)
        assert not torch.allclose(x, y)


@pytest.mark.gpu
def test_colour_on_the_gpu_is_the_same_computation(sample_data, sample_store):
    """On "mixed": the jitter on the device against the float64 reference, and through the
    loader the contrast formula and the lighting offsets as on the CPU, against the same
    crops decoded on the GPU without colour."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (7, 3, 20, 24))
    color = draw_color(rng, 7, (1.0, 1.0, 1.0), 0.5)
    images = torch.from_numpy(_lit_input(x, color)).float().cuda()
    out = jitter_(images, color, IMAGENET_MEAN, IMAGENET_STD).double().cpu().numpy()
    assert np.abs(out - _normalize(_reference(x, color))).max() < 2e-5
    plain = np.rint(_batches(sample_data, sample_store, "cuda"))
    out = _batches(sample_data, sample_store, "cuda", color_jitter=(0, 0.4, 0))
    centre = np.broadcast_to(_gray(plain).mean((2, 3), keepdims=True), plain.shape)
    factors = _fit(out, plain, centre)
    expected = factors[:, None, None, None] * (plain - centre) + centre
    assert np.abs(out - expected).max() < 2e-3
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    lit = _batches(sample_data, sample_store, "cuda", lighting=0.1)
    per_image = ((lit - plain) / 255).mean((2, 3))
    alpha = np.linalg.solve(np.array(EIGVEC), per_image.T).T / np.array(EIGVAL)
    assert abs(alpha.std() - 0.1) < 0.015
