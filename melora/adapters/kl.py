"""KL terms of the Bayesian adapters: pure formulas, and the model-level sum used in the training loss.

Typical use, after the task loss (weighting, e.g. by 1/N or a KL schedule, is the training script's job):

```py
nll = model(**batch).loss
loss = nll + kl_weight * kl_divergence(model)  # KL summed over every adapted layer
```

Both formulas are computed in float32 or wider whatever the model dtype (Me-LoRA: float32, or float64 for float64
inputs; BLoB: float64, as its reference code does). `kl_divergence` returns float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from melora.adapters.base import CONFIG_ATTR, BayesianLinearVariant


KL_VARIANCES = ("paper", "exact")
# Floor on Omega = H*H before its log: log(1e-12) = -27.6 keeps the KL finite when an entry of H reaches 0 (where the
# H*H parametrisation has zero gradient anyway); below it the log term stops pushing Omega up.
OMEGA_FLOOR = 1e-12
# BLoB's constants, as its reference code uses them.
_BLOB_EPS = 1e-6


def melora_kl(
    mean: torch.Tensor,
    std_factor: torch.Tensor,
    lora_a: torch.Tensor,
    prior_std: float = 0.2,
    noise: float = 0.0,
    variance: str = "paper",
) -> torch.Tensor:
    """Me-LoRA's KL term for one layer (paper eq. 8; eq. 7 when `noise = 0`).

    `KL = 1 / (2 (sigma_p + eps)^2) * (||M A||_F^2 + V) - sum_ij log Omega_ij`, with `Omega = H * H` (elementwise).
    `V` is the paper's `||Omega |A| ||_F^2` (`variance="paper"`), an upper bound of the total variance of
    `Q = C A`, or that exact variance `sum_ij sum_k Omega_ik^2 A_kj^2 = sum((Omega**2) @ (A**2))` (`"exact"`).
    As in the paper, the constants of a Gaussian KL are dropped (they do not change the gradient).

    Args:
        mean (`torch.Tensor`): `M`, `(r, r)`.
        std_factor (`torch.Tensor`): `H`, `(r, r)`; the std of `C` is `Omega = H * H`.
        lora_a (`torch.Tensor`): `A`, `(r, n)`.
        prior_std (`float`): `sigma_p`.
        noise (`float`): `eps`, drawn from U(0, 1) per training step in eq. 8; 0 gives eq. 7.
        variance (`str`): `"paper"` or `"exact"`.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs).
    """
    if variance not in KL_VARIANCES:
        raise ValueError(f"Expected `variance` to be one of {KL_VARIANCES}, but got {variance!r}.")
    dtype = torch.promote_types(mean.dtype, torch.float32)
    m, h, a = mean.to(dtype), std_factor.to(dtype), lora_a.to(dtype)
    omega = h * h  # (r, r)
    mean_term = (m @ a).square().sum()  # ||M A||_F^2
    if variance == "paper":
        var_term = (omega @ a.abs()).square().sum()  # ||Omega |A| ||_F^2
    else:
        var_term = (omega.square() @ a.square()).sum()  # sum_ij Var[(C A)_ij]
    log_omega = torch.log(omega.clamp_min(OMEGA_FLOOR))
    return (mean_term + var_term) / (2.0 * (prior_std + noise) ** 2) - log_omega.sum()


def blob_kl(mean: torch.Tensor, std: torch.Tensor, prior_std: float = 0.2) -> torch.Tensor:
    """BLoB's KL term for one layer, as its reference code computes it, in float64.

    `KL = sum_ij [log(beta + 1e-6) - log(sigma_ij + 1e-6) + (sigma_ij^2 + mu_ij^2) / (2 beta^2 + 1e-6) - 1/2]`, the
    KL of `N(mu, sigma^2)` from the prior `N(0, beta^2)` with BLoB's stabilising 1e-6 terms.

    Args:
        mean (`torch.Tensor`): `mu`, the mean of A, `(r, n)`.
        std (`torch.Tensor`): `sigma = rho^2`, `(r, n)`.
        prior_std (`float`): `beta`.

    Returns:
        A float64 scalar tensor.
    """
    mu, sigma = mean.to(torch.float64), std.to(torch.float64)
    beta = torch.tensor(prior_std, dtype=torch.float64)
    terms = (
        torch.log(beta + _BLOB_EPS)
        - torch.log(sigma + _BLOB_EPS)
        + (sigma.square() + mu.square()) / (2 * beta**2 + _BLOB_EPS)
        - 0.5
    )
    return terms.sum()


def kl_divergence(
    model: nn.Module, adapter_names: str | Sequence[str] | None = None, noise: float | None = None
) -> torch.Tensor | float:
    """Sum of the KL terms of every Me-LoRA and BLoB layer of `model` (a sum over layers, not a mean).

    Shaped like PEFT's `LoraModel._get_kasa_loss`: `loss = nll + kl_divergence(model)`.

    Args:
        model (`nn.Module`): a PEFT model (or any module) holding Me-LoRA/BLoB layers.
        adapter_names (`str` or `Sequence[str]`, *optional*): adapters to include; `None` means the active adapters of
            each layer.
        noise (`float`, *optional*): Me-LoRA's prior-std noise `eps` for this call, used by adapters whose config has
            `prior_noise=True`. `None` draws `eps ~ U(0, 1)` once per call from torch's global RNG (paper eq. 8),
            shared by all layers. Adapters with `prior_noise=False` always use 0 (eq. 7). BLoB ignores it.

    Returns:
        A float32 scalar tensor, or `0.0` if no layer matches.
    """
    if isinstance(adapter_names, str):
        adapter_names = [adapter_names]
    total: torch.Tensor | float = 0.0
    for module in model.modules():
        variants = getattr(module, "lora_variant", None)
        if not variants:
            continue
        names = module.active_adapters if adapter_names is None else adapter_names
        for name in names:
            variant = variants.get(name)
            if not isinstance(variant, BayesianLinearVariant):
                continue
            if noise is None and getattr(getattr(module, CONFIG_ATTR)[name], "prior_noise", False):
                noise = float(torch.rand(()))
            term = variant.kl(module, name, 0.0 if noise is None else noise)
            total = total + term.to(torch.float32)
    return total
