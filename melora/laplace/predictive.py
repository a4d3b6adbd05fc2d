"""The linearised (GLM) Laplace predictive over the answer-token logits: moments, probit and Monte Carlo.

Linearising the answer logits `z(theta)` `(K,)` around `theta*` under `q(theta) = N(theta*, P^-1)`
(`melora.laplace.posterior`) gives Gaussian logits

    z ~ N(z(theta*), J P^-1 J^T),   J = dz/dtheta (K x p),

(Immer et al., 2021; Laplace-LoRA's `glm` predictive). `P^-1` is block-diagonal over LoRA factors, and each block
is `(U_G (x) U_A) diag(1 / (g_i a_j + delta)) (U_G (x) U_A)^T`, so with the per-choice Jacobian of a factor
`J_c = sum_t g_{t,c} a_t^T` `(out, in)` rotated into its eigenbasis, `R_c = U_G^T J_c U_A`,

    cov[c, c'] = sum_W sum_{i,j} R_c[i, j] R_c'[i, j] / (g_i a_j + delta).

`J_c` is computed exactly (summed over positions, no K-FAC approximation) from one backward pass per choice: `K`
backward passes per batch (`glm_moments`). The cost per batch is a forward plus `K` backwards plus, per factor,
`O(B K (out * T * in + out^2 in + out in^2))` for the rotations; no `p x p` matrix is formed.

Predictive probabilities over the question's choices (`samples` in the `melora` lm-eval model):

- probit (`samples=0`): `softmax(mu / sqrt(1 + pi/8 diag(cov)))` (the multi-class probit approximation, as
  laplace-torch's `link_approx="probit"`);
- Monte Carlo (`samples=S`): `S` logit draws `mu + L eps` (`L L^T = cov`, by a symmetric eigendecomposition so a
  singular covariance is fine), each softmaxed, and the **probabilities** averaged (`log mean_s softmax(z_s)`), as
  Laplace-LoRA does. Averaging the sampled logits instead (the `bayesian-lora` package's choice) would return
  `softmax(mu)` up to noise and lose the posterior. Each row's draws come from its own CPU generator seeded with
  that row's seed, so results do not depend on the batch composition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from melora.errors import AdapterError
from melora.laplace.capture import LoraLinear, capture_lora, lora_linears
from melora.laplace.kfac import answer_logits, masked_log_softmax
from melora.laplace.posterior import KronPosterior
from melora.readout import ChoiceBatch


@dataclass
class GLMMoments:
    """Mean and covariance of the linearised answer logits of a batch.

    Attributes:
        mean (`torch.Tensor`): `(B, K)` MAP answer logits (0 on padded choices).
        cov (`torch.Tensor`): `(D, B, K, K)` logit covariance for each of `D` prior precisions (0 on padded
            choices' rows and columns).
        choice_mask (`torch.Tensor`): `(B, K)` True on real choices.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    choice_mask: torch.Tensor


def matched_linears(model: nn.Module, posterior: KronPosterior) -> list[LoraLinear]:
    """The model's LoRA factors, checked to be exactly those of the posterior, with the same shapes.

    Raises:
        AdapterError: a factor is missing on either side or has another shape (a posterior fitted on another
            adapter or base model).
    """
    linears = lora_linears(model)
    names = {lin.name for lin in linears}
    missing, extra = sorted(set(posterior.factors) - names), sorted(names - set(posterior.factors))
    if missing or extra:
        raise AdapterError(
            f"The Laplace posterior does not match the adapter: factors only in the posterior {missing[:3]}, only "
            f"in the model {extra[:3]}."
        )
    for lin in linears:
        f = posterior.factors[lin.name]
        shape = (f.grad_eigvals.numel(), f.act_eigvals.numel())
        if shape != lin.shape:
            raise AdapterError(f"Laplace factor '{lin.name}' is {shape}, but the adapter's weight is {lin.shape}.")
    return linears


def glm_moments(
    model: nn.Module,
    batch: ChoiceBatch,
    posterior: KronPosterior,
    prior_precisions: Sequence[float] | None = None,
    linears: list[LoraLinear] | None = None,
) -> GLMMoments:
    """Mean and covariance of the linearised answer logits of `batch` (see the module docstring).

    Args:
        model (`nn.Module`): the PEFT model with the MAP LoRA adapter, in eval mode.
        batch (`ChoiceBatch`): letter-format batch on the model's device.
        posterior (`KronPosterior`): the fitted posterior, on the model's device.
        prior_precisions (`Sequence[float]`, *optional*): the `D` values of `delta` to return covariances for
            (default: the posterior's own); several values cost one set of backward passes in all.
        linears (`list[LoraLinear]`, *optional*): `matched_linears(model, posterior)`, if already computed.
    """
    deltas = [posterior.prior_precision] if prior_precisions is None else list(prior_precisions)
    linears = linears if linears is not None else matched_linears(model, posterior)
    n_choices = batch.choice_ids.shape[1]
    rotated: dict[str, list[torch.Tensor]] = {lin.name: [] for lin in linears}
    with capture_lora(model, linears) as cap, torch.enable_grad():
        z = answer_logits(model, batch)  # (B, K)
        for c in range(n_choices):
            grads = cap.output_grads(z[:, c].sum(), retain_graph=c < n_choices - 1)
            for name, g in grads.items():
                f = posterior.factors[name]
                jac = torch.einsum("bto,bti->boi", g.float(), cap.inputs[name].float())  # (B, out, in)
                rotated[name].append(f.grad_eigvecs.T @ jac @ f.act_eigvecs)  # (B, out, in)
    cov = torch.zeros(len(deltas), len(batch), n_choices, n_choices, device=z.device)  # (D, B, K, K)
    for name, parts in rotated.items():
        r = torch.stack(parts, dim=1)  # (B, K, out, in)
        lam = posterior.factors[name].eigvals  # (out, in)
        for d, delta in enumerate(deltas):
            cov[d] += torch.einsum("bkoi,bloi->bkl", r / (lam + delta), r)  # (B, K, K)
    pair = batch.choice_mask[:, :, None] & batch.choice_mask[:, None, :]  # (B, K, K)
    cov = cov.masked_fill(~pair, 0.0)
    return GLMMoments(mean=z.detach(), cov=cov, choice_mask=batch.choice_mask)


def probit_log_probs(mean: torch.Tensor, cov: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
    """Probit-approximated predictive `log softmax(mean / sqrt(1 + pi/8 diag(cov)))` `(..., B, K)` (float64)."""
    var = torch.diagonal(cov, dim1=-2, dim2=-1).double()  # (..., B, K)
    scaled = mean.double() / torch.sqrt(1.0 + math.pi / 8.0 * var)
    return masked_log_softmax(scaled, choice_mask)


def mc_log_probs(
    mean: torch.Tensor, cov: torch.Tensor, choice_mask: torch.Tensor, n_samples: int, seeds: Sequence[int]
) -> torch.Tensor:
    """Monte-Carlo predictive `log mean_s softmax(mean + L eps_s)` `(B, K)` in float64, one seed per row.

    Args:
        mean (`torch.Tensor`): `(B, K)` logit means.
        cov (`torch.Tensor`): `(B, K, K)` logit covariances.
        choice_mask (`torch.Tensor`): `(B, K)` True on real choices.
        n_samples (`int`): draws per row (>= 1).
        seeds (`Sequence[int]`): one seed per row; row `b` draws from `torch.Generator().manual_seed(seeds[b])`.
    """
    if n_samples < 1:
        raise ValueError(f"Expected `n_samples` to be a positive int, but got {n_samples!r}.")
    if len(seeds) != mean.shape[0]:
        raise ValueError(f"Expected one seed per row ({mean.shape[0]}), but got {len(seeds)}.")
    vals, vecs = torch.linalg.eigh(cov.double().cpu())  # (B, K), (B, K, K)
    root = vecs * vals.clamp_min(0).sqrt()[:, None, :]  # (B, K, K): root @ root^T = cov
    eps = torch.stack(
        [
            torch.randn(n_samples, mean.shape[1], generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds
        ]
    )  # (B, S, K)
    logits = mean.double().cpu()[:, None, :] + eps @ root.transpose(1, 2)  # (B, S, K)
    log_p = masked_log_softmax(logits, choice_mask.cpu()[:, None, :])  # (B, S, K)
    return (torch.logsumexp(log_p, dim=1) - math.log(n_samples)).to(mean.device)  # (B, K)


def predictive_log_probs(
    moments: GLMMoments, samples: int, seeds: Sequence[int] | None = None, index: int = 0
) -> torch.Tensor:
    """Predictive log-probabilities `(B, K)` (float64): probit for `samples=0`, else `samples` MC draws.

    `index` picks one of the `D` prior precisions `glm_moments` computed covariances for.
    """
    cov = moments.cov[index]
    if samples == 0:
        return probit_log_probs(moments.mean, cov, moments.choice_mask)
    if seeds is None:
        raise ValueError("Monte-Carlo predictive needs one seed per row (`seeds`).")
    return mc_log_probs(moments.mean, cov, moments.choice_mask, samples, seeds)
