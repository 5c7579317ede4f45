"""``dali-relabel ensemble``: one label-map store from several teachers' stores.

A teacher ensemble averages the teachers' dense class scores per cell and keeps the
top-k of the mean (ReLabel's machine annotators, averaged). Stores hold only each cell's
top-k, so each is first densified. A class outside a store's top-k counts as score 0 in
that store, which is what :func:`~dali_relabel.ops.label_pooling.label_pooling` (and the
paper's ``get_relabel``) does with the same map. The choice keeps the ensemble linear:
pooling the ensemble's dense map over a box equals the mean of the teachers' pooled maps.
The top-k is taken among the classes that some input lists in that cell (its
*candidates*): a class no teacher ranked never displaces one they did, even where the
ranked ones have negative logits and the unranked ones a mean of 0. So the ensemble of a
store with itself is that store. Only when a cell has fewer than k candidates do the
remaining places go to unranked classes, at their mean of 0.

Logits are averaged as logits; ``scores="probabilities"`` averages distributions (a logits
store becomes one by a softmax over its densified cell, missing classes at 0, the
distribution :func:`~dali_relabel.ops.label_pooling.relabel_targets` gives for a one-cell
box). Maps of different grids are resampled to one grid by bilinear interpolation of
the dense maps (``align_corners=False``, cell centres at ``(i + 0.5) / H``: the
convention of the maps and of LabelPooling), before averaging.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError, StoreMismatchError
from dali_relabel.store import (
    SCORE_KINDS,
    LabelMapStore,
    LabelMapWriter,
    finish_output,
    open_store,
    output_folder,
    published,
)

if TYPE_CHECKING:
    import torch

__all__ = ["densify", "ensemble_label_maps", "resample"]

#: Samples densified at once: 64 x 1000 classes x 15 x 15 float32 is 58 MB per store
#: (the sum is float64: 115 MB).
_CHUNK = 64


def densify(scores: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sparse top-k maps [n, k, H, W] -> dense [n, C, H, W], classes outside the top-k at 0.

    Args:
        scores: Tensor[n, k, H, W] of any float dtype; the result has its dtype
            (float16/bfloat16 widen to float32).
        classes: integer Tensor[n, k, H, W] in [0, num_classes).
        num_classes: C.
    """
    import torch

    dtype = scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float32
    n, _, h, w = scores.shape
    dense = torch.zeros(n, num_classes, h, w, dtype=dtype, device=scores.device)
    # scatter_add, not scatter: a repeated class within a cell (never written by this
    # package, possible in imported maps) adds up as densifying in LabelPooling does.
    return dense.scatter_add_(1, classes.long(), scores.to(dtype))


def resample(dense: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Dense maps [n, C, H, W] -> [n, C, *grid], bilinear, align_corners=False."""
    import torch.nn.functional as F

    if tuple(dense.shape[-2:]) == tuple(grid):
        return dense
    return F.interpolate(dense, size=tuple(grid), mode="bilinear", align_corners=False)


def _check_keys(stores: Sequence[LabelMapStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        if other.keys == first.keys:
            continue
        a, b = set(first.keys), set(other.keys)
        if a == b:
            i = next(
                i for i, (x, y) in enumerate(zip(first.keys, other.keys, strict=True)) if x != y
            )
            raise StoreMismatchError(
                f"stores {first.path!r} and {other.path!r} hold the same {len(a):,} keys in "
                f"another order (first difference at sample {i}: {first.keys[i]!r} vs "
                f"{other.keys[i]!r}); label maps of one image folder share its sorted order"
            )
        only_a, only_b = sorted(a - b), sorted(b - a)
        parts = [
            f"{len(only)} only in {path!r} (first: {', '.join(only[:3])})"
            for only, path in ((only_a, first.path), (only_b, other.path))
            if only
        ]
        raise StoreMismatchError(
            f"stores {first.path!r} ({len(first):,} keys) and {other.path!r} ({len(other):,} "
            f"keys) label different images: {'; '.join(parts)}. Ensemble stores generated from "
            "the same image folder"
        )


def _check_classes(stores: Sequence[LabelMapStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        if other.num_classes != first.num_classes:
            raise StoreMismatchError(
                f"stores {first.path!r} and {other.path!r} have {first.num_classes:,} and "
                f"{other.num_classes:,} classes; an ensemble needs teachers of one class set"
            )
        if other.class_names != first.class_names:
            if first.class_names is None or other.class_names is None:
                detail = "one records class names and the other does not"
            else:
                i = next(
                    i
                    for i, (x, y) in enumerate(
                        zip(first.class_names, other.class_names, strict=True)
                    )
                    if x != y
                )
                detail = (
                    f"class {i} is {first.class_names[i]!r} in one and "
                    f"{other.class_names[i]!r} in the other"
                )
            raise StoreMismatchError(
                f"stores {first.path!r} and {other.path!r} name their classes differently "
                f"({detail}); an ensemble needs one class order"
            )


def _describe(store: LabelMapStore) -> dict[str, Any]:
    """An input's provenance entry: which teacher, which weights, at which resolution."""
    prov = store.provenance
    entry = {
        # Resolved: the same inputs named from another folder are the same ensemble.
        "path": str(store.path) if "://" in str(store.path) else str(Path(store.path).resolve()),
        "teacher": prov.get("teacher", prov.get("source", "unknown")),
        "weights": prov.get("weights"),
        "weights_sha256": prov.get("weights_sha256"),
        "resolution": prov.get("resolution"),
        "score_kind": store.score_kind,
        "k": store.k,
        "grid": list(store.grid),
    }
    # An ensemble's weights and resolutions are recorded per member, not at the top.
    for name in ("teachers", "inputs"):
        if name in prov:
            entry[name] = prov[name]
    return entry


def ensemble_label_maps(
    stores: Sequence[str | Path | LabelMapStore],
    out: str | Path,
    *,
    scores: str | None = None,
    grid: tuple[int, int] | None = None,
    k: int | None = None,
    score_dtype: str | None = None,
    shard_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> LabelMapStore:
    """Average the label maps of several stores per cell and keep the top-k of the mean.

    Resumable like ``generate``: the same call after an interruption writes the missing
    blocks only.

    Args:
        stores: the teachers' stores, with equal keys, class counts and class names.
        out: the store to write: a folder, or ``s3://bucket/path`` (written locally, then
            uploaded with ``complete`` last, as ``convert`` does).
        scores: average "logits" or "probabilities" (logits stores are softmaxed first;
            probabilities cannot be averaged as logits). Default: "logits" when every store
            holds logits, else "probabilities".
        grid: (H, W) of the result. Default: the finest of the inputs (largest H, largest W).
        k: classes kept per cell. Default: the largest k of the inputs.
        score_dtype: "float16" or "float32". Default: float32 when an input is float32,
            else float16.
        shard_size: samples per block of ``out``. Default: the first store's.
        device: where densifying and averaging run. Default: "cpu".
        progress: show a progress bar. Default: True.
        storage_options: S3 options of the inputs and of an ``s3://`` output
            (:meth:`~dali_relabel.store.LabelMapStore.open`). Default: None.
    """
    import torch
    from tqdm.auto import tqdm

    if not stores:
        raise ArgumentError("ensemble needs at least one store")
    device = _checks.device("device", device)
    opened = [open_store(s, storage_options) for s in stores]
    out, target = output_folder(out, storage_options)  # S3: written here, uploaded at the end
    _check_keys(opened)
    _check_classes(opened)
    kinds = [s.score_kind for s in opened]
    if scores is None:
        scores = "logits" if all(kind == "logits" for kind in kinds) else "probabilities"
    _checks.one_of("scores", scores, SCORE_KINDS)
    if scores == "logits" and "probabilities" in kinds:
        path = opened[kinds.index("probabilities")].path
        raise ArgumentError(
            f"store {path!r} holds probabilities, which cannot be averaged as logits; use "
            "--scores probabilities"
        )
    grid = (
        (max(s.grid[0] for s in opened), max(s.grid[1] for s in opened))
        if grid is None
        else (int(grid[0]), int(grid[1]))
    )
    if min(grid) < 1:
        raise ArgumentError(f"grid must be (H, W) with H, W >= 1, got {grid}")
    num_classes = opened[0].num_classes
    k = max(s.k for s in opened) if k is None else int(k)
    if not 1 <= k <= num_classes:
        raise ArgumentError(f"k must be in [1, {num_classes}], got {k}")
    if score_dtype is None:
        wide = any(s.score_dtype == np.float32 for s in opened)
        score_dtype = "float32" if wide else "float16"
    inputs = [_describe(s) for s in opened]
    provenance: dict[str, Any] = {
        "source": "dali-relabel ensemble",
        "teacher": " + ".join(str(i["teacher"]) for i in inputs),
        "inputs": inputs,
        "ensemble": f"mean of {scores} per cell",
        "missing_classes": "a class outside a store's top-k counts as score 0, as in "
        "LabelPooling"
        + (" (softmax over the densified cell)" if scores == "probabilities" else "")
        + "; the top-k is taken among the classes some store ranks in the cell",
        "resample": "bilinear on dense maps, align_corners=False",
        "k": k,
        "grid": list(grid),
    }
    writer = LabelMapWriter.create(
        out,
        opened[0].keys,
        num_classes=num_classes,
        k=k,
        grid=grid,
        score_dtype=score_dtype,
        score_kind=scores,
        class_names=opened[0].class_names,
        provenance=provenance,
        shard_size=shard_size or int(opened[0].attrs.get("shard_size", 1024)),
    )
    if target is not None and (finished := published(target, writer.attrs, storage_options)):
        shutil.rmtree(writer.path)  # uploaded by an earlier run: nothing to do
        return finished
    missing = writer.missing_blocks()
    total = sum(b - a for a, b in missing)
    with tqdm(total=total, unit="maps", desc="ensemble", disable=not progress) as bar:
        for start, stop in missing:
            block_scores = np.empty((stop - start, k, *grid), np.float32)
            block_classes = np.empty((stop - start, k, *grid), np.int32)
            for a in range(start, stop, _CHUNK):
                b = min(stop, a + _CHUNK)
                mean, ranked = _mean_dense(opened, np.arange(a, b), scores, grid, device)
                top = mean.masked_fill(~ranked, -math.inf).topk(k, dim=1)
                values = top.values.masked_fill(top.values == -math.inf, 0.0)  # unranked: 0
                block_scores[a - start : b - start] = values.cpu().numpy()
                block_classes[a - start : b - start] = top.indices.to(torch.int32).cpu().numpy()
                bar.update(b - a)
            writer.write_block(start, block_scores, block_classes)
    return finish_output(
        writer.finalize(), target, storage_options=storage_options, progress=progress
    )


def _mean_dense(
    stores: Sequence[LabelMapStore],
    indices: np.ndarray,
    kind: str,
    grid: tuple[int, int],
    device: str | torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean dense map [n, C, *grid] and where a class is ranked by some input (bool)."""
    import torch

    total = ranked = None
    for store in stores:
        scores, classes = store.read_torch(indices, device)
        dense = densify(scores, classes, store.num_classes)
        if kind == "probabilities" and store.score_kind == "logits":
            dense = dense.softmax(dim=1)
        listed = densify(torch.ones_like(scores, dtype=torch.float32), classes, store.num_classes)
        dense, listed = resample(dense, grid), resample(listed, grid) > 0
        # float64 sums: the mean of n equal float32 maps is exactly that map
        total = dense.double() if total is None else total.add_(dense)
        ranked = listed if ranked is None else ranked | listed
    return (total / len(stores)).to(dense.dtype), ranked
