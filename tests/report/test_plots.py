"""Figures: functions take their inputs, return a Figure, and leave matplotlib's global state alone."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from melora.report.plots import (
    ReliabilityPanel,
    SummaryPoint,
    bin_statistics,
    ece_accuracy_figure,
    reliability_figure,
)


def test_bin_statistics_match_ece_bins():
    counts, conf, acc = bin_statistics([0.05, 0.06, 0.5, 1.0], [1, 0, 1, 1], n_bins=10)
    assert counts.tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]  # right-open bins; 1.0 drawn in the last bin
    assert conf[0] == pytest.approx(0.055) and acc[0] == 0.5 and np.isnan(acc[1])


def test_figures_are_returned_and_rcparams_untouched(tmp_path):
    before = dict(matplotlib.rcParams)
    rng = np.random.default_rng(0)
    panels = [ReliabilityPanel(f"m{i}", "#1f77b4", rng.uniform(0.3, 1, 50), rng.integers(0, 2, 50)) for i in range(5)]
    fig = reliability_figure("task", panels)
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    summary = ece_accuracy_figure("t", [SummaryPoint("m", "#000000", "OBQA", 0.5, 0.1, 0.01, None)])
    assert isinstance(summary, Figure)
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert dict(matplotlib.rcParams) == before
    with pytest.raises(ValueError, match="at least one"):
        reliability_figure("t", [])
