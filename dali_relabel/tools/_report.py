"""A picture of a store's report (``dali-relabel report -o report.png``).

Histograms of the top-1 target probability and of the target entropy, full image and
random crops side by side, and the folder agreement as bars, from a
:class:`~dali_relabel.labelmaps.LabelMapReport`. Drawn on a matplotlib Figure of its own,
outside pyplot, as :mod:`._show` draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dali_relabel._deps import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dali_relabel.labelmaps import LabelMapReport

__all__ = ["draw_report"]

_FULL, _CROP = "#4c72b0", "#dd8452"


def draw_report(report: LabelMapReport, out: str | Path | None = None) -> Figure:
    """Draw ``report``'s distributions and agreement.

    Args:
        report: from :func:`~dali_relabel.labelmaps.label_map_report`.
        out: write a PNG there. Default: None (only return the figure).

    Returns:
        The matplotlib figure.
    """
    require("matplotlib", extra="tools", needed_by="draw_report")
    from matplotlib.figure import Figure

    from dali_relabel.labelmaps._report import FLAT_TOP1

    hist = report.histograms()
    figures = report.figures()
    agree = report.full_agree is not None
    fig = Figure(figsize=(15 if agree else 10.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 3 if agree else 2, width_ratios=[1, 1, 0.6] if agree else [1, 1])

    for ax, name, xlabel in (
        (axes[0], "top1", "top-1 target probability"),
        (axes[1], "entropy", "target entropy (nats)"),
    ):
        edges = np.asarray(hist[name]["edges"])
        for side, colour, label in (("full_image", _FULL, "full image"), ("crops", _CROP, "crop")):
            counts = np.asarray(hist[name][side])
            ax.stairs(counts / max(1, report.sampled), edges, color=colour, lw=1.6, label=label)
            mean = figures[side]["mean_top1" if name == "top1" else "mean_entropy"]
            ax.axvline(mean, color=colour, ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of sampled images")
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    axes[0].axvspan(0, FLAT_TOP1, color="#c44e52", alpha=0.08, lw=0)
    axes[0].text(FLAT_TOP1, axes[0].get_ylim()[1] * 0.95, " flat", color="#c44e52", va="top")
    axes[0].legend(title="dashed: means", fontsize=8, title_fontsize=8, frameon=False, loc="best")
    axes[0].set_title("sharpness: how much a target puts on its top class", fontsize=9)
    axes[1].set_title("target entropy (0: one class; log C: uniform)", fontsize=9)
    axes[1].axvline(figures["uniform_entropy"], color="grey", lw=1)
    axes[1].text(figures["uniform_entropy"], 0, " uniform", color="grey", rotation=90, va="bottom")

    if agree:
        ax = axes[2]
        names = ["full image", "crop", "cells"]
        values = [
            figures["full_image"]["folder_agreement"],
            figures["crops"]["folder_agreement"],
            figures["cell_folder_agreement"],
        ]
        bars = ax.bar(names, values, color=[_FULL, _CROP, "#55a868"])
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], padding=2)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("fraction")
        ax.set_title("top class = folder class", fontsize=9)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)

    teacher = report.provenance.get("teacher", report.provenance.get("source", ""))
    fig.suptitle(
        f"{Path(report.store).name}: {teacher}, {report.grid[0]}x{report.grid[1]} top-{report.k} "
        f"{report.score_kind}; {report.sampled:,} of {report.total:,} images sampled"
        + ("  -  FLAT TARGETS" if report.flat else ""),
        fontsize=10,
        color="#c44e52" if report.flat else "black",
    )
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig
