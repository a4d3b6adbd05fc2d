"""The weight of the KL term at each step (the KL optimiser steps on `weight * KL`).

- `blundell` (BLoB, after Blundell et al. 2015): within each cycle of `M` steps (`M` = steps per epoch), step
  `i = 1..M` gets `pi_i = 2^i / (2^(M+1) - 1)`; the weights of a cycle sum to about 1, nearly all of it on the
  last steps of the cycle (`pi_M ~ 1/2`, `pi_(M-1) ~ 1/4`, ...).
- `uniform`: `1 / N` with `N` training questions, the KL share of one example in the per-example ELBO
  `mean NLL + KL / N`.
"""

from __future__ import annotations

import math


def kl_weight(step: int, scheme: str, steps_per_epoch: int, n_train: int) -> float:
    """KL weight of 0-based `step`.

    Example:
        >>> [round(kl_weight(s, "blundell", 3, 12), 4) for s in range(4)]
        [0.1333, 0.2667, 0.5333, 0.1333]
    """
    if scheme == "uniform":
        return 1.0 / n_train
    if scheme != "blundell":
        raise ValueError(f"Expected `scheme` to be 'blundell' or 'uniform', but got {scheme!r}.")
    m = max(1, steps_per_epoch)
    i = step % m + 1
    # 2^i / (2^(m+1) - 1) = 2^(i-m-1) / (1 - 2^-(m+1)), computed without overflow for large m
    return math.ldexp(1.0, i - m - 1) / (1.0 - math.ldexp(1.0, -(m + 1)))
