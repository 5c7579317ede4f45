"""ImageNet-1k class identifiers and names, shipped with the package (public data).

``data/imagenet_classes.tsv`` lists the 1,000 classes in index order: the WordNet
id (the folder name of ImageNet's train/ tree) and a human-readable name.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["imagenet_class_names", "imagenet_wnids"]


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files("dali_relabel").joinpath("data/imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((wnid, name) for wnid, name in rows)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 WordNet ids in ImageNet-1k index order (sorted, as ImageFolder sorts)."""
    return tuple(wnid for wnid, _ in _table())


def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 readable class names in ImageNet-1k index order."""
    return tuple(name for _, name in _table())
