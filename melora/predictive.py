"""Posterior predictive: combine the answer log-probabilities of several posterior samples into one.

`probs` (the default, the posterior predictive) averages probabilities: `log mean_s exp(log p_s)`, computed as
a log-sum-exp in float64 so rare answers keep their precision. `logits` averages the (log-softmax) scores and
renormalises, which is what "averaging logits" means for a read-out over answer tokens; it is offered because
the design brief names it, and results always record which one was used.
"""

from __future__ import annotations

import math

import torch


AVERAGES = ("probs", "logits")


def average_log_probs(log_probs: torch.Tensor, average: str = "probs", dim: int = 0) -> torch.Tensor:
    """Average `log_probs` over the sample dimension `dim`, returning normalised log-probabilities (float64).

    Args:
        log_probs (`torch.Tensor`): normalised log-probabilities with the samples along `dim`
            (e.g. `(S, B, K)` for S samples of B questions with K choices; `-inf` marks absent choices).
        average (`str`): `probs` (log-mean-exp) or `logits` (mean, then log-softmax).
        dim (`int`): the sample dimension.

    Example:
        >>> lp = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
        >>> average_log_probs(lp).exp()
        tensor([0.7000, 0.3000], dtype=torch.float64)
    """
    if average not in AVERAGES:
        raise ValueError(f"Expected `average` to be one of {AVERAGES}, but got {average!r}.")
    x = log_probs.to(torch.float64)
    if average == "probs":
        return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])
    finite = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    mean = finite.mean(dim=dim)
    mean = torch.where(torch.isfinite(x).all(dim=dim), mean, torch.full_like(mean, -math.inf))
    return torch.log_softmax(mean, dim=-1)
