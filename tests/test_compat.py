"""The older adapters: the deprecated timm create_loader and torchvision's references' loaders."""

from __future__ import annotations

import argparse

import pytest
import torch

from dali_relabel.compat import create_loader, load_loaders

CROP = 64


@pytest.mark.filterwarnings("ignore:dali_relabel.compat.create_loader is deprecated")
def test_trainer_adapters(sample_data, sample_store, tmp_path):
    with pytest.deprecated_call(match="compat.timm_train"):
        loader = create_loader(
            sample_data.train, sample_store, (3, CROP, CROP), 16, is_training=True, num_workers=2
        )
    assert loader.train and loader.targets == "soft" and loader.crop_size == CROP
    val = create_loader(sample_data.train, sample_store, CROP, 16, crop_pct=0.5, num_workers=2)
    assert val.targets == "hard" and val.resize_size == 2 * CROP
    # timm's default crop_pct, with timm's floor: 300 / 0.875 = 342.9 -> 342
    val = create_loader(sample_data.train, sample_store, 300, 16, num_workers=2)
    assert val.resize_size == 342
    with pytest.raises(ValueError, match="input_size must be square"):
        create_loader(sample_data.train, None, (3, CROP, 2 * CROP), 16)

    (tmp_path / "train").symlink_to(sample_data.train)
    (tmp_path / "val").symlink_to(sample_data.train)
    args = argparse.Namespace(
        data_path=str(tmp_path),
        batch_size=16,
        workers=2,
        train_crop_size=CROP,
        val_crop_size=CROP,
        val_resize_size=CROP + 8,
    )
    train, test, train_sampler, test_sampler = load_loaders(args, sample_store)
    train_sampler.set_epoch(2)
    assert train.sampler.epoch == 2 and test_sampler is test.sampler
    labels = torch.cat([hard for _, hard in test])
    assert labels.tolist() == list(sample_data.labels)  # ImageNet indices, as the soft targets
    images, soft = next(iter(train))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)  # takes soft targets as they are
    assert torch.isfinite(criterion(torch.randn(len(images), 1000), soft))
