"""Every adapter's evaluation under torch.distributed, as its trainer runs it: 2 and 3 gloo
processes on loopback, 21 images (one per class, so a label names its sample), batch 5.

- pytorch/examples: DistributedSampler(shuffle=False, drop_last=True), then the left-out
  samples through ``Subset(val_loader.dataset, ...)`` in a torch DataLoader with workers,
  and one all_reduce at the end;
- timm and DALI's example: an all_reduce per batch (timm's reduce_tensor; the example's);
- the official trainer: an all_gather and an all_reduce per batch, its validation loader
  not sharded.
A rank that yields one batch fewer would hang a per-batch collective: the processes get a
deadline and a hang fails the test.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N, BATCH, CROP = 21, 5, 48


def _examples(root: Path, store: str, world: int) -> dict:
    from torch.utils.data import DataLoader as TorchDataLoader
    from torch.utils.data import Subset
    from torch.utils.data.distributed import DistributedSampler
    from torchvision import datasets, transforms

    from dali_relabel.compat.pytorch_examples import DataLoader

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    tf = [transforms.Resize(56), transforms.CenterCrop(CROP), transforms.ToTensor(), normalize]
    val_dataset = datasets.ImageFolder(root / "val", transforms.Compose(tf))
    sampler = DistributedSampler(val_dataset, shuffle=False, drop_last=True)
    loader = DataLoader(store, val_dataset, batch_size=BATCH, shuffle=False, num_workers=1,
                        pin_memory=True, sampler=sampler)  # fmt: skip
    seen, batches = [], 0
    for _, target in loader:
        seen += target.tolist()
        batches += 1
    rest = []
    if len(loader.sampler) * world < len(loader.dataset):
        aux = Subset(loader.dataset, range(len(loader.sampler) * world, len(loader.dataset)))
        for images, target in TorchDataLoader(aux, batch_size=BATCH, num_workers=2):
            assert images.shape[1:] == (3, CROP, CROP) and target.dtype == torch.int64
            rest += target.tolist()
    total = torch.tensor([float(len(seen))])
    dist.all_reduce(total)  # top1.all_reduce() after the loop
    return {"seen": seen, "batches": batches, "len": len(loader), "rest": rest,
            "sampler_len": len(loader.sampler), "total": total.item()}  # fmt: skip


def _per_batch(batches) -> dict:
    seen, count = [], 0
    for labels in batches:
        value = torch.tensor([float(len(labels))])
        dist.all_reduce(value)  # reduce_tensor of the loss / accuracy, every batch
        seen += labels.tolist()
        count += 1
    return {"seen": seen, "batches": count}


def _timm(root: Path, store: str) -> dict:
    from dali_relabel.compat.timm_train import create_dataset, create_loader

    val = create_dataset(f"relabel:{store}", root=str(root), split="validation")
    loader = create_loader(val, input_size=(3, CROP, CROP), batch_size=BATCH, is_training=False,
                           interpolation="bilinear", num_workers=1, crop_pct=0.875,
                           distributed=True, device=torch.device("cpu"))  # fmt: skip
    return {**_per_batch(t for _, t in loader), "len": len(loader)}


def _dali(root: Path, store: str, rank: int, world: int) -> dict:
    from dali_relabel.compat.dali_resnet50 import DALIClassificationIterator, create_dali_pipeline

    pipe = create_dali_pipeline(batch_size=BATCH, num_threads=1, device_id=0, seed=12 + rank,
                                data_dir=root / "val", crop=CROP, size=56, shard_id=rank,
                                num_shards=world, is_training=False, label_maps=store)  # fmt: skip
    pipe.build()
    it = DALIClassificationIterator(pipe, reader_name="Reader", auto_reset=True)
    result = _per_batch(d[0]["label"].squeeze(-1).long() for d in it)
    return {**result, "len": len(it), "size": it._size}


def _official(root: Path, store: str) -> dict:
    from dali_relabel.compat.relabel_official import load_data_loaders

    relabel = SimpleNamespace(use=True, path=store)
    data = SimpleNamespace(data_path=str(root), image_size=CROP, rrc_minimum=0.08,
                           crop_ratio=0.875, relabel=relabel)  # fmt: skip
    context = SimpleNamespace(batch_size=8, val_batch_size=BATCH, num_workers=1, num_classes=1000)
    _, val, batch_fn = load_data_loaders("imagenet", SimpleNamespace(data=data), context)
    seen, batches = [], 0
    for batch in val:
        _, target = batch_fn(batch=batch, num_classes=1000, mode="val")
        gathered = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([float(len(target))]))  # compute_accuracy_dist
        dist.all_reduce(torch.ones(1))  # reduce_tensor(loss)
        seen += target.topk(1)[1].view(-1).tolist()
        batches += 1
    return {"seen": seen, "batches": batches}


def _rank(rank: int, world: int, root: str, store: str, port: int, out: str) -> None:
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=90))  # fmt: skip
    path = Path(root)
    results = {
        "examples": _examples(path, store, world),
        "timm": _timm(path, store),
        "dali": _dali(path, store, rank, world),
        "official": _official(path, store),
    }
    Path(out, f"{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _launch(world: int, root: Path, store: str, out: Path, deadline_s: float = 300) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_rank, args=(world, str(root), store, port, str(out)),
                                 nprocs=world, join=False, start_method="spawn")  # fmt: skip
    stop = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > stop:
                pytest.fail(f"{world} ranks did not finish in {deadline_s} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((out / f"{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_every_adapters_evaluation_under_torch_distributed(
    trainer_root, sample_store, world, tmp_path
):
    ranks = _launch(world, trainer_root, str(sample_store.path), tmp_path)
    labels = sorted(json.loads(json.dumps(ranks[0]["official"]["seen"])))
    assert len(set(labels)) == N  # one class per image: a label names its sample

    # pytorch/examples: drop_last cuts N mod world samples, evaluated through the dataset
    ex = [r["examples"] for r in ranks]
    assert {r["sampler_len"] for r in ex} == {N // world}
    assert {r["batches"] for r in ex} == {r["len"] for r in ex} == {-(-(N // world) // BATCH)}
    seen = [i for r in ex for i in r["seen"]]
    assert sorted(seen + ex[0]["rest"]) == labels  # every sample exactly once
    assert len(ex[0]["rest"]) == N % world and all(r["rest"] == ex[0]["rest"] for r in ex)
    assert ex[0]["total"] == world * (N // world)

    # timm and DALI's example: padded shards, equal batch counts, every sample seen
    shard = -(-N // world)
    for name in ("timm", "dali"):
        results = [r[name] for r in ranks]
        assert {r["batches"] for r in results} == {r["len"] for r in results}
        assert {r["batches"] for r in results} == {-(-shard // BATCH)}
        assert set(i for r in results for i in r["seen"]) == set(labels)
    assert {r["dali"]["size"] for r in ranks} == {shard}

    # the official trainer: every rank the whole validation set, as its own loader
    for r in ranks:
        assert sorted(r["official"]["seen"]) == labels and r["official"]["batches"] == 5
