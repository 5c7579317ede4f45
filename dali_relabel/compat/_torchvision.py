"""ReLabel loaders for torchvision's classification reference scripts (references/classification).

In ``train.py`` of torchvision's references, replace ``load_data(...)`` and the two
``torch.utils.data.DataLoader(...)`` calls with::

    from dali_relabel.compat import load_loaders
    data_loader, data_loader_test, train_sampler, test_sampler = load_loaders(
        args, label_maps="relabel_imagenet.zarr"
    )

``nn.CrossEntropyLoss`` (with or without ``label_smoothing``) accepts the soft targets
as they come. Leave ``--mixup-alpha`` and ``--cutmix-alpha`` at 0: they mix hard labels.
``train_sampler.set_epoch(epoch)``, which the script calls when distributed, selects
the epoch; the test loader yields every image once across processes, so the script's
sample-count check holds.
"""

from __future__ import annotations

import os
from typing import Any

from dali_relabel.loader import ReLabelLoader
from dali_relabel.store import LabelMapStore, open_store

__all__ = ["load_loaders"]


def load_loaders(
    args: Any, label_maps: str | os.PathLike | LabelMapStore, **kwargs: Any
) -> tuple[ReLabelLoader, ReLabelLoader, Any, Any]:
    """(train loader, test loader, train sampler, test sampler) from the script's ``args``.

    Reads ``args.data_path`` (holding ``train/`` and ``val/``), ``args.batch_size``,
    ``args.workers``, ``args.train_crop_size``, ``args.val_crop_size`` and
    ``args.val_resize_size``, as the reference script defines them.

    Args:
        args: the parsed arguments of the reference ``train.py``.
        label_maps: label-map store of the ``train/`` images.
        **kwargs: further :class:`ReLabelLoader` arguments for both loaders.
    """
    store = open_store(label_maps)
    common = {"num_threads": getattr(args, "workers", None) or None, **kwargs}
    train = ReLabelLoader(
        os.path.join(args.data_path, "train"),
        store,
        args.batch_size,
        crop_size=args.train_crop_size,
        **common,
    )
    # hard labels in the store's class indices, the same as the soft targets'
    test = ReLabelLoader(
        os.path.join(args.data_path, "val"),
        store,
        args.batch_size,
        train=False,
        targets="hard",
        crop_size=args.val_crop_size,
        resize_size=args.val_resize_size,
        **common,
    )
    return train, test, train.sampler, test.sampler
