"""The Kronecker posterior: dense cross-checks, marginal likelihood against a brute-force grid, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from melora.errors import AdapterError
from melora.laplace.fit import theta_sq_norm
from melora.laplace.kfac import accumulate_kron_factors
from melora.laplace.posterior import KronPosterior, load_posterior, save_posterior


@pytest.fixture
def fitted(tiny_lora, batches):
    factors = accumulate_kron_factors(tiny_lora, batches)
    return factors, KronPosterior.from_factors(factors)


def dense_log_marglik(factors, delta: float, sq_norm: float) -> float:
    """The Laplace evidence with each block `G (x) A + delta I` built densely (slogdet, float64)."""
    log_det, n = 0.0, 0
    for name in factors.grad:
        block = torch.kron(factors.grad[name].double(), factors.act[name].double())
        log_det += float(torch.linalg.slogdet(block + delta * torch.eye(block.shape[0], dtype=torch.float64))[1])
        n += block.shape[0]
    return factors.log_likelihood - 0.5 * delta * sq_norm + 0.5 * n * math.log(delta) - 0.5 * log_det


def test_eigendecomposition_reconstructs_the_factors(fitted):
    factors, posterior = fitted
    for name, f in posterior.factors.items():
        rebuilt = f.grad_eigvecs @ torch.diag(f.grad_eigvals) @ f.grad_eigvecs.T
        torch.testing.assert_close(
            rebuilt, factors.grad[name], atol=1e-6 * float(factors.grad[name].abs().max()), rtol=0
        )
        assert (f.act_eigvals >= 0).all() and (f.grad_eigvals >= 0).all()


@pytest.mark.parametrize("delta", [1e-2, 1.0, 1e3])
def test_log_marginal_likelihood_matches_the_dense_evidence(fitted, tiny_lora, delta):
    factors, posterior = fitted
    sq_norm = theta_sq_norm(tiny_lora)
    ours = posterior.log_marginal_likelihood(delta, factors.log_likelihood, sq_norm)
    assert ours == pytest.approx(dense_log_marglik(factors, delta, sq_norm), rel=1e-6, abs=1e-6)


def test_marginal_likelihood_maximum_is_where_a_brute_force_grid_puts_it(fitted, tiny_lora):
    factors, posterior = fitted
    sq_norm = theta_sq_norm(tiny_lora)
    delta, log_z = posterior.optimize_prior_precision(factors.log_likelihood, sq_norm)
    log10 = np.linspace(-4, 6, 20001)  # spacing 5e-4 in log10
    brute = np.array([dense_log_marglik(factors, d, sq_norm) for d in 10.0 ** log10[::50]])  # dense, coarse
    fine = posterior.log_marginal_likelihood(10.0**log10, factors.log_likelihood, sq_norm)
    np.testing.assert_allclose(fine[::50], brute, rtol=1e-5, atol=1e-3)  # float32 eigenvalues near delta=1e-4
    assert math.log10(delta) == pytest.approx(log10[int(np.argmax(fine))], abs=1e-3)
    assert log_z >= fine.max() - 1e-9
    assert posterior.prior_precision == delta
    # the optimum satisfies MacKay's fixed point delta = gamma / ||theta||^2
    lam = np.concatenate([f.eigvals.double().flatten().numpy() for f in posterior.factors.values()])
    gamma = float((lam / (lam + delta)).sum())
    assert delta == pytest.approx(gamma / sq_norm, rel=1e-3)


def test_evidence_uses_the_squared_norm_with_a_minus_sign(fitted):
    """Regression against the `bayesian-lora` evidence (`+ ||theta|| / s2`): a larger norm must lower log Z."""
    factors, posterior = fitted
    small = posterior.log_marginal_likelihood(2.0, factors.log_likelihood, theta_sq_norm=1.0)
    large = posterior.log_marginal_likelihood(2.0, factors.log_likelihood, theta_sq_norm=9.0)
    assert small - large == pytest.approx(0.5 * 2.0 * 8.0)


def test_non_positive_prior_precision_is_refused(fitted):
    with pytest.raises(ValueError, match="positive prior precision"):
        fitted[1].log_marginal_likelihood(0.0, 0.0, 1.0)


def test_posterior_file_round_trips(fitted, tmp_path):
    _, posterior = fitted
    save_posterior(posterior, tmp_path)
    loaded = load_posterior(tmp_path, prior_precision=3.5)
    assert loaded.prior_precision == 3.5 and set(loaded.factors) == set(posterior.factors)
    shared = {id(f.act_eigvecs) for f in loaded.factors.values()}
    assert len(shared) == len({id(f.act_eigvecs) for f in posterior.factors.values()}) < len(loaded.factors)
    for name, f in posterior.factors.items():
        for part in ("grad_eigvals", "grad_eigvecs", "act_eigvals", "act_eigvecs"):
            torch.testing.assert_close(getattr(loaded.factors[name], part), getattr(f, part))
    with pytest.raises(AdapterError, match="has no laplace_posterior.safetensors"):
        load_posterior(tmp_path / "missing", 1.0)
