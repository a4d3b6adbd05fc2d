"""The linearised (GLM) predictive: covariance against dense algebra, its behaviour in the prior, probit and MC."""

from __future__ import annotations

import math

import pytest
import torch

from melora.errors import AdapterError
from melora.laplace.capture import lora_linears
from melora.laplace.kfac import accumulate_kron_factors, answer_logits
from melora.laplace.posterior import KronPosterior
from melora.laplace.predictive import (
    glm_moments,
    matched_linears,
    mc_log_probs,
    predictive_log_probs,
    probit_log_probs,
)
from tests.laplace.conftest import make_tiny_lora


@pytest.fixture
def posterior(tiny_lora, batches) -> KronPosterior:
    return KronPosterior.from_factors(accumulate_kron_factors(tiny_lora, batches), prior_precision=1.0)


def dense_cov(model, batch, factors, delta: float) -> torch.Tensor:
    """`J (G (x) A + delta I)^-1 J^T` per row, with autograd Jacobians and dense blocks (float64)."""
    linears = lora_linears(model)
    out = torch.zeros(len(batch), batch.choice_ids.shape[1], batch.choice_ids.shape[1], dtype=torch.float64)
    with torch.enable_grad():
        for lin in linears:
            lin.module.weight.requires_grad_(True)
        z = answer_logits(model, batch)
        for n in range(len(batch)):
            k = int(batch.choice_mask[n].sum())
            rows = [
                torch.autograd.grad(z[n, c], [lin.module.weight for lin in linears], retain_graph=True)
                for c in range(k)
            ]
            for i, lin in enumerate(linears):
                jac = torch.stack([rows[c][i].flatten().double() for c in range(k)])  # (k, p_W)
                block = torch.kron(factors.grad[lin.name].double(), factors.act[lin.name].double())
                prec = block + delta * torch.eye(block.shape[0], dtype=torch.float64)
                out[n, :k, :k] += jac @ torch.linalg.solve(prec, jac.T)
    return out


def test_glm_covariance_matches_dense_jacobians_and_precision(tiny_lora, batches):
    factors = accumulate_kron_factors(tiny_lora, batches)
    posterior = KronPosterior.from_factors(factors)
    for delta in (0.1, 10.0):
        moments = glm_moments(tiny_lora, batches[1], posterior, prior_precisions=[delta])
        expected = dense_cov(tiny_lora, batches[1], factors, delta)
        torch.testing.assert_close(
            moments.cov[0].double(), expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max())
        )
    assert moments.cov[0, 1, 3].abs().sum() == 0  # padded choice: no variance


def test_glm_mean_is_the_map_read_out(tiny_lora, batches, posterior):
    from melora.readout import choice_log_probs

    moments = glm_moments(tiny_lora, batches[1], posterior)
    with torch.no_grad():
        expected = choice_log_probs(tiny_lora, batches[1])
    got = torch.log_softmax(moments.mean.masked_fill(~moments.choice_mask, -math.inf), -1)
    torch.testing.assert_close(got, expected)


def test_predictive_variance_is_positive_and_shrinks_as_the_prior_precision_grows(tiny_lora, batches, posterior):
    deltas = [1e-3, 1e-1, 1.0, 10.0, 1e3, 1e5]
    moments = glm_moments(tiny_lora, batches[0], posterior, prior_precisions=deltas)
    var = torch.diagonal(moments.cov, dim1=-2, dim2=-1)  # (D, B, K)
    assert (var > 0).all()
    assert (var[1:] < var[:-1]).all()
    assert var[-1].max() < 1e-3 * var[0].min()
    # probit: the predictive is less confident under a broad prior and tends to the MAP under a tight one
    log_p = probit_log_probs(moments.mean, moments.cov, moments.choice_mask)  # (D, B, K)
    conf = log_p.exp().max(-1).values  # (D, B)
    assert (conf[0] <= conf[-1] + 1e-9).all()
    map_p = torch.softmax(moments.mean.double(), -1)
    torch.testing.assert_close(log_p[-1].exp(), map_p, atol=1e-3, rtol=0)


def test_mc_averages_probabilities_not_logits():
    mean = torch.tensor([[2.0, 0.0, 0.0]])
    cov = torch.eye(3)[None] * 25.0
    mask = torch.ones(1, 3, dtype=torch.bool)
    p = mc_log_probs(mean, cov, mask, n_samples=4000, seeds=[7]).exp()
    # averaging logits would give softmax(mean) = 0.787 for the first choice; probabilities are flattened
    assert p[0, 0] < 0.7 and p.sum() == pytest.approx(1.0)
    zero = mc_log_probs(mean, torch.zeros_like(cov), mask, n_samples=3, seeds=[7]).exp()
    torch.testing.assert_close(zero, torch.softmax(mean.double(), -1))


def test_mc_is_reproducible_per_row_whatever_the_batch():
    mean = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    cov = torch.eye(4).expand(3, 4, 4) * 2.0
    mask = torch.ones(3, 4, dtype=torch.bool)
    full = mc_log_probs(mean, cov, mask, n_samples=16, seeds=[1, 2, 3])
    single = mc_log_probs(mean[1:2], cov[1:2], mask[1:2], n_samples=16, seeds=[2])
    torch.testing.assert_close(full[1:2], single)
    with pytest.raises(ValueError, match="one seed per row"):
        mc_log_probs(mean, cov, mask, n_samples=2, seeds=[1])


def test_predictive_dispatches_probit_and_mc():
    from melora.laplace.predictive import GLMMoments

    moments = GLMMoments(
        mean=torch.tensor([[1.0, -1.0]]), cov=torch.eye(2)[None, None], choice_mask=torch.ones(1, 2).bool()
    )
    probit = predictive_log_probs(moments, 0)
    torch.testing.assert_close(probit, probit_log_probs(moments.mean, moments.cov[0], moments.choice_mask))
    mc = predictive_log_probs(moments, 5, seeds=[4])
    torch.testing.assert_close(mc, mc_log_probs(moments.mean, moments.cov[0], moments.choice_mask, 5, [4]))
    with pytest.raises(ValueError, match="needs one seed per row"):
        predictive_log_probs(moments, 5)


def test_a_posterior_for_another_adapter_is_refused(posterior):
    other = make_tiny_lora(target_modules=("q_proj",))
    with pytest.raises(AdapterError, match="does not match the adapter"):
        matched_linears(other, posterior)
