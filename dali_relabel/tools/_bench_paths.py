"""The loaders that `dali-relabel bench` compares, one factory per path.

Each factory takes (sample data, store path, parsed arguments) and returns an endless
iterator of batches whose first element is the images. Path a is written from the
behaviour of the ReLabel paper's code (github.com/naver-ai/relabel_imagenet): crop
coordinates as (top, left, height, width), turned into (top, left, bottom, right) and
passed to roi_align as (x1, y1, x2, y2), on maps densified per batch.
"""

from __future__ import annotations

import os

__all__ = ["FACTORIES"]


def _official_loader(data, store, args):
    """The original ReLabel data path, written from the behaviour of the paper's code."""
    import torch
    import torchvision
    from torchvision.ops import roi_align
    from torchvision.transforms import functional as TF

    class RandomResizedCropWithCoords(torchvision.transforms.RandomResizedCrop):
        def __call__(self, img):
            i, j, h, w = self.get_params(img, self.scale, self.ratio)
            coords = (i / img.size[1], j / img.size[0], h / img.size[1], w / img.size[0])
            return TF.resized_crop(img, i, j, h, w, self.size, self.interpolation), coords

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, img):
            coords = None
            for t in self.transforms:
                if isinstance(t, RandomResizedCropWithCoords):
                    img, coords = t(img)
                else:
                    img = t(img)
            return img, coords

    class ImageFolderWithCoordsAndLabelMap(torchvision.datasets.ImageFolder):
        def __init__(self, root, relabel_root, transform):
            super().__init__(root, transform=transform)
            self.relabel_root = relabel_root

        def __getitem__(self, index):
            path, target = self.samples[index]
            rel = "/".join(path.split("/")[-2:]).split(".")[0] + ".pt"
            sample, coords = self.transform(self.loader(path))
            return sample, target, coords, torch.load(os.path.join(self.relabel_root, rel))

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transform = Compose(
        [
            RandomResizedCropWithCoords(size=args.crop_size),
            torchvision.transforms.RandomHorizontalFlip(),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(mean, std),
        ]
    )
    dataset = ImageFolderWithCoordsAndLabelMap(str(data.train), str(data.label_maps), transform)
    loader = _data_loader(dataset, args)
    device = torch.device(args.device)

    def batches():
        while True:
            for images, _target, coords, label_maps_topk in loader:
                n = images.size(0)
                coords = torch.cat(coords, 0).view(4, -1).transpose(1, 0).float()
                coords[:, 2:] += coords[:, :2]  # (top, left, bottom, right), as the paper
                dense = torch.zeros(n, 1000, *label_maps_topk.shape[-2:])
                for one, topk in zip(dense, label_maps_topk, strict=True):
                    one.scatter_(0, topk[1].long(), topk[0])
                dense = dense.to(device)
                boxes = torch.cat(
                    [torch.arange(n).view(n, 1).float(), coords * dense.size(3) - 0.5], 1
                ).to(device)
                targets = torch.softmax(roi_align(dense, boxes, output_size=(1, 1)).squeeze(), 1)
                yield images.to(device, non_blocking=True), targets

    return batches()


def _data_loader(dataset, args):
    """The DataLoader both torchvision paths use: as many workers as the others' threads."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.threads,
        persistent_workers=True,
        drop_last=True,
        pin_memory=args.device == "cuda",
    )


def _torchvision_loader(data, store, args):
    import torch
    import torchvision
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.RandomResizedCrop(args.crop_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    loader = _data_loader(torchvision.datasets.ImageFolder(str(data.train), transform), args)
    device = torch.device(args.device)

    def batches():
        while True:
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device)

    return batches()


def plain_dali_iterator(
    root: str, *, batch_size: int, threads: int, device: str, crop_size: int, drop_last: bool
):
    """The peer every loader is measured against: a plain DALI pipeline, no ReLabel.

    ``readers.file`` over the ImageFolder ``root`` (shuffled), ``decoders.image_random_crop``
    ("mixed" on CUDA), resize, normalize, random mirror, behind DALI's PyTorch iterator
    reset at each epoch's end, as DALI's ImageNet example does.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    gpu = device == "cuda"

    @pipeline_def
    def plain():
        jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="reader")
        images = fn.decoders.image_random_crop(
            jpegs,
            device="mixed" if gpu else "cpu",
            output_type=types.RGB,
            random_area=[0.08, 1.0],
            random_aspect_ratio=[3 / 4, 4 / 3],
        )
        images = fn.resize(images, resize_x=crop_size, resize_y=crop_size)
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
            std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
            mirror=fn.random.coin_flip(),
        )
        return images, labels

    pipe = plain(
        batch_size=batch_size,
        num_threads=threads,
        device_id=0 if gpu else None,
        seed=0,
        prefetch_queue_depth=2,
    )
    pipe.build()
    return DALIGenericIterator(
        pipe,
        ["images", "labels"],
        reader_name="reader",
        last_batch_policy=LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL,
        auto_reset=True,
    )


def _dali_loader(data, store, args):
    iterator = plain_dali_iterator(
        data.train,
        batch_size=args.batch_size,
        threads=args.threads,
        device=args.device,
        crop_size=args.crop_size,
        drop_last=True,
    )

    def batches():
        while True:
            for out in iterator:
                yield out[0]["images"], out[0]["labels"]

    return batches()


def _relabel_loader(memory):
    def make(data, store, args):
        from dali_relabel import LabelMapStore, ReLabelLoader

        maps = LabelMapStore.open(store)
        loader = ReLabelLoader(
            data.train,
            maps,
            batch_size=args.batch_size,
            crop_size=args.crop_size,
            num_threads=args.threads,
            device=args.device,
            drop_last=True,
            targets="soft",
            label_map_memory=memory,
        )

        def batches():
            while True:
                yield from loader

        return batches()

    return make


FACTORIES = {
    "official": _official_loader,
    "torchvision": _torchvision_loader,
    "dali": _dali_loader,
    "relabel_memory": _relabel_loader("auto"),  # host memory on CPU, GPU memory on a GPU
    "relabel_stream": _relabel_loader("stream"),
}
