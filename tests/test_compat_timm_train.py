"""timm train.py's dataset, loader, mixing and loss calls (1.0.28 and main), replayed on
dali_relabel.compat.timm_train: the keyword arguments are the ones train.py passes."""

from __future__ import annotations

import pytest
import torch
from conftest import timm_set_loader_epoch
from timm.data import FastCollateMixup
from timm.loss import BinaryCrossEntropy as TimmBCE
from timm.loss import LabelSmoothingCrossEntropy as TimmLSCE

from dali_relabel.compat.timm_train import (
    BinaryCrossEntropy,
    LabelSmoothingCrossEntropy,
    Mixup,
    create_dataset,
    create_loader,
)

SIZE = 48
# train.py's common_loader_kwargs and train_loader_kwargs with its defaults (1.0.28)
COMMON = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "pin_memory": False,
          "img_dtype": torch.float32, "device": torch.device("cpu"), "distributed": False,
          "use_prefetcher": True}  # fmt: skip
TRAIN = {"batch_size": 8, "is_training": True, "no_aug": False, "re_prob": 0.0,
         "re_mode": "pixel", "re_count": 1, "re_split": False, "train_crop_mode": None,
         "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3], "hflip": 0.5, "vflip": 0.0,
         "color_jitter": 0.4, "color_jitter_prob": None, "grayscale_prob": None,
         "gaussian_blur_prob": None, "auto_augment": None, "num_aug_repeats": 0,
         "num_aug_splits": 0, "interpolation": "random", "num_workers": 2,
         "worker_seeding": "all"}  # fmt: skip
# timm main's create_loader also gets these from train.py
MAIN = {"input_size_choices": None, "batch_size_choices": None, "batch_choice_weights": None,
        "batch_choice_seed": 0, "batch_choice_schedule": "constant",
        "batch_schedule_epochs": None, "batch_schedule_spread": 0.65,
        "batch_schedule_random_mix": 0.1, "num_batches": None}  # fmt: skip


def _datasets(root, store):
    name = f"relabel:{store.path}"
    train = create_dataset(name, root=str(root), split="train", is_training=True,
                           class_map="", download=False, batch_size=8, seed=42, repeats=0,
                           input_img_mode="RGB", input_key=None, target_key=None,
                           num_samples=None, trust_remote_code=False)  # fmt: skip
    val = create_dataset(name, root=str(root), split="validation", is_training=False,
                         class_map="", download=False, batch_size=8, input_img_mode="RGB",
                         input_key=None, target_key=None, num_samples=None,
                         trust_remote_code=False)  # fmt: skip
    return train, val


def _train_loader(dataset, collate_fn=None, **extra):
    with pytest.warns(UserWarning, match="interpolation='random'"):
        return create_loader(dataset, input_size=(3, SIZE, SIZE), collate_fn=collate_fn,
                             use_multi_epochs_loader=False, **COMMON, **TRAIN, **extra)  # fmt: skip


@pytest.mark.parametrize("version", ["1.0.28", "main"])
def test_two_epochs_with_each_versions_epoch_hook(trainer_root, sample_store, version):
    train, val = _datasets(trainer_root, sample_store)
    assert val.root.endswith("val")  # "validation" found as its synonym, as timm does
    loader = _train_loader(train, **(MAIN if version == "main" else {}))
    assert len(loader) == 5 and loader.drop_last  # timm drops the last training batch
    assert loader.color_jitter == (0.4, 0.4, 0.4)  # timm's default --color-jitter
    assert not loader.mixup_enabled
    for epoch in (0, 1):
        if version == "1.0.28":
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
        else:
            timm_set_loader_epoch(loader, epoch)
            timm_set_loader_epoch(loader, epoch)
        assert loader.sampler.epoch == epoch
        count = 0
        for images, target in loader:
            assert images.shape == (8, 3, SIZE, SIZE) and target.shape == (8, 1000)
            count += 1
        assert count == len(loader)
    with pytest.warns(UserWarning, match="bicubic"):
        evaluate = create_loader(val, input_size=(3, SIZE, SIZE), batch_size=5,
                                 is_training=False, interpolation="bicubic", num_workers=2,
                                 crop_pct=0.875, **COMMON)  # fmt: skip
    labels = torch.cat([t for _, t in evaluate])
    assert labels.dtype == torch.int64 and len(labels) == 21 and evaluate.resize_size == 54


def test_fast_collate_mixup_mixes_in_the_loader_and_switches_off(trainer_root, sample_store):
    train, _ = _datasets(trainer_root, sample_store)
    plain = _train_loader(train)
    mixup = FastCollateMixup(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0,
                             switch_prob=0.5, mode="batch", label_smoothing=0.1,
                             num_classes=1000)  # fmt: skip
    mixed = _train_loader(train, collate_fn=mixup)
    assert mixed.mixup_enabled  # train.py: if args.prefetcher and loader.mixup_enabled
    x, t = next(iter(mixed))
    px, pt = next(iter(plain))
    assert not torch.equal(x, px)
    mixed.mixup_enabled = False  # --mixup-off-epoch
    for (x, t), (px, pt) in zip(mixed, plain, strict=True):
        assert torch.equal(x, px) and torch.allclose(t, 0.9 * pt + 0.1 / 1000, atol=1e-7)
    with pytest.raises(ValueError, match="--num-classes 10"):
        wrong = FastCollateMixup(cutmix_alpha=1.0, num_classes=10)
        _train_loader(train, collate_fn=wrong)


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ({"re_prob": 0.25}, "--reprob"),
        ({"auto_augment": "rand-m9-mstd0.5"}, "--aa"),
        ({"num_aug_repeats": 3}, "--aug-repeats"),
        ({"num_aug_splits": 2}, "--aug-splits"),
        ({"hflip": 0.3}, "--hflip"),
        ({"vflip": 0.5}, "--vflip"),
        ({"color_jitter_prob": 0.5}, "--color-jitter-prob"),
        ({"grayscale_prob": 0.2}, "--grayscale-prob"),
        ({"gaussian_blur_prob": 0.2}, "--gaussian-blur-prob"),
        ({"no_aug": True}, "--no-aug"),
        ({"train_crop_mode": "rkrr"}, "--train-crop-mode"),
        ({"input_size_choices": [(3, 32, 32)]}, "--train-img-sizes"),
    ],
)
def test_unsupported_flags_are_refused_by_name(trainer_root, sample_store, option, flag):
    train, _ = _datasets(trainer_root, sample_store)
    kwargs = {**COMMON, **TRAIN, **MAIN, **option}
    with pytest.raises(ValueError, match=flag):
        create_loader(train, input_size=(3, SIZE, SIZE), **kwargs)


def test_no_prefetcher_mixing_and_other_datasets_are_refused(trainer_root):
    with pytest.raises(ValueError, match="drop --no-prefetcher"):
        Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)
    with pytest.raises(ValueError, match="--dataset relabel:"):
        create_dataset("imagenet", root=str(trainer_root), split="train", is_training=True)


def test_smoothing_losses_take_soft_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g)
    labels = torch.randint(0, 10, (6,), generator=g)
    soft = torch.softmax(torch.randn(6, 10, generator=g), 1)
    ours = LabelSmoothingCrossEntropy(0.1)
    # class indices: timm's value; one-hot: the same; soft: CE against the smoothed rows
    assert torch.allclose(ours(logits, labels), TimmLSCE(0.1)(logits, labels))
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    assert torch.allclose(ours(logits, one_hot), TimmLSCE(0.1)(logits, labels))
    smoothed = 0.9 * soft + 0.01
    expected = torch.sum(-smoothed * torch.log_softmax(logits, 1), 1).mean()
    assert torch.allclose(ours(logits, soft), expected)
    assert not torch.allclose(ours(logits, soft), LabelSmoothingCrossEntropy(0.0)(logits, soft))
    # BCE: an explicit --smoothing smooths dense targets (timm would drop it); train.py's
    # mixing branch passes none, and the loader has smoothed already
    bce = BinaryCrossEntropy(smoothing=0.1)
    assert torch.allclose(bce(logits, soft), TimmBCE(smoothing=0.0)(logits, smoothed))
    assert torch.allclose(BinaryCrossEntropy()(logits, soft), TimmBCE()(logits, soft))
    assert torch.allclose(bce(logits, labels), TimmBCE(smoothing=0.1)(logits, labels))
