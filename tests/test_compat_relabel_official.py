"""The official ReLabel trainer's loader calls (train.py, main.py), replayed on
dali_relabel.compat.relabel_official: load_data_loaders(dataset, args, context) and its
batch_fn's modes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dali_relabel.compat.relabel_official import load_data_loaders


def _args(root, relabel_path, use=True):
    data = SimpleNamespace(
        dataset="imagenet",
        data_path=str(root),
        image_size=48,
        rrc_minimum=0.08,
        crop_ratio=0.875,
        relabel=SimpleNamespace(use=use, path=str(relabel_path)),
    )
    return SimpleNamespace(data=data)


CONTEXT = SimpleNamespace(batch_size=8, val_batch_size=5, num_workers=2, num_classes=1000)


def test_loaders_and_batch_fn_as_train_py_uses_them(trainer_root, sample_store, capsys):
    train, val, batch_fn = load_data_loaders("ImageNet", _args(trainer_root, sample_store.path),
                                             CONTEXT)  # fmt: skip
    out = capsys.readouterr().out
    assert "Training epoch size: 40" in out and "Validation epoch size: 21" in out
    # the official recipe: RRC(0.08-1) + flip + ColorJitter 0.4 + lighting 0.1; ceil resize
    assert train.scale == (0.08, 1.0) and train.color_jitter == (0.4, 0.4, 0.4)
    assert train.lighting == 0.1 and val.resize_size == 55  # ceil(48 / 0.875)
    for _ in range(2):
        for batch in train:
            image, target_original, target_relabel = batch_fn(batch=batch, num_classes=1000,
                                                              mode="train")  # fmt: skip
            assert image.shape == (8, 3, 48, 48) and target_original.shape == (8, 1000)
            assert torch.equal(target_original.sum(1), torch.ones(8))
            assert torch.allclose(target_relabel.sum(1), torch.ones(8), atol=1e-5)
            # the trainer's CutMix writes into both in place: fresh tensors per batch
            image[:, :, :4, :4] = 0
            target_relabel *= 0.9
    seen = []
    for batch in val:
        image, target = batch_fn(batch=batch, num_classes=1000, mode="val")
        assert target.dtype == torch.float32 and target.shape == (len(image), 1000)
        seen += target.topk(1)[1].long().view(-1).tolist()  # squeeze_one_hot
    assert seen == val.dataset.targets and len(val) == 5


def test_without_relabel_the_original_batch_fn_takes_mode(trainer_root, sample_store):
    train, _, batch_fn = load_data_loaders("imagenet", _args(trainer_root, "", use=False),
                                           CONTEXT)  # fmt: skip
    _, target = batch_fn(batch=next(iter(train)), num_classes=1000, mode="train")
    # no store: the folders' own indices, as the official ImageFolder gives them
    assert target.shape == (8, 1000) and np.isin(target.argmax(1).numpy(), range(5)).all()


def test_bad_configurations(trainer_root, sample_data, sample_store):
    with pytest.raises(ValueError, match="Unknown dataset cifar10"):
        load_data_loaders("cifar10", _args(trainer_root, sample_store.path), CONTEXT)
    pt_folder = sample_data.label_maps
    with pytest.raises(ValueError, match="dali-relabel convert"):
        load_data_loaders("imagenet", _args(trainer_root, pt_folder), CONTEXT)
    wrong = SimpleNamespace(**{**vars(CONTEXT), "num_classes": 100})
    with pytest.raises(ValueError, match="num_classes=100"):
        load_data_loaders("imagenet", _args(trainer_root, sample_store.path), wrong)
