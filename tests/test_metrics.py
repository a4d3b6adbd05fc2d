"""Metrics against hand-computed values and against netcal's ECE (an independent implementation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from melora import metrics
from melora.predictive import average_log_probs


def test_hand_computed_values():
    probs = [[0.7, 0.2, 0.1], [0.4, 0.6], [0.5, 0.3, 0.2]]
    labels = [0, 0, 2]
    assert metrics.accuracy(probs, labels) == pytest.approx(1 / 3)
    assert metrics.nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.2)) / 3)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.6**2 + 0.6**2) + (0.5**2 + 0.3**2 + 0.8**2)) / 3
    assert metrics.brier(probs, labels) == pytest.approx(brier)
    # confidences 0.7 (correct), 0.6 (wrong), 0.5 (wrong): bins [0.667,0.733), [0.6,0.667), [0.467,0.533)
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx((0.3 + 0.6 + 0.5) / 3)


def test_bin_edges_are_right_open_and_one_has_its_own_bin():
    # 0.4 and 7/15 ≈ 0.4667 sit in different bins; with 15 bins the edge 7/15 opens the next bin.
    assert metrics.calibration_error_from_top_label([0.4, 7 / 15], [1, 0]) == pytest.approx((0.6 + 7 / 15) / 2)
    # 1.0 is not pooled with 0.95 (both in [14/15, 1) otherwise)
    assert metrics.calibration_error_from_top_label([1.0, 0.95], [1, 0]) == pytest.approx(0.95 / 2)
    with pytest.raises(ValueError, match="n_bins"):
        metrics.calibration_error_from_top_label([0.5], [1], n_bins=0)


def test_ece_matches_netcal():
    from netcal.metrics import ECE

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, size=500)
    ours = metrics.expected_calibration_error(list(probs), list(labels), n_bins=15)
    assert ours == pytest.approx(ECE(bins=15).measure(probs, labels), abs=1e-9)


def test_label_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="label 3"):
        metrics.accuracy([[0.5, 0.5]], [3])


def test_normalise_log_likelihoods():
    p = metrics.normalise_log_likelihoods([-1000.0, -1000.0 + math.log(3)])
    assert p == pytest.approx([0.25, 0.75])


def test_average_probs_and_logits():
    lp = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]))  # (S=2, B=1, K=2)
    assert average_log_probs(lp).exp()[0].tolist() == pytest.approx([0.7, 0.3])
    mean_logits = (lp[0, 0] + lp[1, 0]) / 2
    assert average_log_probs(lp, "logits").exp()[0].tolist() == pytest.approx(torch.softmax(mean_logits, -1).tolist())
    with_pad = torch.tensor([[[-0.1, -math.inf]], [[-0.2, -math.inf]]]).log_softmax(-1)
    assert average_log_probs(with_pad, "logits")[0, 1] == -math.inf
    with pytest.raises(ValueError, match="average"):
        average_log_probs(lp, "median")
