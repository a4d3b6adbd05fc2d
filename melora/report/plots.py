"""Reliability diagrams and the ECE-vs-accuracy summary, drawn with matplotlib's object API.

Every function takes all its inputs and returns a `matplotlib.figure.Figure`; nothing touches `pyplot` or the global
`rcParams`, so the figures are the same whatever the caller's matplotlib state. Save with `fig.savefig(path)`.

Reliability diagram: the confidences (top-choice probabilities) are binned exactly as ECE bins them
(`melora.metrics`: 15 equal-width right-open bins; a confidence of exactly 1.0 is drawn in the last bin); each bar is
the accuracy of a bin, the hatched part the gap to the bin's mean confidence, and the histogram beneath shows the share
of documents per bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from melora.metrics import ECE_BINS, calibration_error_from_top_label


MAX_PANELS_PER_ROW = 4
GAP_EDGE = "#333333"


@dataclass(frozen=True)
class ReliabilityPanel:
    """The data of one small multiple: one method on one task (seeds pooled).

    Attributes:
        label (`str`): method label.
        colour (`str`): bar colour.
        confidences (`np.ndarray`): top-choice probability per document `(N,)`.
        correct (`np.ndarray`): 1.0 where the top choice is gold `(N,)`.
    """

    label: str
    colour: str
    confidences: np.ndarray
    correct: np.ndarray


@dataclass(frozen=True)
class SummaryPoint:
    """One point of the ECE-vs-accuracy figure (raw units; drawn in percent).

    Attributes:
        method (`str`): method label (one colour and legend entry per method).
        colour (`str`): its colour.
        task (`str`): the column title written beside the point.
        acc (`float`): mean accuracy.
        ece (`float`): mean ECE.
        acc_std (`float | None`): std of accuracy over seeds.
        ece_std (`float | None`): std of ECE over seeds.
    """

    method: str
    colour: str
    task: str
    acc: float
    ece: float
    acc_std: float | None = None
    ece_std: float | None = None


def bin_statistics(
    confidences: Sequence[float], correct: Sequence[float], n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: document count, mean confidence and accuracy (NaN for empty bins), each `(n_bins,)`.

    The bins are ECE's (right-open, equal width); a confidence of 1.0 is counted in the last bin.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    acc = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)  # (N,)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)  # (n_bins,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / counts
        mean_acc = np.bincount(bins, weights=acc, minlength=n_bins) / counts
    return counts, mean_conf, mean_acc


def reliability_figure(title: str, panels: Sequence[ReliabilityPanel], n_bins: int = ECE_BINS) -> Figure:
    """Small multiples of reliability diagrams (one per method) with their confidence histograms.

    Args:
        title (`str`): the figure title (task and base model).
        panels (`Sequence[ReliabilityPanel]`): one per method, in row order.
        n_bins (`int`): number of bins (ECE's 15 by default).

    Returns:
        `Figure`: 2 rows per line of panels (diagram over histogram).
    """
    if not panels:
        raise ValueError("Expected at least one reliability panel, but got none.")
    ncols = min(len(panels), MAX_PANELS_PER_ROW)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(max(3.2 * ncols, 4.8), 4.4 * nrows), layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    width = 1.0 / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    for i, panel in enumerate(panels):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        hist = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        counts, mean_conf, mean_acc = bin_statistics(panel.confidences, panel.correct, n_bins)
        filled = counts > 0
        bar_style = {"width": width, "lw": 0.5}
        ax.bar(centres[filled], mean_acc[filled], color=panel.colour, edgecolor="black", label="accuracy", **bar_style)
        gap_bottom = np.minimum(mean_acc, mean_conf)[filled]
        gap = np.abs(mean_conf - mean_acc)[filled]
        ax.bar(
            centres[filled],
            gap,
            bottom=gap_bottom,
            color="none",
            edgecolor=GAP_EDGE,
            hatch="///",
            label="gap",
            **bar_style,
        )
        ax.plot([0, 1], [0, 1], ls="--", color="#444444", lw=1)
        ece = calibration_error_from_top_label(panel.confidences, panel.correct, n_bins=n_bins)
        acc = float(np.mean(panel.correct))
        stats = f"ACC {100 * acc:.1f}%  ECE {100 * ece:.1f}%  (n={len(panel.correct)})"
        ax.set_title(f"{panel.label}\n{stats}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelbottom=False, labelsize=8)
        if c == 0:
            ax.set_ylabel("accuracy", fontsize=9)
        if i == 0:
            ax.legend(loc="upper left", fontsize=7, frameon=False)
        hist.bar(centres, counts / max(counts.sum(), 1.0), width=width, color=panel.colour, edgecolor="black", lw=0.5)
        hist.set_xlabel("confidence", fontsize=9)
        hist.tick_params(labelsize=8)
        if c == 0:
            hist.set_ylabel("share", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def ece_accuracy_figure(title: str, points: Sequence[SummaryPoint]) -> Figure:
    """ECE against accuracy, one colour per method and one point per task (error bars: std over seeds).

    Args:
        title (`str`): figure title.
        points (`Sequence[SummaryPoint]`): the points.

    Returns:
        `Figure`: one axes; lower right is better (accurate and calibrated).
    """
    if not points:
        raise ValueError("Expected at least one point, but got none.")
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    seen = set()
    for p in points:
        ax.errorbar(
            100 * p.acc,
            100 * p.ece,
            xerr=None if p.acc_std is None else 100 * p.acc_std,
            yerr=None if p.ece_std is None else 100 * p.ece_std,
            fmt="o",
            color=p.colour,
            ms=6,
            capsize=2,
            label=None if p.method in seen else p.method,
        )
        seen.add(p.method)
        ax.annotate(p.task, (100 * p.acc, 100 * p.ece), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel("ACC (%) ↑")
    ax.set_ylabel("ECE (%) ↓")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11)
    return fig
