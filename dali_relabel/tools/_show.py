"""A picture of one image's label map, and of a crop's targets (``dali-relabel show``).

The image is drawn with each cell of its label map coloured by the cell's top class
(a legend names the classes), so that one sees where the teacher puts which class. With a
crop box, the box is drawn too and, beside the image, the crop's top-5 training targets
as ReLabel computes them (:func:`~dali_relabel.ops.label_pooling.relabel_targets`:
ROIAlign of the map over the box, then softmax). Drawn on a matplotlib Figure of its
own, outside pyplot: no backend switched, no figure left open in a notebook or a loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dali_relabel._deps import require
from dali_relabel.errors import ArgumentError, NotFoundError
from dali_relabel.imagefolder import IMG_EXTENSIONS
from dali_relabel.imagenet import imagenet_class_names, imagenet_wnids
from dali_relabel.store import LabelMapStore, open_store

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["class_labels", "parse_box", "picture_path", "show_label_map"]

#: Classes given their own colour (tab10 without its grey); the other cells stay uncoloured.
_MAX_LEGEND = 9


def parse_box(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """A crop box "x1,y1,x2,y2" (normalized to [0, 1], image orientation) as four floats."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ArgumentError(f"box must be four numbers x1,y1,x2,y2 in [0, 1], got {text!r}")
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ArgumentError(
            f"box must satisfy 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 (normalized x1,y1,x2,y2 "
            f"of the image, x to the right, y down), got {text!r}"
        )
    return x1, y1, x2, y2


def picture_path(out: str | Path, key: str) -> Path:
    """Where :func:`show_label_map` writes for ``out``: into an existing folder as
    ``<key with / as __>.png``; a name without an extension gets ``.png`` (matplotlib
    would add it silently, and the file would not be where the name says)."""
    out = Path(out)
    if out.is_dir():
        return out / f"{key.replace('/', '__')}.png"
    return out if out.suffix else out.with_name(out.name + ".png")


def class_labels(store: LabelMapStore) -> list[str]:
    """Readable class names: ImageNet names for ImageNet WordNet ids, else the recorded
    names, else the class indices."""
    names = store.class_names
    if names is None:
        return [str(i) for i in range(store.num_classes)]
    if tuple(names) == imagenet_wnids():
        return [f"{name.split(',')[0]} ({i})" for i, name in enumerate(imagenet_class_names())]
    return list(names)


def _find_image(images: Path, key: str) -> Path:
    folder = (images / key).parent
    stem = Path(key).name
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.stem == stem and entry.suffix.lower() in IMG_EXTENSIONS:
                return entry
    raise NotFoundError(
        f"no image for key {key!r} under {str(images)!r} (looked for {folder / stem!s}.*); "
        "--images must be the folder the store was generated from (class folders under it)"
    )


def show_label_map(
    store: str | Path | LabelMapStore,
    images: str | Path,
    key: str,
    *,
    box: str | Sequence[float] | None = None,
    out: str | Path | None = None,
    alpha: float = 0.5,
) -> Figure:
    """Draw ``key``'s image with its label map's top class per cell, and a crop's targets.

    Args:
        store: a label-map store (path or opened).
        images: the ImageFolder tree the store was made from.
        key: the sample key, e.g. "n02124075/n02124075_3".
        box: a crop, normalized (x1, y1, x2, y2) or "x1,y1,x2,y2"; draws it and its pooled
            top-5 targets. Default: None.
        out: write the picture there: a file (a name without an extension gets ".png")
            or an existing folder (see :func:`picture_path`). Default: None (only return
            the figure).
        alpha: opacity of the class overlay. Default: 0.5.

    Returns:
        The matplotlib figure.
    """
    matplotlib = require("matplotlib", extra="tools", needed_by="show_label_map")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.ticker import MaxNLocator

    from dali_relabel.labelmaps import decode_image

    store = open_store(store)
    bbox = None if box is None else parse_box(box)
    scores, classes = store.read([store.index(key)])
    image = decode_image(_find_image(Path(images), key)).permute(1, 2, 0).numpy()
    top = classes[0, 0].astype(np.int64)  # [H, W], the best class of every cell
    labels = class_labels(store)
    gh, gw = top.shape
    ih, iw = image.shape[:2]

    found, counts = np.unique(top, return_counts=True)
    order = found[np.argsort(-counts, kind="stable")]
    shown = order[:_MAX_LEGEND]
    palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    colour = {int(c): palette[i] for i, c in enumerate(shown)}
    grey = (0.75, 0.75, 0.75)
    overlay = np.zeros((gh, gw, 4))
    for y in range(gh):
        for x in range(gw):
            if int(top[y, x]) in colour:
                overlay[y, x] = (*colour[int(top[y, x])], alpha)

    fig = Figure(figsize=(12 if bbox else 8.5, 6.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1.6, 1]) if bbox else [fig.subplots()]
    ax = axes[0]
    ax.imshow(image)
    extent = (0, iw, ih, 0)
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    for x in np.linspace(0, iw, gw + 1):
        ax.axvline(x, color="white", lw=0.4, alpha=0.6)
    for y in np.linspace(0, ih, gh + 1):
        ax.axhline(y, color="white", lw=0.4, alpha=0.6)
    ax.set_xlim(0, iw)
    ax.set_ylim(ih, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    area = dict(zip(found.tolist(), counts.tolist(), strict=True))

    def cells(n: int) -> str:
        return f"{n} cell" + ("" if n == 1 else "s")

    handles = [
        Patch(color=colour[int(c)], label=f"{labels[int(c)]}: {cells(area[int(c)])}") for c in shown
    ]
    if len(order) > len(shown):
        rest = sum(area[int(c)] for c in order[len(shown) :])
        handles.append(
            Patch(
                facecolor="none",
                edgecolor=grey,
                label=f"{len(order) - len(shown)} other classes: {cells(rest)}",
            )
        )
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, -0.01),
        ncol=2,
        fontsize=8,
        frameon=False,
        title="top class per cell",
        title_fontsize=9,
    )
    teacher = store.provenance.get("teacher", "")
    ax.set_title(
        f"{key}   ({gh}x{gw} map, top-{store.k} {store.score_kind}"
        + (f", {teacher}" if teacher else "")
        + ")",
        fontsize=10,
    )

    if bbox is not None:
        x1, y1, x2, y2 = bbox
        ax.add_patch(
            Rectangle(
                (x1 * iw, y1 * ih),
                (x2 - x1) * iw,
                (y2 - y1) * ih,
                fill=False,
                edgecolor="yellow",
                lw=2.5,
            )
        )
        probs = _targets(scores, classes, bbox, store.num_classes)
        best = np.argsort(-probs, kind="stable")[:5]
        bar_ax = axes[1]
        names = [labels[int(c)] for c in best][::-1]
        values = probs[best][::-1]
        bars = bar_ax.barh(names, values, color=[colour.get(int(c), grey) for c in best][::-1])
        bar_ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=3, fontsize=9)
        bar_ax.xaxis.set_major_locator(MaxNLocator(4))
        bar_ax.set_xlim(0, 1.15 * max(1e-6, float(values.max())))
        bar_ax.set_xlabel("target probability")
        bar_ax.set_title(
            f"crop ({x1:g}, {y1:g}, {x2:g}, {y2:g}): top-5 ReLabel targets", fontsize=10
        )
        bar_ax.tick_params(axis="y", labelsize=9)
        for side in ("top", "right"):
            bar_ax.spines[side].set_visible(False)
    if out is not None:
        fig.savefig(picture_path(out, key), dpi=110)
    return fig


def _targets(scores: np.ndarray, classes: np.ndarray, box: Any, num_classes: int) -> np.ndarray:
    import torch

    from dali_relabel.ops.label_pooling import relabel_targets

    probs = relabel_targets(
        torch.from_numpy(scores.astype(np.float32)),
        torch.from_numpy(classes.astype(np.int64)),
        torch.tensor([box], dtype=torch.float32),
        num_classes,
    )
    return probs[0].double().numpy()
