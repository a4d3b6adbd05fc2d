"""Accuracy and calibration metrics over choice-normalised probabilities, shared by training and lm-eval tasks.

Every function takes `probs`, one probability vector per question over that question's own choices (the
vectors may differ in length: ARC has 3 to 5 choices), and `labels`, the gold indices. Nothing here guesses
whether an input is logits or probabilities: callers normalise first (`normalise_log_likelihoods`).

ECE is the top-label, L1, equal-width-bin calibration error that torchmetrics' `CalibrationError` and the BLoB
code compute (15 bins by default). Bin edges: a confidence `c` falls in bin `k` when `k/B <= c < (k+1)/B`
(right-open), and `c == 1.0` has a bin of its own, as in torchmetrics' `torch.bucketize(..., right=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


ECE_BINS = 15
NLL_FLOOR = 1e-12
"""Probabilities are clipped at this value before the log, so one certain mistake gives a large finite NLL."""


def normalise_log_likelihoods(log_likelihoods: Sequence[float]) -> np.ndarray:
    """Softmax over one question's choice log-likelihoods (float64): the choice-normalised probabilities."""
    x = np.asarray(log_likelihoods, dtype=np.float64)
    x = x - x.max()
    p = np.exp(x)
    return p / p.sum()


def _validate(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> list[np.ndarray]:
    if len(probs) != len(labels):
        raise ValueError(f"Expected as many probability vectors as labels, but got {len(probs)} and {len(labels)}.")
    out = []
    for i, (p, y) in enumerate(zip(probs, labels)):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 1 or not 0 <= int(y) < len(p):
            raise ValueError(f"Expected label {y} of item {i} to index its {len(p)} choice probabilities.")
        out.append(p)
    return out


def top_label(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the top choice, 1.0 if the top choice is gold) per item; ties go to the first choice."""
    ps = _validate(probs, labels)
    conf = np.array([p.max() for p in ps], dtype=np.float64)
    correct = np.array([float(int(p.argmax()) == int(y)) for p, y in zip(ps, labels)], dtype=np.float64)
    return conf, correct


def accuracy(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Fraction of items whose most probable choice is the gold one."""
    return float(top_label(probs, labels)[1].mean())


def nll(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Mean negative log probability of the gold choice (natural log)."""
    ps = _validate(probs, labels)
    return float(np.mean([-np.log(max(p[int(y)], NLL_FLOOR)) for p, y in zip(ps, labels)]))


def brier(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Mean over items of `sum_k (p_k - onehot_k)^2` (range [0, 2]), as lm-eval's `brier_score`."""
    ps = _validate(probs, labels)
    return float(np.mean([((p - np.eye(len(p))[int(y)]) ** 2).sum() for p, y in zip(ps, labels)]))


def calibration_error_from_top_label(
    confidences: Sequence[float], correct: Sequence[float], n_bins: int = ECE_BINS
) -> float:
    """ECE from (confidence, correct) pairs: `sum_b n_b/N * |acc_b - conf_b|` over equal-width bins.

    Example:
        >>> calibration_error_from_top_label([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], n_bins=15)
        0.4
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"Expected `n_bins` to be a positive int, but got {n_bins!r}.")
    conf = np.asarray(confidences, dtype=np.float64)
    acc = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        raise ValueError("Expected at least one item to compute a calibration error, but got none.")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges, conf, side="right") - 1  # right-open bins; 1.0 lands in bin n_bins
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() * abs(acc[mask].mean() - conf[mask].mean())
    return float(total / conf.size)


def expected_calibration_error(
    probs: Sequence[Sequence[float]], labels: Sequence[int], n_bins: int = ECE_BINS
) -> float:
    """Top-label L1 ECE with `n_bins` equal-width bins (see the module docstring for the bin edges)."""
    return calibration_error_from_top_label(*top_label(probs, labels), n_bins=n_bins)


def summarize(probs: Sequence[Sequence[float]], labels: Sequence[int], n_bins: int = ECE_BINS) -> dict[str, float]:
    """`acc`, `ece`, `nll`, `brier` of a set of predictions, the four numbers every task reports."""
    return {
        "acc": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
    }
