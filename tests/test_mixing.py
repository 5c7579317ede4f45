"""CutMix/Mixup of the loader: timm's draws and pixels, region targets against a per-pixel
reference, smoothing, switching off, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_relabel.loader._mixing import Mixer, MixParams, mix_generator
from dali_relabel.loader._regions import region_boxes

NUM_CLASSES = 10

# (mixup_alpha, cutmix_alpha, cutmix_minmax, mix_prob, switch_prob)
CONFIGS = [
    (0.0, 1.0, None, 1.0, 0.5),
    (0.8, 0.0, None, 1.0, 0.5),
    (0.8, 1.0, None, 0.7, 0.5),
    (0.0, 0.0, (0.2, 0.8), 1.0, 0.5),
]


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("config", CONFIGS)
def test_draws_pixels_and_targets_are_timms(monkeypatch, mode, config):
    """timm's Mixup, its numpy global RNG replaced by the batch's generator, mixes the
    same images the same way and makes the same targets (one-hot labels, smoothing 0.1)."""
    mixup = pytest.importorskip("timm.data").Mixup
    mixup_alpha, cutmix_alpha, minmax, prob, switch = config
    kwargs = {
        "mixup_alpha": mixup_alpha,
        "cutmix_alpha": cutmix_alpha,
        "cutmix_minmax": minmax,
        "switch_prob": switch,
        "mode": mode,
        "label_smoothing": 0.1,
    }
    theirs = mixup(prob=prob, num_classes=NUM_CLASSES, **kwargs)
    ours = Mixer(NUM_CLASSES, mix_prob=prob, **kwargs)
    batch, height, width = 8, 24, 40  # not square: an H/W swap fails
    seen = set()
    for b in range(12):
        g = torch.Generator().manual_seed(b)
        images = torch.randn(batch, 3, height, width, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        timm_rng = mix_generator(0, 0, 0, b)
        monkeypatch.setattr(np.random, "rand", lambda *shape, r=timm_rng: r.random(shape or None))
        monkeypatch.setattr(np.random, "beta", timm_rng.beta)
        monkeypatch.setattr(np.random, "randint", timm_rng.integers)
        expected_images, expected_targets = theirs(images.clone(), labels)

        params = ours.draw(mix_generator(0, 0, 0, b), batch, height, width)
        mixed = ours.mix_images(images.clone(), params)
        one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
        targets = ours.smooth(ours.mix_area(one_hot, params))
        assert torch.allclose(mixed, expected_images, rtol=0, atol=1e-6)
        assert torch.allclose(targets, expected_targets, rtol=0, atol=1e-6)
        seen.update(("cut" if c else "mix") if lam < 1 else "none"
                    for lam, c in zip(params.lam, params.cutmix, strict=True))  # fmt: skip
    if mixup_alpha and cutmix_alpha:
        assert {"cut", "mix", "none"} <= seen
    else:
        assert ("cut" if cutmix_alpha or minmax else "mix") in seen


def test_pair_mode_gives_partners_the_same_box():
    mixer = Mixer(NUM_CLASSES, cutmix_alpha=1.0, mode="pair")
    params = mixer.draw(mix_generator(1, 2, 0, 3), 9, 32, 32)  # odd: the middle is not mixed
    assert np.array_equal(params.boxes, params.boxes[::-1])
    assert np.array_equal(params.lam, params.lam[::-1]) and params.lam[4] == 1.0


# -- region targets against a per-pixel reference -------------------------------------
def _bilinear(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """torchvision roi_align's bilinear read of grid [C, H, W] at grid coordinates (y, x)."""
    _, height, width = grid.shape
    y, x = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    return (grid[:, y0, x0] * (1 - ly) * (1 - lx) + grid[:, y0, x1] * (1 - ly) * lx
            + grid[:, y1, x0] * ly * (1 - lx) + grid[:, y1, x1] * ly * lx)  # fmt: skip


def _reference_targets(dense, crops, mirrors, params, size, temperature):
    """Each output pixel traced back to the image it shows, its map read there, averaged
    over the pixels of each part: float64, pixel by pixel, no boxes."""
    batch = len(dense)
    out = np.zeros((batch, NUM_CLASSES))
    v, u = np.mgrid[0:size, 0:size] + 0.5  # output pixel centres
    everywhere = np.ones((size, size), dtype=bool)
    for i in range(batch):
        j = batch - 1 - i
        yl, yh, xl, xh = params.boxes[i]
        if params.cutmix[i]:  # the kept image outside the box, the partner inside
            pasted = (v >= yl) & (v < yh) & (u >= xl) & (u < xh)
            parts = ((i, ~pasted, (~pasted).mean()), (j, pasted, pasted.mean()))
        else:  # Mixup (or nothing): both whole, weighted by lam
            lam = params.lam[i]
            parts = ((i, everywhere, lam), (j, everywhere, 1 - lam))
        for sample, where, share in parts:
            if not where.any():
                continue
            x1, y1, x2, y2 = crops[sample]
            uu = size - u[where] if mirrors[sample] else u[where]
            gx = (x1 + uu / size * (x2 - x1)) * dense.shape[3] - 0.5
            gy = (y1 + v[where] / size * (y2 - y1)) * dense.shape[2] - 0.5
            logits = _bilinear(dense[sample], gy, gx).mean(axis=1) / temperature
            p = np.exp(logits - logits.max())
            out[i] += share * p / p.sum()
    return out


def test_region_targets_match_the_per_pixel_reference():
    """Maps linear in x and y and crops away from the borders: there every sampling rule
    gives the exact mean, so ROIAlign over the strips and the per-pixel mean must agree to
    float32 rounding, and any error in the geometry (crop, mirror, partner) shows."""
    size, batch, grid = 64, 16, (9, 13)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : grid[0], 0 : grid[1]]
    slopes = rng.normal(0, 0.6, (batch, NUM_CLASSES, 3))
    dense = (
        slopes[..., 0, None, None] * xx
        + slopes[..., 1, None, None] * yy
        + slopes[..., 2, None, None]
    )
    scores = torch.from_numpy(dense).float()
    classes = torch.arange(NUM_CLASSES).view(1, -1, 1, 1).expand(batch, -1, *grid).contiguous()
    # crops inside [0.1, 0.9]: more than half a cell from the borders, where ROIAlign clamps
    lo = rng.uniform(0.1, 0.5, (batch, 2))
    crops = np.concatenate([lo, lo + rng.uniform(0.2, 0.4, (batch, 2))], 1)
    mirrors = rng.random(batch) < 0.5
    mixer = Mixer(NUM_CLASSES, cutmix_alpha=1.0, mixup_alpha=1.0, mode="elem")
    params = mixer.draw(mix_generator(5, 0, 0, 0), batch, size, size)
    assert params.cutmix.sum() >= 4 and (~params.cutmix & (params.lam < 1)).sum() >= 2
    args = {"scores": scores, "classes": classes, "crop_boxes": crops, "mirrors": mirrors,
            "size": (size, size), "temperature": 0.5, "validate": True}  # fmt: skip
    region = mixer.targets(params, **args).double().numpy()
    expected = _reference_targets(dense, crops, mirrors, params, size, 0.5)
    assert np.abs(region - expected).max() < 1e-5
    assert np.allclose(region.sum(1), 1.0, atol=1e-6)
    # the paper's area targets ignore where the box is: far from the pixels' targets
    area = Mixer(NUM_CLASSES, cutmix_alpha=1.0, mix_targets="area").targets(params, **args)
    assert np.abs(area.double().numpy() - expected)[params.cutmix].max() > 1e-2
    # a mirror left out moves the box to the other side of the crop: caught
    wrong = mixer.targets(params, **{**args, "mirrors": ~mirrors}).double().numpy()
    assert np.abs(wrong - expected)[params.cutmix].max() > 1e-2


def test_region_boxes_geometry_by_hand():
    # one cut pair: box rows 0-16, columns 8-24 of a 32 x 32 output
    params = MixParams(
        lam=np.array([0.75, 0.75]),
        cutmix=np.array([True, True]),
        boxes=np.array([[0, 16, 8, 24], [0, 16, 8, 24]]),
        shared=True,
    )
    crops = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]])
    strips, shares, source = region_boxes(params, crops, np.array([False, True]), (32, 32))
    assert np.allclose(shares[0], [0.0, 0.5, 0.125, 0.125]) and np.isclose(shares[0].sum(), 0.75)
    assert np.allclose(strips[0, 1], [0.0, 0.5, 1.0, 1.0])  # below the box: lower half
    assert np.allclose(strips[0, 2], [0.0, 0.0, 0.25, 0.5])  # left of it
    # sample 1 is mirrored and crops the top-right quarter: output columns 8-24 read
    # crop columns 8-24 mirrored = the same, x = 0.5 + [8, 24] / 32 * 0.5
    assert np.allclose(source[1], [0.625, 0.0, 0.875, 0.25])
    assert np.allclose(strips[1, 3], [0.5, 0.0, 0.625, 0.25])  # right of the box: mirrored


# -- smoothing, switching off, determinism, errors --------------------------------------
def test_switched_off_batches_are_only_smoothed():
    mixer = Mixer(NUM_CLASSES, cutmix_alpha=1.0, label_smoothing=0.1)
    mixer.enabled = False
    params = mixer.draw(mix_generator(0, 0, 0, 0), 6, 16, 16)
    assert not params.mixed
    images = torch.randn(6, 3, 16, 16)
    assert torch.equal(mixer.mix_images(images.clone(), params), images)
    soft = torch.softmax(torch.randn(6, NUM_CLASSES), 1)
    expected = 0.9 * soft + 0.01
    assert torch.allclose(mixer.smooth(mixer.mix_area(soft, params)), expected)


def test_draws_depend_on_the_batch_key_only():
    mixer = Mixer(NUM_CLASSES, cutmix_alpha=1.0, mixup_alpha=0.5, mode="elem")
    a = mixer.draw(mix_generator(3, 1, 0, 7), 16, 32, 32)
    b = mixer.draw(mix_generator(3, 1, 0, 7), 16, 32, 32)
    c = mixer.draw(mix_generator(3, 1, 1, 7), 16, 32, 32)
    assert np.array_equal(a.lam, b.lam) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.lam, c.lam)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cutmix_alpha": -1.0}, "cutmix_alpha must be a finite number >= 0"),
        ({"mix_prob": 1.5}, r"mix_prob must be a number in \[0, 1\]"),
        ({"cutmix_minmax": (0.8, 0.2)}, "cutmix_minmax must be"),
        ({"mode": "half"}, "mix_mode must be one of"),
        ({"mix_targets": "pixels"}, "mix_targets must be one of 'region', 'area'"),
        ({"label_smoothing": -0.1}, "label_smoothing must be a number in"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mixer(NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_channels_last_and_half_images_mix_like_float32(mode):
    mixer = Mixer(NUM_CLASSES, cutmix_alpha=1.0, mixup_alpha=0.5, mode=mode)
    images = torch.randn(6, 3, 20, 28)
    for b in range(6):
        params = mixer.draw(mix_generator(0, 0, 0, b), 6, 20, 28)
        expected = mixer.mix_images(images.clone(), params)
        last = mixer.mix_images(images.clone().to(memory_format=torch.channels_last), params)
        assert torch.allclose(last, expected, atol=1e-6)
        half = mixer.mix_images(images.clone().half(), params)
        assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, atol=1e-2)
