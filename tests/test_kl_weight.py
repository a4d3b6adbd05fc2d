from __future__ import annotations

import math

import pytest

from melora.kl_weight import kl_weight


def test_blundell_cycle_sums_to_one_and_peaks_at_its_end():
    m = 50
    weights = [kl_weight(s, "blundell", m, 200) for s in range(m)]
    assert sum(weights) == pytest.approx(1 - 1 / (2 ** (m + 1) - 1))
    assert weights[-1] == pytest.approx(0.5, rel=1e-6) and weights[-2] == pytest.approx(0.25, rel=1e-6)
    assert kl_weight(m, "blundell", m, 200) == weights[0]  # the next cycle starts again


def test_blundell_does_not_overflow_for_long_epochs():
    w = kl_weight(1238, "blundell", 1239, 4957)
    assert math.isfinite(w) and w == pytest.approx(0.5)


def test_uniform_and_unknown():
    assert kl_weight(7, "uniform", 10, 400) == 1 / 400
    with pytest.raises(ValueError, match="scheme"):
        kl_weight(0, "cosine", 10, 400)
