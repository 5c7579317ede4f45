"""An image folder listed in a store's class space: one rule for every user of a store.

The loader (:mod:`dali_relabel.loader`) and the label-map report
(:func:`~dali_relabel.labelmaps.label_map_report`) both join an ImageFolder tree with a
store, and a folder's class must be the same store class for both: by the store's class
table (ImageNet's WordNet ids) when it has one, else the sorted folders one to one.
"""

from __future__ import annotations

import os

from dali_relabel.errors import ClassTableError, StoreMismatchError
from dali_relabel.imagefolder import ImageFolderList
from dali_relabel.store._reader import LabelMapStore

__all__ = ["scan_in_store_classes"]


def scan_in_store_classes(root: str | os.PathLike, store: LabelMapStore | None) -> ImageFolderList:
    """The samples under ``root``, class indices in the store's class space.

    With a class table in the store (ImageNet's WordNet ids), a folder's class index is
    its position there; without one, the sorted folders must be the store's classes one
    to one. Raises StoreMismatchError otherwise.

    Args:
        root: the ImageFolder tree.
        store: the label-map store, or None (the folders' own sorted order).
    """
    if store is None:
        return ImageFolderList.scan(root)
    try:
        dataset = ImageFolderList.scan(root, class_names=store.class_names)
    except ClassTableError as e:
        raise StoreMismatchError(f"{e}: label map store {store.path!r} names other classes") from e
    if store.class_names is None and store.num_classes != len(dataset.folders):
        raise StoreMismatchError(
            f"label map store {store.path!r} has num_classes={store.num_classes} and no "
            f"class table, but {str(root)!r} has {len(dataset.folders)} class folders; without "
            "class_names in the store the folders (sorted) must be its classes one to one"
        )
    return dataset
