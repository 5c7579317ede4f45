"""How sharp a store's targets are, and how often they agree with the folder labels.

A label map teaches through the targets the loader makes of it: the map pooled over the
crop box, then a softmax over all classes (:func:`~dali_relabel.ops.label_pooling.
relabel_targets`, classes outside the top-k at score 0). When a teacher's logits are
weak (a classifier run far above its training resolution) that softmax comes out nearly
uniform and the targets teach almost nothing, silently. ReLabel (Yun et al., CVPR 2021)
judges its maps by how often they agree with ImageNet's labels; :func:`label_map_report`
measures any store (generated, converted, ensembled) both ways, on a random sample of
its images:

- the top-1 probability and the entropy of the targets of the full image (box
  (0, 0, 1, 1)) and of one RandomResizedCrop per image, drawn and turned into a box by
  the loader's own host code (:mod:`dali_relabel._rrc`, no DALI needed);
- with the image folder: how often the top class of those targets is the folder's class
  (folder -> store class by the store's class names, as the loader maps them), and how
  often each cell's top class is.

Everything is computed in batches with the loader's op; no loop over cells.
``dali-relabel report`` prints :meth:`LabelMapReport.table`, writes
:meth:`LabelMapReport.to_dict` as JSON and draws it with
:func:`~dali_relabel.tools.draw_report`. docs/GENERATE.md ("Checking a store").
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dali_relabel import _checks
from dali_relabel._rrc import crop_inputs, draw_crops, rrc_windows, train_boxes
from dali_relabel.constants import RRC_RATIO, RRC_SCALE
from dali_relabel.errors import (
    ArgumentError,
    ImageDecodeError,
    StoreMismatchError,
)
from dali_relabel.store import LabelMapStore, open_store, scan_in_store_classes

__all__ = [
    "ASSUMED_SIZE",
    "DEFAULT_SAMPLES",
    "FLAT_TOP1",
    "LabelMapReport",
    "label_map_report",
]

#: Images sampled by default: enough for means to +-0.01, fast on any store.
DEFAULT_SAMPLES = 4096
#: Below this mean top-1 probability of full-image targets, a store's targets are flat.
FLAT_TOP1 = 0.1
#: Image size assumed for crops when the images are not given (square, ImageNet-like).
ASSUMED_SIZE = 512
_BINS = 40


# -- the report ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabelMapReport:
    """Per-image figures of a sample of a store's images (see :func:`label_map_report`).

    Attributes:
        store: the store's path.
        provenance: the store's provenance (teacher, resolution, ...).
        num_classes, k, grid, score_kind: the store's.
        images: the image folder, or None.
        total: images that could be sampled (the store's, or those with an image).
        keys: the sampled keys, in store order.
        seed: the sample's seed.
        scale, ratio: the crops' ranges.
        sizes_known: crop windows drawn on the images' real sizes (else on
            :data:`ASSUMED_SIZE` squares).
        boxes: each image's crop box, float32 [n, 4].
        full_top1, crop_top1: the top-1 probability of each image's full-image and crop
            target, float64 [n].
        full_entropy, crop_entropy: their entropies in nats, float64 [n].
        full_agree, crop_agree: whether the target's top class is the folder's, bool [n];
            None without the image folder.
        cell_agree: each image's fraction of cells whose top class is the folder's,
            float64 [n]; None without the image folder.
        without_image: store keys without an image in the folder (not sampled).
        without_map: images in the folder without a map (not sampled).
    """

    store: str
    provenance: dict[str, Any]
    num_classes: int
    k: int
    grid: tuple[int, int]
    score_kind: str
    images: str | None
    total: int
    keys: tuple[str, ...]
    seed: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    sizes_known: bool
    boxes: np.ndarray
    full_top1: np.ndarray
    crop_top1: np.ndarray
    full_entropy: np.ndarray
    crop_entropy: np.ndarray
    full_agree: np.ndarray | None
    crop_agree: np.ndarray | None
    cell_agree: np.ndarray | None
    without_image: int = 0
    without_map: int = 0

    @property
    def sampled(self) -> int:
        return len(self.keys)

    @property
    def mean_top1(self) -> float:
        """Mean top-1 probability of the full-image targets: the headline of sharpness."""
        return float(self.full_top1.mean())

    @property
    def flat(self) -> bool:
        """The full-image targets are close to uniform (mean top-1 below :data:`FLAT_TOP1`)."""
        return self.mean_top1 < FLAT_TOP1

    def figures(self) -> dict[str, Any]:
        """The summary figures (means, quantiles, agreement fractions)."""

        def side(top1: np.ndarray, entropy: np.ndarray, agree: np.ndarray | None) -> dict:
            q10, q50, q90 = np.quantile(top1, [0.1, 0.5, 0.9]).tolist()
            return {
                "mean_top1": float(top1.mean()),
                "median_top1": q50,
                "p10_top1": q10,
                "p90_top1": q90,
                "mean_entropy": float(entropy.mean()),
                "folder_agreement": None if agree is None else float(agree.mean()),
            }

        return {
            "full_image": side(self.full_top1, self.full_entropy, self.full_agree),
            "crops": side(self.crop_top1, self.crop_entropy, self.crop_agree),
            "cell_folder_agreement": (
                None if self.cell_agree is None else float(self.cell_agree.mean())
            ),
            "uniform_entropy": math.log(self.num_classes),
        }

    def warning(self) -> str | None:
        """What to do about flat targets; None when they are not flat."""
        if not self.flat:
            return None
        head = (
            f"the targets are flat: full-image targets put {self.mean_top1:.3f} on their top "
            f"class on average (below {FLAT_TOP1}; uniform over {self.num_classes:,} classes "
            f"is {1 / self.num_classes:.4f}), so they teach little."
        )
        if self.score_kind == "probabilities":
            return (
                f"{head} This store holds probabilities, and the loader pools a map and takes "
                "the softmax as of logits (ReLabel's recipe), which turns scores in [0, 1] "
                "nearly uniform. Make the store of logits (generate's default --scores "
                "logits), or train with ReLabelLoader(..., temperature=T) and a small T "
                "such as 0.05"
            )
        prov = self.provenance
        made = ""
        if prov.get("source") == "dali-relabel generate" and prov.get("resolution"):
            made = f" (this store: {prov.get('teacher')} at {prov['resolution']} px)"
        return (
            f"{head} Run the teacher at its own resolution{made}: `dali-relabel generate` "
            "without --resolution does; or ask for a coarser map with --grid N (each teacher "
            "at N x its stride); or sharpen the targets in training with "
            "ReLabelLoader(..., temperature=T), T < 1"
        )

    def headline(self) -> str:
        """Two lines: sharpness and agreement, for the end of ``generate`` and ``convert``."""
        f = self.figures()
        line = (
            f"targets: top-1 probability {f['full_image']['mean_top1']:.2f} on average for the "
            f"full image, {f['crops']['mean_top1']:.2f} for random crops"
        )
        if self.full_agree is not None:
            line += (
                f"; top class = folder class for {f['full_image']['folder_agreement']:.0%} of "
                f"images, {f['cell_folder_agreement']:.0%} of cells"
            )
        return line + f"\n({self._sample_note()}; `dali-relabel report` draws the distributions)"

    def _sample_note(self) -> str:
        return f"{self.sampled:,} of {self.total:,} images sampled, seed {self.seed}"

    def table(self) -> str:
        """The figures as a text table."""
        f = self.figures()
        full, crop = f["full_image"], f["crops"]
        teacher = self.provenance.get("teacher", self.provenance.get("source", "unknown origin"))
        lines = [
            f"label maps {self.store}: {teacher}, {self.grid[0]}x{self.grid[1]}, top-{self.k} "
            f"{self.score_kind}, {self.num_classes:,} classes",
            f"{self._sample_note()}; one RandomResizedCrop per image (scale {_pair(self.scale)}, "
            f"ratio {_pair(self.ratio)}, as the loader draws them"
            + (
                ""
                if self.sizes_known
                else f", on {ASSUMED_SIZE}x{ASSUMED_SIZE} images: no --images"
            )
            + ")",
            "",
            f"{'':<40}{'full image':>12}{'crops':>12}",
        ]

        def row(name: str, a: str, b: str = "") -> None:
            lines.append(f"{name:<40}{a:>12}{b:>12}")

        row(
            "top-1 target probability: mean", f"{full['mean_top1']:.3f}", f"{crop['mean_top1']:.3f}"
        )
        row("  median", f"{full['median_top1']:.3f}", f"{crop['median_top1']:.3f}")
        row("  10th percentile", f"{full['p10_top1']:.3f}", f"{crop['p10_top1']:.3f}")
        row("  90th percentile", f"{full['p90_top1']:.3f}", f"{crop['p90_top1']:.3f}")
        row(
            f"target entropy (nats; uniform {f['uniform_entropy']:.2f})",
            f"{full['mean_entropy']:.2f}",
            f"{crop['mean_entropy']:.2f}",
        )
        if self.full_agree is None:
            lines.append("folder agreement: not measured (no --images)")
        else:
            row(
                "top class = folder class",
                f"{full['folder_agreement']:.1%}",
                f"{crop['folder_agreement']:.1%}",
            )
            row("cells whose top class = folder class", f"{f['cell_folder_agreement']:.1%}")
            if self.without_image or self.without_map:
                lines.append(
                    f"not sampled: {self.without_image:,} maps without an image, "
                    f"{self.without_map:,} images without a map (`dali-relabel verify` lists them)"
                )
        warning = self.warning()
        if warning:
            lines += ["", f"warning: {warning}"]
        return "\n".join(lines)

    def histograms(self, bins: int = _BINS) -> dict[str, Any]:
        """Histograms of the top-1 probabilities ([0, 1]) and entropies ([0, log C])."""
        top = np.linspace(0.0, 1.0, bins + 1)
        ent = np.linspace(0.0, math.log(self.num_classes), bins + 1)
        return {
            "top1": {
                "edges": top.tolist(),
                "full_image": np.histogram(self.full_top1, top)[0].tolist(),
                "crops": np.histogram(self.crop_top1, top)[0].tolist(),
            },
            "entropy": {
                "edges": ent.tolist(),
                "full_image": np.histogram(self.full_entropy, ent)[0].tolist(),
                "crops": np.histogram(self.crop_entropy, ent)[0].tolist(),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-image arrays, JSON-ready."""
        return {
            "store": self.store,
            "teacher": self.provenance.get("teacher"),
            "source": self.provenance.get("source"),
            "resolution": self.provenance.get("resolution"),
            "grid": list(self.grid),
            "k": self.k,
            "num_classes": self.num_classes,
            "score_kind": self.score_kind,
            "images": self.images,
            "sample": {"sampled": self.sampled, "of": self.total, "seed": self.seed},
            "crops": {
                "per_image": 1,
                "scale": list(self.scale),
                "ratio": list(self.ratio),
                "image_sizes": "read from the files"
                if self.sizes_known
                else f"assumed {ASSUMED_SIZE}x{ASSUMED_SIZE}",
            },
            "not_sampled": {
                "maps_without_image": self.without_image,
                "images_without_map": self.without_map,
            },
            "figures": self.figures(),
            "flat": self.flat,
            "flat_below_mean_top1": FLAT_TOP1,
            "warning": self.warning(),
            "histograms": self.histograms(),
        }


def _pair(values: tuple[float, float]) -> str:
    return f"({values[0]:g}, {values[1]:.3g})"


# -- computing it --------------------------------------------------------------------
def _image_sizes(paths: list[Path]) -> np.ndarray:
    """(H, W) from each file's header, as the loader's graph peeks them (EXIF ignored)."""
    from PIL import Image

    def size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as im:
                return im.height, im.width
        except Exception as e:  # Pillow raises many types for broken files
            raise ImageDecodeError(
                f"cannot read the size of image {str(path)!r} ({type(e).__name__}: {e}); "
                "`dali-relabel verify` and the loader's on_bad_image= deal with bad files"
            ) from e

    with cf.ThreadPoolExecutor(8) as pool:
        return np.array(list(pool.map(size, paths)), dtype=np.int64).reshape(-1, 2)


def _entropy(probs: Any) -> Any:
    import torch

    return torch.special.entr(probs.double()).sum(dim=1)


def label_map_report(
    store: str | os.PathLike | LabelMapStore,
    images: str | os.PathLike | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
    batch_size: int = 512,
    progress: bool = False,
) -> LabelMapReport:
    """Sharpness and folder agreement of a store's targets, on a random sample of images.

    Args:
        store: a label-map store (path or opened), of any origin.
        images: the ImageFolder tree the store labels; gives the folder agreement and the
            crops' image sizes. Default: None (no agreement; crops on square images).
        samples: images sampled (without replacement; all when the store has fewer).
            Default: :data:`DEFAULT_SAMPLES`.
        seed: seed of the sample and of the crops. Default: 0.
        scale: the loader's RandomResizedCrop area range. Default: (0.08, 1).
        ratio: the loader's RandomResizedCrop aspect-ratio range. Default: (3/4, 4/3).
        batch_size: maps pooled at once. Default: 512.
        progress: show a progress bar. Default: False.
    """
    import torch
    from tqdm.auto import tqdm

    from dali_relabel.ops.label_pooling import relabel_targets

    _checks.positive_int("samples", samples)
    _checks.positive_int("batch_size", batch_size)
    seed = _checks.at_least("seed", seed, 0)
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise ArgumentError(
            f"scale must satisfy 0 < min <= max <= 1 and ratio 0 < min <= max, got "
            f"scale={tuple(scale)}, ratio={tuple(ratio)}"
        )
    store = open_store(store)
    if len(store) == 0:
        raise ArgumentError(f"label map store {store.path!r} is empty: nothing to report")

    labels = paths = None
    without_image = without_map = 0
    if images is None:
        rows = np.arange(len(store))
    else:
        dataset = scan_in_store_classes(images, store)
        index_of = {key: i for i, key in enumerate(store.keys)}
        found = np.fromiter((index_of.get(k, -1) for k in dataset.keys), np.int64, len(dataset))
        have = np.flatnonzero(found >= 0)
        if have.size == 0:
            raise StoreMismatchError(
                f"none of the {len(dataset):,} images under {str(images)!r} has a map in label "
                f"map store {store.path!r} (images look like {dataset.keys[0]!r}, maps like "
                f"{store.keys[0]!r}); --images must be the folder the store labels"
            )
        without_map = len(dataset) - have.size
        without_image = len(store) - have.size
        # Store order: the sample is read in order, as chunked stores serve it best.
        order = np.argsort(found[have], kind="stable")
        rows = found[have][order]
        labels = np.asarray(dataset.targets, dtype=np.int64)[have][order]
        paths = [dataset.paths[i] for i in have[order]]

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(samples, len(rows)), replace=False))
    if paths is None:
        sizes = np.full((len(pick), 2), ASSUMED_SIZE, dtype=np.int64)
    else:
        sizes = _image_sizes([paths[i] for i in pick])
    draws = crop_inputs(draw_crops(rng, len(pick), scale, ratio))
    anchors, shapes = rrc_windows(sizes, draws["attempts"], draws["position"], ratio)
    boxes = train_boxes(anchors, shapes, sizes)

    full_top1, crop_top1, full_ent, crop_ent = [], [], [], []
    full_agree, crop_agree, cell_agree = [], [], []
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with tqdm(total=len(pick), unit="maps", desc="report", disable=not progress) as bar:
        for start in range(0, len(pick), batch_size):
            part = pick[start : start + batch_size]
            scores, classes = store.read(rows[part])
            s = torch.from_numpy(scores.astype(np.float32))
            c = torch.from_numpy(classes.astype(np.int64))
            b = len(part)
            full = relabel_targets(s, c, whole.repeat(b, 1), store.num_classes)
            crop = relabel_targets(
                s, c, torch.from_numpy(boxes[start : start + b]), store.num_classes
            )
            for probs, top1, ent in ((full, full_top1, full_ent), (crop, crop_top1, crop_ent)):
                top1.append(probs.max(dim=1).values.double().numpy())
                ent.append(_entropy(probs).numpy())
            if labels is not None:
                label = torch.from_numpy(labels[part])
                full_agree.append((full.argmax(dim=1) == label).numpy())
                crop_agree.append((crop.argmax(dim=1) == label).numpy())
                # each cell's top class: the class of its best stored score
                best = c.gather(1, s.argmax(dim=1, keepdim=True))[:, 0]  # [b, H, W]
                cell_agree.append((best == label[:, None, None]).double().mean(dim=(1, 2)).numpy())
            bar.update(b)

    def cat(parts: list[np.ndarray]) -> np.ndarray | None:
        return np.concatenate(parts) if parts else None

    return LabelMapReport(
        store=str(store.path),
        provenance=dict(store.provenance),
        num_classes=store.num_classes,
        k=store.k,
        grid=tuple(store.grid),
        score_kind=store.score_kind,
        images=None if images is None else str(images),
        total=len(rows),
        keys=tuple(store.keys[i] for i in rows[pick]),
        seed=seed,
        scale=(float(scale[0]), float(scale[1])),
        ratio=(float(ratio[0]), float(ratio[1])),
        sizes_known=paths is not None,
        boxes=boxes,
        full_top1=np.concatenate(full_top1),
        crop_top1=np.concatenate(crop_top1),
        full_entropy=np.concatenate(full_ent),
        crop_entropy=np.concatenate(crop_ent),
        full_agree=cat(full_agree),
        crop_agree=cat(crop_agree),
        cell_agree=cat(cell_agree),
        without_image=without_image,
        without_map=without_map,
    )
