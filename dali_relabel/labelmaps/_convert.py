"""The official ReLabel release (one ``.pt`` per image) into a store (``dali-relabel convert``).

The official release (Yun et al., CVPR 2021; github.com/naver-ai/relabel_imagenet)
holds ``root/<wnid>/<image stem>.pt``: ``torch.save`` of a float32 tensor
[2, k, H, W], ``[0]`` the top-k teacher logits and ``[1]`` their class indices as
floats. Dense per-image maps [C, H, W] are accepted too; their top-k is kept.

Orientation. The official training code builds crop boxes as (top, left, bottom,
right) and passes them to ``roi_align``, which reads (x1, y1, x2, y2): the map's
last axis is indexed by the crop's *vertical* coordinate. To reproduce the
official targets exactly under this library's convention (maps in image
orientation, boxes as x1, y1, x2, y2), ``--layout official`` (the default)
transposes each map on import; ``--layout hw`` keeps the maps as they are, for
sources already in image orientation. docs/FORMAT.md has the derivation.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel import _checks
from dali_relabel.constants import IMAGENET_NUM_CLASSES
from dali_relabel.errors import LabelMapFormatError, NotFoundError
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.store import DEFAULT_SHARD_SIZE, LabelMapStore, LabelMapWriter

__all__ = ["LAYOUTS", "convert", "find_label_map_files", "load_label_map_file"]

LAYOUTS = ("official", "hw")


def find_label_map_files(src: str | Path) -> list[tuple[str, Path]]:
    """(key, path) of every ``.pt`` file under ``src``, sorted as ImageFolder sorts.

    The key is the path relative to ``src`` without its extension, with ``/``.
    """
    root = Path(src)
    if not root.is_dir():
        raise NotFoundError(f"source {str(src)!r} is not a folder of .pt label maps")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.endswith(".pt"):
                found.append((rel / name[: -len(".pt")]).as_posix())
    if not found:
        raise LabelMapFormatError(f"source {str(src)!r} holds no .pt label maps")
    found.sort(key=lambda key: key.split("/"))
    return [(key, root / f"{key}.pt") for key in found]


def load_label_map_file(
    path: str | Path, *, num_classes: int | None, topk: int, layout: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one label-map file; return (scores, classes), each [k, H, W].

    Args:
        path: an official ``.pt`` ([2, k, H, W]) or a dense map ([C, H, W]).
        num_classes: classes of the teacher; None takes C from a dense map.
        topk: classes kept from a dense map (ignored for official files).
        layout: "official" transposes H and W (see the module docstring), "hw" keeps them.
    """
    import torch

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise LabelMapFormatError(
            f"{path}: cannot be read as a tensor file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(tensor, torch.Tensor):
        raise LabelMapFormatError(f"{path}: holds a {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise LabelMapFormatError(f"{path}: dtype {tensor.dtype} is not floating point")
    arr = tensor.detach().numpy()
    if arr.ndim == 4 and arr.shape[0] == 2:
        scores, raw_classes = arr[0], arr[1]
        if not np.isfinite(raw_classes).all() or (raw_classes != np.round(raw_classes)).any():
            raise LabelMapFormatError(f"{path}: class indices [1] are not all integers")
        classes = raw_classes.astype(np.int64)
        limit = IMAGENET_NUM_CLASSES if num_classes is None else num_classes
    elif arr.ndim == 3:
        c = arr.shape[0]
        if num_classes is not None and c != num_classes:
            raise LabelMapFormatError(
                f"{path}: dense map has {c} classes, expected num_classes={num_classes}"
            )
        if topk > c:
            raise LabelMapFormatError(f"{path}: dense map has {c} classes, fewer than k={topk}")
        # Descending by score, as the official release orders each cell.
        order = np.argsort(-arr, axis=0, kind="stable")[:topk]
        scores = np.take_along_axis(arr, order, axis=0)
        classes = order.astype(np.int64)
        limit = c
    else:
        raise LabelMapFormatError(
            f"{path}: shape {list(arr.shape)} is neither official [2, k, H, W] nor dense [C, H, W]"
        )
    if not np.isfinite(scores).all():
        raise LabelMapFormatError(f"{path}: scores hold NaN or inf")
    if classes.size and (classes.min() < 0 or classes.max() >= limit):
        raise LabelMapFormatError(
            f"{path}: class index {int(classes.max() if classes.max() >= limit else classes.min())}"
            f" is outside [0, {limit}); pass --num-classes if the teacher has more classes"
        )
    if layout == "official":
        scores, classes = scores.swapaxes(-1, -2), classes.swapaxes(-1, -2)
    return np.ascontiguousarray(scores), np.ascontiguousarray(classes)


def _load_block(
    paths: Sequence[str], num_classes: int | None, topk: int, layout: str, expect: tuple
) -> tuple[np.ndarray, np.ndarray]:
    scores, classes = [], []
    for path in paths:
        s, c = load_label_map_file(path, num_classes=num_classes, topk=topk, layout=layout)
        if s.shape != expect:
            raise LabelMapFormatError(
                f"{path}: label map of shape [k, H, W] = {list(s.shape)} (after layout "
                f"{layout!r}) differs from the first file's {list(expect)}; all files must share "
                "k and grid size"
            )
        scores.append(s)
        classes.append(c)
    return np.stack(scores), np.stack(classes)


def convert(
    src: str | Path,
    out: str | Path,
    *,
    layout: str = "official",
    num_classes: int | None = None,
    topk: int = 5,
    score_dtype: str = "float16",
    workers: int | None = None,
    class_names: Sequence[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> LabelMapStore:
    """Convert a tree of ``.pt`` label maps into a store; resume an interrupted one.

    Killed at any point and run again with the same arguments, the conversion
    completes and equals an uninterrupted one; the store is marked complete only
    when every block is written.

    Args:
        src: folder of ``<wnid>/<stem>.pt`` files.
        out: path of the store to write.
        layout: "official" (transpose H/W, see the module docstring) or "hw". Default: "official".
        num_classes: classes of the teacher. Default: 1000 for official files, C for dense maps.
        topk: classes kept per cell from dense maps. Default: 5.
        score_dtype: "float16" or "float32". Default: "float16".
        workers: processes reading files. Default: the number of CPUs.
        class_names: class identifiers in index order. Default: ImageNet's WordNet ids when
            num_classes is 1000, else None.
        shard_size: samples per shard and per block. Default: 1024.
        progress: show a progress bar. Default: True.
    """
    from tqdm.auto import tqdm

    _checks.one_of("layout", layout, LAYOUTS)
    if num_classes is not None:
        _checks.positive_int("num_classes", num_classes)
    files = find_label_map_files(src)
    first_scores, _ = load_label_map_file(
        files[0][1], num_classes=num_classes, topk=topk, layout=layout
    )
    expect = first_scores.shape
    if num_classes is None:
        import torch

        first = torch.load(files[0][1], map_location="cpu", weights_only=True)
        num_classes = int(first.shape[0]) if first.ndim == 3 else IMAGENET_NUM_CLASSES
    if class_names is None and num_classes == IMAGENET_NUM_CLASSES:
        class_names = imagenet_wnids()
    writer = LabelMapWriter.create(
        out,
        [key for key, _ in files],
        num_classes=num_classes,
        k=expect[0],
        grid=expect[1:],
        score_dtype=score_dtype,
        class_names=class_names,
        provenance={"source": str(Path(src).resolve()), "converted_by": "dali-relabel convert"},
        layout=layout,
        shard_size=shard_size,
    )
    missing = writer.missing_blocks()
    workers = max(1, os.cpu_count() or 1) if workers is None else workers
    _checks.positive_int("workers", workers)
    done = len(files) - sum(stop - start for start, stop in missing)
    args: dict[str, Any] = {"num_classes": num_classes, "topk": topk, "layout": layout}
    with tqdm(
        total=len(files), initial=done, unit="maps", desc="converting", disable=not progress
    ) as bar:
        if workers == 1:
            for start, stop in missing:
                paths = [str(p) for _, p in files[start:stop]]
                writer.write_block(start, *_load_block(paths, expect=expect, **args))
                bar.update(stop - start)
        else:
            with cf.ProcessPoolExecutor(workers) as pool:
                futures = {
                    pool.submit(
                        _load_block, [str(p) for _, p in files[s:e]], expect=expect, **args
                    ): (s, e)
                    for s, e in missing
                }
                try:
                    for future in cf.as_completed(futures):
                        start, stop = futures[future]
                        writer.write_block(start, *future.result())
                        bar.update(stop - start)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    return writer.finalize()
