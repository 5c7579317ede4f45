"""pytorch/examples imagenet/main.py's loader calls, replayed (written from what the script
does with its loaders, docs/INTEGRATION.md), on dali_relabel.compat.pytorch_examples."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms

from dali_relabel import ReLabelLoader
from dali_relabel.compat.pytorch_examples import DataLoader

CROP = 48
NORMALIZE = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def _train_set(root):
    return datasets.ImageFolder(
        root / "train",
        transforms.Compose([
            transforms.RandomResizedCrop(CROP),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            NORMALIZE,
        ]),
    )  # fmt: skip


def _val_set(root):
    return datasets.ImageFolder(
        root / "val",
        transforms.Compose([
            transforms.Resize(56), transforms.CenterCrop(CROP), transforms.ToTensor(), NORMALIZE
        ]),
    )  # fmt: skip


def accuracy(output, target, topk=(1,)):
    # the script's accuracy(): target.view(1, -1).expand_as(pred), class indices [B]
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]


def test_two_epochs_of_the_training_loop(trainer_root, sample_store):
    store = str(sample_store.path)
    loader = DataLoader(store, _train_set(trainer_root), batch_size=5, shuffle=True,
                        num_workers=2, pin_memory=True, sampler=None)  # fmt: skip
    assert loader.train and loader.crop_size == CROP and len(loader) == 8
    for _ in range(2):
        batches = 0
        for images, target in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, CROP, CROP)
            assert target.dtype == torch.float32 and target.shape == (len(images), 1000)
            assert torch.allclose(target.sum(1), torch.ones(len(target)), atol=1e-5)
            loss = torch.nn.CrossEntropyLoss()(torch.randn(len(images), 1000), target)
            acc1, acc5 = accuracy(torch.randn(len(images), 1000), target.argmax(1), (1, 5))
            assert torch.isfinite(loss) and 0 <= acc1 <= acc5 <= 100
            batches += 1
        assert batches == len(loader)
    # the val loader names the same store: opened once
    val = DataLoader(store, _val_set(trainer_root), batch_size=5, shuffle=False)
    assert val.store is loader.store and not val.train and val.resize_size == 56


def test_the_scripts_sampler_epoch_chooses_the_order(trainer_root, sample_store):
    dataset = _train_set(trainer_root)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, seed=3)
    loader = DataLoader(sample_store, dataset, batch_size=5, sampler=sampler, num_workers=2)
    reference = ReLabelLoader(dataset.root, sample_store, 5, crop_size=CROP, num_threads=2,
                              seed=3, rank=1, world_size=2)  # fmt: skip
    assert (loader.sampler.rank, loader.sampler.world_size, loader.seed) == (1, 2, 3)
    sampler.set_epoch(4)  # the script's train_sampler.set_epoch(epoch), on its own sampler
    reference.set_epoch(4)
    for (x, t), (rx, rt) in zip(loader, reference, strict=True):
        assert torch.equal(x, rx) and torch.equal(t, rt)
    # without set_epoch, DistributedSampler stays at its epoch: the same batches again
    first = next(iter(loader))[0]
    assert torch.equal(next(iter(loader))[0], first)


def test_evaluation_batches_and_the_dataset(trainer_root, sample_store):
    val = DataLoader(sample_store, _val_set(trainer_root), batch_size=5, shuffle=False)
    labels = torch.cat([target for _, target in val])
    assert labels.dtype == torch.int64 and len(val) == 5
    assert labels.tolist() == val.dataset.targets  # ImageNet indices of the store
    image, label = val.dataset[20]  # what Subset(val_loader.dataset, ...) hands out
    assert image.shape == (3, CROP, CROP) and label == labels[20]


def test_what_the_loader_cannot_do_is_refused(trainer_root, sample_store):
    dataset = _train_set(trainer_root)
    dataset.transform.transforms.insert(2, transforms.RandAugment())
    with pytest.raises(ValueError, match="RandAugment"):
        DataLoader(sample_store, dataset, batch_size=5)
    with pytest.raises(TypeError, match="FakeData"):
        DataLoader(sample_store, datasets.FakeData(10), batch_size=5)
    with pytest.raises(TypeError, match="DistributedSampler"):
        DataLoader(sample_store, _train_set(trainer_root), 5, sampler=range(40))
    flip = _train_set(trainer_root)
    flip.transform.transforms[1] = transforms.RandomHorizontalFlip(p=0.3)
    with pytest.raises(ValueError, match=r"p=0\.5"):
        DataLoader(sample_store, flip, batch_size=5)
    jitter = _train_set(trainer_root)
    jitter.transform.transforms.insert(2, transforms.ColorJitter(0.4, 0.4, 0.4))
    assert DataLoader(sample_store, jitter, 5).color_jitter == pytest.approx((0.4, 0.4, 0.4))
