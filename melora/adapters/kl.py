"""KL terms of the Bayesian adapters: pure formulas, and the model-level sum used in the training loss.

Typical use, after the task loss (weighting, e.g. by 1/N or a KL schedule, is the training script's job):

```py
nll = model(**batch).loss
loss = nll + kl_weight * kl_divergence(model)  # KL summed over every adapted layer
```

Both formulas are computed in float32 or wider whatever the model dtype (Me-LoRA: float32, or float64 for float64
inputs; BLoB: float64, as its reference code does). `kl_divergence` returns float32.

The training loop needs the KL's gradient with respect to a few small tensors per layer, every step. Autograd over
one small graph per layer costs more than the formulas themselves (a dozen tiny kernels and nodes per layer), so
`kl_divergence_with_grads` evaluates the same KL and its gradients in closed form, over all layers of one shape at
once (`melora_kl_and_grads`, `blob_kl_and_grads` take stacked `(L, ...)` tensors). Tests hold both against autograd.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

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


def melora_kl_and_grads(
    mean: torch.Tensor,
    std_factor: torch.Tensor,
    lora_a: torch.Tensor,
    prior_std: float = 0.2,
    noise: float = 0.0,
    variance: str = "paper",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`melora_kl` summed over stacked layers, and its gradients with respect to `M`, `H` and `A`, in closed form.

    With `c = 1 / (2 (sigma_p + eps)^2)`, `Q = M A`, `Omega = H * H`:
    `dKL/dM = 2c Q A^T`; `dKL/dA = 2c M^T Q + dV/dA`; `dKL/dH = 2 H (dV/dOmega - 1/Omega)`, the `1/Omega` only where
    `Omega` is above `OMEGA_FLOOR` (as the clamp's gradient). Paper variance, `P = Omega |A|`:
    `dV/dOmega = 2c P |A|^T`, `dV/dA = 2c sign(A) (Omega^T P)`; exact variance: `dV/dOmega = 2c Omega (1 (A^2)^T)`,
    `dV/dA = 2c A ((Omega^2)^T 1)`.

    Args:
        mean (`torch.Tensor`): `M`, `(..., r, r)`.
        std_factor (`torch.Tensor`): `H`, `(..., r, r)`.
        lora_a (`torch.Tensor`): `A`, `(..., r, n)`.
        prior_std, noise, variance: as in `melora_kl`.

    Returns:
        The KL summed over the leading dims (float32, float64 for float64 inputs), and the gradients shaped and typed
        like `mean`, `std_factor` and `lora_a`.
    """
    if variance not in KL_VARIANCES:
        raise ValueError(f"Expected `variance` to be one of {KL_VARIANCES}, but got {variance!r}.")
    dtype = torch.promote_types(mean.dtype, torch.float32)
    m, h, a = mean.to(dtype), std_factor.to(dtype), lora_a.to(dtype)
    c = 1.0 / (2.0 * (prior_std + noise) ** 2)
    omega = h * h  # (..., r, r)
    q = m @ a  # (..., r, n)
    if variance == "paper":
        abs_a = a.abs()
        p = omega @ abs_a  # (..., r, n)
        var_term = p.square().sum()
        grad_omega = (2.0 * c) * (p @ abs_a.transpose(-1, -2))  # (..., r, r)
        grad_a_var = (2.0 * c) * a.sign() * (omega.transpose(-1, -2) @ p)  # (..., r, n)
    else:
        a2, omega2 = a.square(), omega.square()
        var_term = (omega2 @ a2).sum()
        grad_omega = (2.0 * c) * omega * a2.sum(-1).unsqueeze(-2)  # (..., r, r): sum_j A_kj^2 along column k
        grad_a_var = (2.0 * c) * a * omega2.sum(-2).unsqueeze(-1)  # (..., r, n): sum_i Omega_ik^2 along row k
    above = omega >= OMEGA_FLOOR
    log_omega = torch.log(omega.clamp_min(OMEGA_FLOOR))
    grad_omega = grad_omega - torch.where(above, 1.0 / omega.clamp_min(OMEGA_FLOOR), torch.zeros_like(omega))
    kl = c * (q.square().sum() + var_term) - log_omega.sum()
    grad_m = (2.0 * c) * (q @ a.transpose(-1, -2))
    grad_a = (2.0 * c) * (m.transpose(-1, -2) @ q) + grad_a_var
    grad_h = 2.0 * h * grad_omega
    return kl, (grad_m.to(mean.dtype), grad_h.to(std_factor.dtype), grad_a.to(lora_a.dtype))


def blob_kl_and_grads(
    mean: torch.Tensor, rho: torch.Tensor, prior_std: float = 0.2
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`blob_kl` (`sigma = rho^2`) summed over stacked layers, and its gradients for `mu` and `rho`, in closed form.

    `dKL/dmu = 2 mu / (2 beta^2 + 1e-6)`; `dKL/drho = 2 rho (2 sigma / (2 beta^2 + 1e-6) - 1 / (sigma + 1e-6))`,
    in float64 like the KL.

    Returns:
        The float64 KL summed over every element, and the gradients shaped and typed like `mean` and `rho`.
    """
    mu, r = mean.to(torch.float64), rho.to(torch.float64)
    sigma = r.square()
    denom = 2.0 * prior_std**2 + _BLOB_EPS
    kl = (
        math.log(prior_std + _BLOB_EPS) * sigma.numel()
        - torch.log(sigma + _BLOB_EPS).sum()
        + (sigma.square() + mu.square()).sum() / denom
        - 0.5 * sigma.numel()
    )
    grad_mu = 2.0 * mu / denom
    grad_rho = 2.0 * r * (2.0 * sigma / denom - 1.0 / (sigma + _BLOB_EPS))
    return kl, (grad_mu.to(mean.dtype), grad_rho.to(rho.dtype))


def kl_divergence_with_grads(
    model: nn.Module,
    adapter_names: str | Sequence[str] | None = None,
    noise: float | None = None,
    layers: Sequence[nn.Module] | None = None,
) -> tuple[torch.Tensor | float, dict[torch.Tensor, torch.Tensor]]:
    """`kl_divergence(model, ...)` and its gradient with respect to every parameter it depends on, without autograd.

    Layers whose KL tensors share a shape, dtype, device, variant and config are stacked and evaluated together by
    the variant's closed form (`BayesianLinearVariant.kl_and_grads`): a handful of kernels per group of layers
    instead of a graph per layer.

    Args:
        model, adapter_names, noise: as in `kl_divergence`.
        layers (`Sequence[nn.Module]`, *optional*): the modules of `model` that hold Bayesian adapters, when the
            caller keeps them (a training loop calls this every step; walking every module each time is wasted).

    Returns:
        The float32 KL, detached (`0.0` if no layer matches), and a dict mapping each parameter to its gradient (same
        shape and dtype; free to modify in place).
    """
    groups: dict[tuple[Any, ...], tuple[type[BayesianLinearVariant], Any, list[tuple[torch.Tensor, ...]]]] = {}
    modules = model.modules() if layers is None else dict.fromkeys(layers)  # each layer once
    for module, name, variant, config in _bayesian_adapters(modules, adapter_names):
        noise = _prior_noise(noise, config)
        tensors = variant.kl_tensors(module, name)
        key = (type(variant), id(config), *((t.shape, t.dtype, t.device) for t in tensors))
        groups.setdefault(key, (type(variant), config, []))[2].append(tensors)
    total: torch.Tensor | float = 0.0
    grads: dict[torch.Tensor, torch.Tensor] = {}
    with torch.no_grad():  # no graph: the gradients are the formulas' outputs
        for variant_type, config, members in groups.values():
            stacked = [torch.stack(column) for column in zip(*members)]  # each (L, ...)
            kl, stacked_grads = variant_type.kl_and_grads(stacked, config, 0.0 if noise is None else noise)
            total = total + kl.to(torch.float32)
            for column, grad in zip(zip(*members), stacked_grads):
                grads.update(zip(column, grad.unbind(0)))
    return total, grads


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
    total: torch.Tensor | float = 0.0
    for module, name, variant, config in _bayesian_adapters(model.modules(), adapter_names):
        noise = _prior_noise(noise, config)
        term = variant.kl(module, name, 0.0 if noise is None else noise)
        total = total + term.to(torch.float32)
    return total


def _bayesian_adapters(
    modules: Iterable[nn.Module], adapter_names: str | Sequence[str] | None
) -> Iterator[tuple[nn.Module, str, BayesianLinearVariant, Any]]:
    """`(layer, adapter name, variant, config)` of each Me-LoRA/BLoB adapter in `modules`: `adapter_names`, or each
    layer's active adapters."""
    if isinstance(adapter_names, str):
        adapter_names = [adapter_names]
    for module in modules:
        variants = getattr(module, "lora_variant", None)
        if not variants:
            continue
        for name in module.active_adapters if adapter_names is None else adapter_names:
            variant = variants.get(name)
            if isinstance(variant, BayesianLinearVariant):
                yield module, name, variant, getattr(module, CONFIG_ATTR)[name]


def _prior_noise(noise: float | None, config: Any) -> float | None:
    """The call's prior-std noise: drawn from U(0, 1) at the first adapter that uses it, if the caller gave none."""
    if noise is None and getattr(config, "prior_noise", False):
        return float(torch.rand(()))
    return noise
