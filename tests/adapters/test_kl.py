"""KL terms: closed forms against direct evaluation, the exact variance against Monte Carlo, the model-level sum."""

from __future__ import annotations

import math

import peft
import pytest
import torch

from melora.adapters.kl import (
    OMEGA_FLOOR,
    blob_kl,
    blob_kl_and_grads,
    kl_divergence,
    kl_divergence_with_grads,
    melora_kl,
    melora_kl_and_grads,
)
from tests.adapters.conftest import adapter_config, adapter_layers, tiny_base, tiny_peft


def _random(r: int = 3, n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(r, r, generator=g, dtype=torch.float64)
    h = torch.rand(r, r, generator=g, dtype=torch.float64) + 0.2
    a = torch.randn(r, n, generator=g, dtype=torch.float64)
    return m, h, a


def _direct_eq8(m, h, a, sigma_p, eps):
    """Eq. 8 written out entry by entry."""
    r, n = a.shape
    omega = [[float(h[i, k]) ** 2 for k in range(r)] for i in range(r)]
    mean_sq = sum(sum(float(m[i, k]) * float(a[k, j]) for k in range(r)) ** 2 for i in range(r) for j in range(n))
    var_sq = sum(sum(omega[i][k] * abs(float(a[k, j])) for k in range(r)) ** 2 for i in range(r) for j in range(n))
    log_det = sum(math.log(omega[i][k]) for i in range(r) for k in range(r))
    return (mean_sq + var_sq) / (2 * (sigma_p + eps) ** 2) - log_det


@pytest.mark.parametrize("eps", [0.0, 0.37])
def test_melora_kl_matches_eq8_and_eq7(eps: float) -> None:
    m, h, a = _random()
    value = melora_kl(m, h, a, prior_std=0.2, noise=eps)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_direct_eq8(m, h, a, 0.2, eps), rel=1e-12)


def test_exact_variance_matches_monte_carlo() -> None:
    m, h, a = _random(seed=1)
    omega, n_draws = h * h, 200_000
    g = torch.Generator().manual_seed(0)
    c = m + omega * torch.randn(n_draws, *m.shape, generator=g, dtype=torch.float64)  # (n_draws, r, r)
    mc_variance = (c @ a).var(0).sum()  # sum of per-entry variances of C A
    sigma_p, zero = 0.2, torch.zeros_like(m)
    log_det = torch.log(omega).sum()
    exact = 2 * sigma_p**2 * (melora_kl(zero, h, a, sigma_p, variance="exact") + log_det)
    paper = 2 * sigma_p**2 * (melora_kl(zero, h, a, sigma_p, variance="paper") + log_det)
    assert exact.item() == pytest.approx(mc_variance.item(), rel=0.01)
    assert exact.item() == pytest.approx((omega**2 @ a**2).sum().item(), rel=1e-12)
    assert paper >= exact  # the paper's term bounds the exact variance


def test_blob_kl_matches_formula_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(3, 4, generator=g), torch.rand(3, 4, generator=g) * 0.01
    value = blob_kl(mu, sigma, prior_std=0.2)
    assert value.dtype == torch.float64
    expected = sum(
        math.log(0.2 + 1e-6) - math.log(float(s) + 1e-6) + (float(s) ** 2 + float(u) ** 2) / (2 * 0.04 + 1e-6) - 0.5
        for u, s in zip(mu.flatten().double(), sigma.flatten().double(), strict=True)
    )
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_numerically_stable() -> None:
    m, h, a = (t.to(torch.bfloat16) for t in _random())
    h[0, 0] = 0.0  # Omega = 0: log is floored, no -inf
    value = melora_kl(m, h, a)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    big = melora_kl(m.float() * 1e6, h.float(), a.float() * 1e6)
    assert torch.isfinite(big)
    assert torch.isfinite(blob_kl(torch.zeros(2, 2), torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="`variance` to be one of"):
        melora_kl(m, h, a, variance="tight")


def test_model_kl_is_sum_of_layers_and_reaches_a_m_h_not_b() -> None:
    model = tiny_peft("melora", prior_noise=True)
    layers = adapter_layers(model)
    total = kl_divergence(model, noise=0.3)
    expected = sum(
        melora_kl(m.lora_melora_M["default"], m.lora_melora_H["default"], m.lora_A["default"].weight, 0.2, 0.3)
        for m in layers
    )
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, expected)
    total.backward()
    for m in layers:
        assert m.lora_A["default"].weight.grad.abs().sum() > 0
        assert m.lora_melora_M["default"].grad.abs().sum() > 0
        assert m.lora_melora_H["default"].grad.abs().sum() > 0
        assert m.lora_B["default"].weight.grad is None


def test_blob_model_kl_reaches_a_and_rho_not_b() -> None:
    model = tiny_peft("blob")
    total = kl_divergence(model)
    layers = adapter_layers(model)
    expected = sum(blob_kl(m.lora_A["default"].weight, m.lora_blob_rho["default"] ** 2) for m in layers)
    torch.testing.assert_close(total, expected.float())
    total.backward()
    for m in layers:
        assert m.lora_A["default"].weight.grad.abs().sum() > 0
        assert m.lora_blob_rho["default"].grad.abs().sum() > 0
        assert m.lora_B["default"].weight.grad is None


def test_prior_noise_is_redrawn_per_call() -> None:
    noisy = tiny_peft("melora", prior_noise=True)
    with torch.no_grad():
        values = [kl_divergence(noisy).item() for _ in range(3)]
        low, high = kl_divergence(noisy, noise=1.0).item(), kl_divergence(noisy, noise=0.0).item()
    assert len(set(values)) == 3 and all(low <= v <= high for v in values)
    quiet = tiny_peft("melora", prior_noise=False)
    with torch.no_grad():
        assert kl_divergence(quiet).item() == kl_divergence(quiet).item() == kl_divergence(quiet, noise=0.9).item()


def test_zero_when_no_layer_matches() -> None:
    assert kl_divergence(tiny_peft("lora")) == 0.0
    assert kl_divergence(tiny_peft("melora"), adapter_names="other") == 0.0
    assert isinstance(kl_divergence(tiny_peft("melora"), adapter_names=["default"]), torch.Tensor)


def _autograd_grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    return value.detach(), list(torch.autograd.grad(value, leaves))


@pytest.mark.parametrize("variance", ["paper", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_melora_closed_form_grads_match_autograd(variance: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    layers, r, n = 4, 3, 5
    m = torch.randn(layers, r, r, generator=g, dtype=dtype)
    h = torch.rand(layers, r, r, generator=g, dtype=dtype) + 0.2
    a = torch.randn(layers, r, n, generator=g, dtype=dtype)
    a[0, 1, 2] = 0.0  # |A| at 0: autograd's sign(0) = 0
    h[1, 0, 0] = 0.0  # Omega below the floor: the log term's gradient is cut
    h[2, 1, 1] = 1e-7  # Omega = 1e-14, below the floor too

    def summed(m_, h_, a_):
        return sum(melora_kl(m_[i], h_[i], a_[i], 0.3, 0.2, variance) for i in range(layers))

    expected, expected_grads = _autograd_grads(summed, m, h, a)
    kl, grads = melora_kl_and_grads(m, h, a, prior_std=0.3, noise=0.2, variance=variance)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(kl, expected, **tol)
    for got, want, like in zip(grads, expected_grads, (m, h, a)):
        assert got.shape == like.shape and got.dtype == like.dtype
        torch.testing.assert_close(got, want, **tol)
    assert grads[1][1, 0, 0] == 0.0 and OMEGA_FLOOR > 1e-14


def test_melora_closed_form_rejects_unknown_variance() -> None:
    m, h, a = _random()
    with pytest.raises(ValueError, match="variance"):
        melora_kl_and_grads(m, h, a, variance="upper")


def test_blob_closed_form_grads_match_autograd_in_float64() -> None:
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(3, 4, 6, generator=g)
    rho = torch.rand(3, 4, 6, generator=g) * 0.2

    def summed(mu_, rho_):
        return sum(blob_kl(mu_[i], rho_[i].square(), prior_std=0.25) for i in range(3))

    expected, expected_grads = _autograd_grads(summed, mu, rho)
    kl, grads = blob_kl_and_grads(mu, rho, prior_std=0.25)
    assert kl.dtype == torch.float64
    torch.testing.assert_close(kl, expected.to(torch.float64))
    for got, want in zip(grads, expected_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_model_kl_with_grads_equals_autograd_over_layer_groups(kind: str) -> None:
    # q/v and down_proj have A of different widths: two stacked groups per method
    kwargs = {"prior_noise": True} if kind == "melora" else {}
    config = adapter_config(kind, **kwargs)
    config.target_modules = {"q_proj", "v_proj", "down_proj"}
    model = peft.get_peft_model(tiny_base(), config)
    widths = {m.lora_A["default"].weight.shape[1] for m in adapter_layers(model)}
    assert len(widths) == 2
    params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" not in n]
    expected = kl_divergence(model, noise=0.4)
    expected_grads = torch.autograd.grad(expected, params)
    total, grads = kl_divergence_with_grads(model, noise=0.4)
    torch.testing.assert_close(total, expected.detach())
    assert set(map(id, grads)) == set(map(id, params))  # every KL parameter, and no B
    assert not total.requires_grad
    layers = [m for m in model.modules() if getattr(m, "lora_variant", None)]
    again, grads_again = kl_divergence_with_grads(model, noise=0.4, layers=layers)  # the training loop's call
    torch.testing.assert_close(again, total)
    assert all(torch.equal(grads_again[p], grads[p]) for p in params)
    for p, want in zip(params, expected_grads):
        torch.testing.assert_close(grads[p], want, rtol=1e-5, atol=1e-6)
        grads[p].mul_(2.0)  # the training loop scales them in place by the KL weight


def test_model_kl_with_grads_zero_when_no_layer_matches() -> None:
    assert kl_divergence_with_grads(tiny_peft("lora")) == (0.0, {})
    assert kl_divergence_with_grads(tiny_peft("melora"), adapter_names="other") == (0.0, {})
