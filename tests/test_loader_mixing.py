"""CutMix/Mixup and label smoothing in the loader: region targets follow the pixels of the
mixed images (the issue's two-colour test), switching mixing off, smoothing, bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cutmix_samples
from PIL import Image

from dali_relabel import ReLabelLoader
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.store import LabelMapWriter

CROP = 64
FAST = {"crop_size": CROP, "num_threads": 2}
#: the same checks on the GPU (decoding on "mixed", pasting and mixing there) where one is
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# one colour per class, far apart
PALETTE = np.array([(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30)], np.uint8)
CLASSES, GRID = len(PALETTE), 16


@pytest.fixture(scope="module")
def two_colour(tmp_path_factory):
    """48 PNGs, left half one colour, right half another; each label map gives the left
    half's cells the left colour's class (score 4) and the right half's the other's."""
    root = tmp_path_factory.mktemp("two_colour")
    rng = np.random.default_rng(0)
    keys, scores, classes = [], [], []
    for c in range(CLASSES):
        for j in range(12):
            left, right = c, int(rng.choice([x for x in range(CLASSES) if x != c]))
            h, w = (int(v) for v in rng.integers(80, 140, 2))
            pixels = np.empty((h, w, 3), np.uint8)
            pixels[:, : w // 2], pixels[:, w // 2 :] = PALETTE[left], PALETTE[right]
            key = f"c{c}/img{j}"
            (root / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "train" / f"{key}.png")
            s = np.zeros((2, GRID, GRID), np.float32)
            s[0] = 4.0
            k = np.empty((2, GRID, GRID), np.int64)
            k[0, :, : GRID // 2] = k[1, :, GRID // 2 :] = left
            k[0, :, GRID // 2 :] = k[1, :, : GRID // 2] = right
            keys.append(key)
            scores.append(s)
            classes.append(k)
    writer = LabelMapWriter.create(
        root / "maps.zarr", keys, num_classes=CLASSES, k=2, grid=(GRID, GRID), shard_size=16
    )
    scores, classes = np.stack(scores), np.stack(classes)
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    writer.finalize()
    return root / "train", root / "maps.zarr"


def _pixel_shares(images: torch.Tensor) -> torch.Tensor:
    """Share of each class's colour among the pixels of each image, [B, C]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    rgb = (images.float().cpu() * std + mean).permute(0, 2, 3, 1)
    nearest = ((rgb[..., None, :] - torch.tensor(PALETTE).float()) ** 2).sum(-1).argmin(-1)
    return torch.stack([(nearest == c).float().mean((1, 2)) for c in range(CLASSES)], 1)


def _agreement(loader: ReLabelLoader, epochs: int) -> tuple[int, int]:
    """(samples whose target's top class is the pixels' majority, decisive samples): a
    sample is decisive when its majority colour leads the next by 20 % of the pixels."""
    agree = decisive = 0
    for _ in range(epochs):
        for images, targets in loader:
            shares = _pixel_shares(images)
            top = shares.topk(2, dim=1).values
            clear = top[:, 0] - top[:, 1] >= 0.2
            agree += int(((targets.argmax(1).cpu() == shares.argmax(1)) & clear).sum())
            decisive += int(clear.sum())
    return agree, decisive


@pytest.mark.parametrize("device", DEVICES)
def test_region_targets_follow_the_mixed_pixels_and_area_targets_do_not(two_colour, device):
    root, maps = two_colour
    rates = {}
    for mode in ("region", "area"):
        options = {"cutmix_alpha": 1.0, "mix_targets": mode, "seed": 1, "device": device}
        loader = ReLabelLoader(root, maps, 16, **options, **FAST)
        agree, decisive = _agreement(loader, epochs=4)
        assert decisive >= 80
        rates[mode] = agree / decisive
    assert rates["region"] >= 0.98, rates
    assert rates["area"] <= rates["region"] - 0.05, rates


@pytest.mark.parametrize("device", DEVICES)
def test_mixing_switched_off_gives_the_plain_batches_smoothed(two_colour, device):
    """Same seed: the crops do not depend on mixing, so a mixing loader switched off
    (also for the batches DALI made ahead) yields the plain loader's batches, smoothed."""
    root, maps = two_colour
    plain = ReLabelLoader(root, maps, 8, seed=3, device=device, **FAST)
    mix = {"cutmix_alpha": 1.0, "mixup_alpha": 0.5, "label_smoothing": 0.1}
    mixing = ReLabelLoader(root, maps, 8, seed=3, device=device, **mix, **FAST)
    assert mixing.mixup_enabled and not plain.mixup_enabled
    expected = [(x, 0.9 * t + 0.1 / CLASSES) for x, t in plain]
    epoch = iter(mixing)
    x, t = next(epoch)
    assert not torch.equal(x, expected[0][0])  # mixed
    mixing.mixup_enabled = False  # in the middle of an epoch, batches already fed
    for (x, t), (ex, et) in zip(epoch, expected[1:], strict=True):
        assert torch.equal(x, ex)
        assert torch.allclose(t, et, atol=1e-6)
    assert not mixing.mixup_enabled


def test_both_targets_keep_the_kept_images_labels(two_colour):
    root, maps = two_colour
    hard = ReLabelLoader(root, maps, 8, seed=2, targets="hard", **FAST)
    both = ReLabelLoader(root, maps, 8, seed=2, targets="both", cutmix_alpha=1.0, **FAST)
    for (_, labels), (_, soft, both_labels) in zip(hard, both, strict=True):
        assert torch.equal(labels, both_labels)
        assert torch.allclose(soft.sum(1), torch.ones(len(soft)), atol=1e-5)


def test_same_seed_same_mixed_batches(two_colour):
    root, maps = two_colour
    kwargs = {"cutmix_alpha": 1.0, "mixup_alpha": 0.8, "mix_mode": "elem", "seed": 4, **FAST}
    a, b = ReLabelLoader(root, maps, 8, **kwargs), ReLabelLoader(root, maps, 8, **kwargs)
    b.set_epoch(1)
    list(b)  # another epoch first: batch (epoch 0, b) depends on nothing else
    b.set_epoch(0)
    for (xa, ta), (xb, tb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": False, "cutmix_alpha": 1.0}, "evaluation loader"),
        ({"targets": "hard", "label_smoothing": 0.1}, "needs soft targets"),
        ({"targets": "local", "mixup_alpha": 0.2}, "local targets is not offered"),
        ({"mix_targets": "pixels", "cutmix_alpha": 1.0}, "mix_targets must be one of"),
        ({"mix_prob": 2.0}, r"mix_prob must be a number in \[0, 1\]"),
    ],
)
def test_bad_mixing_options(two_colour, kwargs, match):
    root, maps = two_colour
    with pytest.raises(ValueError, match=match):
        ReLabelLoader(root, maps, 8, **{**FAST, **kwargs})


def test_mixup_enabled_cannot_be_switched_on_without_mixing(two_colour):
    root, maps = two_colour
    loader = ReLabelLoader(root, maps, 8, label_smoothing=0.1, **FAST)
    loader.mixup_enabled = False  # what timm does at --mixup-off-epoch: harmless
    with pytest.raises(ValueError, match="neither CutMix nor Mixup"):
        loader.mixup_enabled = True


@pytest.mark.parametrize(
    ("mode", "device"),
    [("batch", "cpu"), ("elem", "cpu"), pytest.param("elem", "cuda", marks=pytest.mark.gpu)],
)
def test_pasted_boxes_show_the_partners_pixels(sample_data, sample_store, mode, device):
    """Same seed, so the same crops and flips: a CutMix batch is the plain batch with the
    partner's pixels in each box (mirrored where the two flips differ: the graph pastes
    before flipping), and the boxes are the Mixer's draws for (seed, epoch, rank, batch)."""
    kwargs = {"seed": 7, "crop_size": 48, "num_threads": 2, "device": device}
    plain = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs)
    mixed = ReLabelLoader(
        sample_data.train, sample_store, 10, cutmix_alpha=1.0, mix_mode=mode, **kwargs
    )
    pasted = 0
    for image, own, partner, inside, (yl, yh, xl, xh) in cutmix_samples(plain, mixed, mode, 7, 48):
        assert torch.equal(image[:, ~inside], own[:, ~inside])
        if inside.any():
            patch, theirs = image[:, yl:yh, xl:xh], partner[:, yl:yh, xl:xh]
            assert torch.equal(patch, theirs) or torch.equal(patch, theirs.flip(-1))
            pasted += 1
    assert pasted >= 10


def test_mixup_blends_the_plain_images(sample_data, sample_store):
    from dali_relabel.loader._mixing import Mixer, mix_generator

    kwargs = {"seed": 8, "crop_size": 48, "num_threads": 2}
    plain = ReLabelLoader(sample_data.train, sample_store, 10, **kwargs)
    mixed = ReLabelLoader(sample_data.train, sample_store, 10, mixup_alpha=0.8, **kwargs)
    mixer = Mixer(1000, mixup_alpha=0.8)
    for b, ((x, t), (y, u)) in enumerate(zip(plain, mixed, strict=True)):
        lam = float(mixer.draw(mix_generator(8, 0, 0, b), len(x), 48, 48).lam[0])
        assert torch.allclose(y, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
        assert torch.allclose(u, lam * t + (1 - lam) * t.flip(0), atol=1e-6)
