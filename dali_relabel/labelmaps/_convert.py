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
import ctypes
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel import _checks
from dali_relabel._walk import walk_tree
from dali_relabel.constants import IMAGENET_NUM_CLASSES
from dali_relabel.errors import LabelMapFormatError, NotFoundError
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.store import (
    DEFAULT_SHARD_SIZE,
    SCORE_DTYPES,
    LabelMapStore,
    LabelMapWriter,
    finish_output,
    output_folder,
    published,
)

__all__ = ["LAYOUTS", "convert", "find_label_map_files", "load_label_map_file"]

LAYOUTS = ("official", "hw")


def find_label_map_files(src: str | Path) -> list[tuple[str, str]]:
    """(key, path) of every ``.pt`` file under ``src``, sorted as ImageFolder sorts.

    The key is the path relative to ``src`` without its extension, with ``/``. The tree
    is walked as image folders are (:func:`~dali_relabel._walk.walk_tree`): a symlink
    loop is an error naming it.
    """
    root = os.fspath(src)
    if not os.path.isdir(root):
        raise NotFoundError(f"source {root!r} is not a folder of .pt label maps")
    found = [
        (f"{rel}/{name[:-3]}" if rel else name[:-3], f"{rel}/{name}" if rel else name)
        for rel, names in walk_tree(root, (".pt",))
        for name in names
    ]
    if not found:
        raise LabelMapFormatError(f"source {root!r} holds no .pt label maps")
    found.sort(key=lambda item: item[0].split("/"))
    return [(key, os.path.join(root, rel)) for key, rel in found]


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
        ranked = np.sort(classes, axis=0)
        same = ranked[1:] == ranked[:-1]
        repeated = same.any(axis=0)
        if repeated.any():
            y, x = (int(v) for v in np.argwhere(repeated)[0])
            cls = int(ranked[1:, y, x][same[:, y, x]][0])
            raise LabelMapFormatError(
                f"{path}: class {cls} appears more than once among the top-k of cell [:, {y}, "
                f"{x}] ({int(repeated.sum()):,} cells repeat a class); a top-k lists each class "
                "once: the file is damaged or was not written as a top-k"
            )
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
    paths: Sequence[str],
    num_classes: int | None,
    topk: int,
    layout: str,
    score_dtype: str,
    expect: tuple,
    example: str,
) -> tuple[np.ndarray, np.ndarray]:
    largest = float(np.finfo(np.dtype(score_dtype)).max)
    scores, classes = [], []
    for path in paths:
        s, c = load_label_map_file(path, num_classes=num_classes, topk=topk, layout=layout)
        if s.shape != expect:
            raise LabelMapFormatError(
                f"{path}: label map of shape [k, H, W] = {list(s.shape)} (after layout "
                f"{layout!r}) differs from the {list(expect)} of the other files (e.g. "
                f"{example}); all files must share k and grid size"
            )
        if s.size and float(np.abs(s).max()) > largest:
            value = float(s.flat[int(np.abs(s).argmax())])
            raise LabelMapFormatError(
                f"{path}: score {value:.6g} does not fit {score_dtype} (largest "
                f"{largest:,.0f}) and would be stored as inf; convert with --float32 "
                "(score_dtype='float32')"
            )
        scores.append(s)
        classes.append(c)
    return np.stack(scores), np.stack(classes)


def _common_shape(
    files: Sequence[tuple[str, str]], num_classes: int | None, topk: int, layout: str
) -> tuple[tuple[int, ...], str]:
    """The [k, H, W] most of up to 16 files spread over the tree have, and one of them:
    the files are checked against it, so an odd first file is the one named."""
    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(len(files), 16))})
    shapes: dict[tuple[int, ...], list[str]] = {}
    for i in picks:
        path = files[i][1]
        s, _ = load_label_map_file(path, num_classes=num_classes, topk=topk, layout=layout)
        shapes.setdefault(s.shape, []).append(path)
    shape, having = max(shapes.items(), key=lambda item: len(item[1]))
    return shape, having[0]


def _die_with(parent: int) -> None:
    """Reader processes' initializer: exit when the parent dies, whatever kills it."""
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            if os.getppid() != parent:  # it died before the request took effect
                os._exit(1)
            return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


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
    storage_options: Mapping[str, Any] | None = None,
) -> LabelMapStore:
    """Convert a tree of ``.pt`` label maps into a store; resume an interrupted one.

    Killed at any point and run again with the same arguments, the conversion
    completes and equals an uninterrupted one; the store is marked complete only
    when every block is written. An ``s3://`` output is written into a local staging
    folder, then uploaded with ``complete`` set last (:func:`~dali_relabel.store.publish`).

    Args:
        src: folder of ``<wnid>/<stem>.pt`` files.
        out: path of the store to write, or ``s3://bucket/path.zarr``.
        layout: "official" (transpose H/W, see the module docstring) or "hw". Default: "official".
        num_classes: classes of the teacher. Default: 1000 for official files, C for dense maps.
        topk: classes kept per cell from dense maps. Default: 5.
        score_dtype: "float16" or "float32". Default: "float16".
        workers: processes reading files; 0 (or 1) reads them in this process. Default:
            the number of CPUs.
        class_names: class identifiers in index order. Default: ImageNet's WordNet ids when
            num_classes is 1000, else None.
        shard_size: samples per shard and per block. Default: 1024.
        progress: show a progress bar. Default: True.
        storage_options: S3 options of an ``s3://`` output
            (:meth:`~dali_relabel.store.LabelMapStore.open`). Default: None.
    """
    from tqdm.auto import tqdm

    # Every argument is checked before anything is written.
    _checks.one_of("layout", layout, LAYOUTS)
    _checks.one_of("score_dtype", score_dtype, SCORE_DTYPES)
    if num_classes is not None:
        _checks.positive_int("num_classes", num_classes)
    _checks.positive_int("topk", topk)
    workers = max(1, os.cpu_count() or 1) if workers is None else workers
    workers = _checks.at_least("workers", workers, 0)
    files = find_label_map_files(src)
    out, target = output_folder(out, storage_options)  # S3: written here, uploaded at the end
    expect, example = _common_shape(files, num_classes, topk, layout)
    if num_classes is None:
        import torch

        first = torch.load(example, map_location="cpu", weights_only=True)
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
    if target is not None and (finished := published(target, writer.attrs, storage_options)):
        shutil.rmtree(writer.path)  # uploaded by an earlier run: nothing to do
        return finished
    missing = writer.missing_blocks()
    done = len(files) - sum(stop - start for start, stop in missing)
    args: dict[str, Any] = {
        "num_classes": num_classes,
        "topk": topk,
        "layout": layout,
        "score_dtype": score_dtype,
        "expect": expect,
        "example": example,
    }
    with tqdm(
        total=len(files), initial=done, unit="maps", desc="converting", disable=not progress
    ) as bar:
        if workers <= 1:
            for start, stop in missing:
                paths = [p for _, p in files[start:stop]]
                writer.write_block(start, *_load_block(paths, **args))
                bar.update(stop - start)
        else:
            with cf.ProcessPoolExecutor(
                workers, initializer=_die_with, initargs=(os.getpid(),)
            ) as pool:
                futures = {
                    pool.submit(_load_block, [p for _, p in files[s:e]], **args): (s, e)
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
    return finish_output(
        writer.finalize(), target, storage_options=storage_options, progress=progress
    )
