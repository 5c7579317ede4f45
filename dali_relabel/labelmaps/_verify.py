"""Checks of a finished store against what it is used with (``dali-relabel verify``).

The loader refuses images without a label map at construction; :func:`verify_keys` lists
every such image, and the maps without an image, before a training job starts.
"""

from __future__ import annotations

import dataclasses
import os

from dali_relabel.imagefolder import scan_image_folder
from dali_relabel.store import LabelMapStore, open_store

__all__ = ["KeyReport", "verify_keys"]


@dataclasses.dataclass(frozen=True)
class KeyReport:
    """How a store's keys and an image folder's samples match.

    Attributes:
        images: the number of images under the folder.
        maps: the number of label maps in the store.
        without_map: keys of images that have no label map, sorted.
        without_image: keys of label maps that have no image, sorted (fine for a loader:
            a store may label more images than one folder holds).
    """

    images: int
    maps: int
    without_map: list[str]
    without_image: list[str]

    @property
    def ok(self) -> bool:
        """Every image has a label map and every label map an image."""
        return not self.without_map and not self.without_image


def verify_keys(store: str | os.PathLike | LabelMapStore, images: str | os.PathLike) -> KeyReport:
    """Compare the keys of ``store`` with the samples of the ImageFolder tree ``images``.

    Args:
        store: a label-map store (path, URL or opened).
        images: the ImageFolder tree the store labels (e.g. ``imagenet/train``).
    """
    store = open_store(store)
    found = {key for key, _ in scan_image_folder(images)}
    maps = set(store.keys)
    return KeyReport(len(found), len(maps), sorted(found - maps), sorted(maps - found))
