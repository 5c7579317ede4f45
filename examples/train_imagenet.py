"""Train an ImageNet classifier on ReLabel targets with ReLabelLoader: a short drop-in example.

What changes against a torchvision training script is the loader (one line each for
train and val) and the loss, a cross-entropy against soft targets
(``dali_relabel.SoftTargetCrossEntropy``, ``sum(-targets * log_softmax(logits), 1).mean()``).

``--local`` trains on the paper's localized labels: the loader yields a distribution per
cell of a grid (``targets="local"``), the grid of the model's last feature map, and the
model's classifier is applied to every cell of that map (a ResNet's ``fc`` as a 1x1
convolution), trained with the per-cell loss ``LocalSoftTargetCrossEntropy``. Evaluation
averages the cells' logits, which is the model's own global output (the classifier is
linear, so it commutes with the average pooling).

    # ImageNet, one GPU or torchrun --nproc-per-node 8 ...
    python examples/train_imagenet.py --data /data/imagenet --label-maps relabel_imagenet.zarr
    # a few steps on the real-photo sample data, on the CPU, in a temporary folder
    python examples/train_imagenet.py --sample --steps 3 --crop-size 64 --batch-size 8
    python examples/train_imagenet.py --sample --local --steps 3 --crop-size 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from dali_relabel import LocalSoftTargetCrossEntropy, ReLabelLoader, SoftTargetCrossEntropy


class LocalLogits(nn.Module):
    """A torchvision ResNet whose ``fc`` is applied to every cell of the last feature map:
    logits [B, C, h, w] in training, their mean over the cells (the ResNet's own output)
    in evaluation."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(resnet, "fc", None), nn.Linear):
            raise SystemExit("--local needs a torchvision ResNet (its fc on every cell)")
        self.features = nn.Sequential(*list(resnet.children())[:-2])  # up to the last stage
        self.fc = resnet.fc

    def grid(self, crop_size: int) -> tuple[int, int]:
        """(h, w) of the feature map at ``crop_size``: the loader's local_size."""
        with torch.no_grad():
            shape = self.features(torch.zeros(1, 3, crop_size, crop_size)).shape
        return int(shape[2]), int(shape[3])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = torch.einsum("bchw,kc->bkhw", self.features(images), self.fc.weight)
        cells = cells + self.fc.bias[:, None, None]
        return cells if self.training else cells.mean((2, 3))


def sample_data(folder: Path) -> tuple[Path, Path]:
    """The real-photo sample and its label maps in a store: (train folder, store path)."""
    from dali_relabel.labelmaps import convert
    from dali_relabel.tools import make_sample_data

    data = make_sample_data(folder, images_per_class=8, label_maps=True)
    # in the official release's layout, as convert's default expects
    store = convert(data.label_maps, folder / "maps.zarr", workers=1, progress=False)
    return data.train, Path(store.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="ImageNet root holding train/ (and val/)")
    parser.add_argument("--label-maps", help="label map store of the train/ images")
    parser.add_argument("--sample", action="store_true", help="use the real-photo sample data")
    parser.add_argument("--arch", default="resnet18", help="torchvision model (default resnet18)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="stop each epoch after N steps")
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--local", action="store_true", help="train on per-cell targets")
    args = parser.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # torchrun; ReLabelLoader takes rank and world size from here
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = train_device()

    with tempfile.TemporaryDirectory() as tmp:
        if args.sample:
            train_dir, label_maps = sample_data(Path(tmp))
            val_dir = train_dir
        else:
            if args.data is None or args.label_maps is None:
                parser.error("pass --data and --label-maps, or --sample")
            train_dir, label_maps, val_dir = args.data / "train", args.label_maps, args.data / "val"

        common = {"crop_size": args.crop_size, "memory_format": torch.channels_last}
        model = torchvision.models.get_model(args.arch, num_classes=_num_classes(label_maps))
        criterion: nn.Module = SoftTargetCrossEntropy()
        local = {}
        if args.local:
            model = LocalLogits(model)
            local = {"targets": "local", "local_size": model.grid(args.crop_size)}
            criterion = LocalSoftTargetCrossEntropy()
            print(f"local targets on the model's {local['local_size']} feature map")
        train_loader = ReLabelLoader(train_dir, label_maps, args.batch_size, **common, **local)
        val_loader = None
        if val_dir.is_dir():
            # hard labels; every image exactly once across processes (even_shards=False:
            # evaluate() has no per-batch collective, so ranks may run different numbers of
            # batches); the store's class table gives val's folders the soft targets' classes
            val_loader = ReLabelLoader(
                val_dir,
                train_loader.store,
                args.batch_size,
                train=False,
                targets="hard",
                even_shards=False,
                **common,
            )

        model = model.to(device, memory_format=torch.channels_last)
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        steps = len(train_loader) if args.steps is None else min(args.steps, len(train_loader))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps)

        for epoch in range(args.epochs):
            train_loader.set_epoch(epoch)  # optional: without it epochs count up by themselves
            model.train()
            start = time.perf_counter()
            # islice, not break: a break would make the loader fetch one batch too many
            for step, (images, targets) in enumerate(itertools.islice(train_loader, steps)):
                loss = criterion(model(images), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if step % 100 == 0 or step == steps - 1:
                    rate = (step + 1) * len(images) / (time.perf_counter() - start)
                    print(
                        f"epoch {epoch} step {step + 1}/{steps} loss {loss.item():.4f} "
                        f"{rate:.0f} img/s"
                    )
            if val_loader is not None:
                # the bare module: DDP's forward would sync buffers with every process, and
                # one with no validation batch would never join
                bare = model.module if distributed else model
                print(f"epoch {epoch} val top-1 {evaluate(bare, val_loader, distributed):.2%}")

    if distributed:
        torch.distributed.destroy_process_group()


def _num_classes(label_maps: str | Path) -> int:
    from dali_relabel.store import open_store

    return open_store(label_maps).num_classes


def train_device() -> torch.device:
    if torch.cuda.is_available():  # ReLabelLoader's default device too
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: ReLabelLoader, distributed: bool) -> float:
    model.eval()
    correct = torch.zeros((), device=loader.device)
    seen = 0  # counted on the host: no copy to the GPU per batch
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum()
        seen += len(labels)
    stats = torch.stack([correct, correct.new_tensor(seen)])
    if distributed:
        torch.distributed.all_reduce(stats)
    return (stats[0] / stats[1].clamp(min=1)).item()


if __name__ == "__main__":
    main()
