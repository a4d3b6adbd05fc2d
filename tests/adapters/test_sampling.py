"""Sampling control: modes independent of `.training`, per-row seeds, batched multi-sample forwards, statistics."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from melora.adapters.blob_config import BlobConfig
from melora.adapters.melora_config import MeLoraConfig
from melora.adapters.sampling import (
    STATE_ATTR,
    expand_for_samples,
    row_seed,
    sample_seeds,
    sampling,
    set_sampling_mode,
)
from melora.errors import MeloraWarning
from tests.adapters.conftest import adapter_layers, tiny_peft


KINDS = ["melora", "blob"]


class _Probe(nn.Module):
    """One bias-free linear with zero base weight: the output is the adapter's term alone."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n_in, n_out, bias=False)
        nn.init.zeros_(self.lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_forwards_differ_and_mean_is_deterministic(kind: str, input_ids: torch.Tensor) -> None:
    model = tiny_peft(kind)
    with torch.no_grad():
        first, second = model(input_ids).logits, model(input_ids).logits  # default: sample, even in eval mode
        assert not torch.allclose(first, second, atol=1e-6)
        with sampling(model, "mean"):
            mean_eval = model(input_ids).logits
            torch.testing.assert_close(model(input_ids).logits, mean_eval, atol=0, rtol=0)
            model.train()  # train mode does not switch sampling on (dropout is 0 here)
            torch.testing.assert_close(model(input_ids).logits, mean_eval, atol=0, rtol=0)
        third, fourth = model(input_ids).logits, model(input_ids).logits  # train mode: sampling as before
        assert not torch.allclose(third, fourth, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_rows_do_not_depend_on_batch(kind: str, input_ids: torch.Tensor) -> None:
    model = tiny_peft(kind)
    seeds = [7, 8, 9]
    with torch.no_grad():
        with sampling(model, "sample", seeds=seeds):
            full = model(input_ids).logits
            again = model(input_ids).logits
        torch.testing.assert_close(again, full, atol=0, rtol=0)  # the block reuses each row's sample
        with sampling(model, "sample", seeds=[9, 7]):
            reordered = model(input_ids[[2, 0]]).logits
        with sampling(model, "sample", seeds=[8]):
            single = model(input_ids[[1]]).logits
        with sampling(model, "sample", seeds=[9, 9]):
            duplicated = model(input_ids[[2, 2]]).logits
        with sampling(model, "sample", seeds=[10, 11, 12]):
            other = model(input_ids).logits
    torch.testing.assert_close(reordered, full[[2, 0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(single, full[[1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(duplicated[0], duplicated[1], atol=1e-6, rtol=0)
    assert not torch.allclose(other, full, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_samples_equal_separate_forwards(kind: str, input_ids: torch.Tensor) -> None:
    model, n_samples, doc_seeds = tiny_peft(kind), 4, [101, 202, 303]
    with torch.no_grad():
        with sampling(model, "sample", seeds=sample_seeds(doc_seeds, n_samples)):
            batched = model(expand_for_samples(input_ids, n_samples)).logits  # (3 * 4, T, V), doc-major
        batched = batched.view(len(doc_seeds), n_samples, *batched.shape[1:])
        for s in range(n_samples):
            with sampling(model, "sample", seeds=[row_seed(d, s) for d in doc_seeds]):
                separate = model(input_ids).logits
            torch.testing.assert_close(batched[:, s], separate, atol=1e-6, rtol=0)
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-6)


def test_seed_helpers() -> None:
    seeds = sample_seeds([1, 2], 3)
    assert seeds == [row_seed(1, 0), row_seed(1, 1), row_seed(1, 2), row_seed(2, 0), row_seed(2, 1), row_seed(2, 2)]
    assert len(set(seeds)) == 6 and all(0 <= s < 2**63 for s in seeds)
    assert row_seed(1, 0) == 2433214216204653390  # pinned: changing the scheme changes every seeded result
    assert sample_seeds([1, 2], 3) == seeds  # deterministic
    x = torch.tensor([[1, 2], [3, 4]])
    assert expand_for_samples(x, 2).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    with pytest.raises(ValueError, match="`n_samples` to be a positive int"):
        sample_seeds([1], 0)


def test_context_restores_and_setter_persists(input_ids: torch.Tensor) -> None:
    model = tiny_peft("melora")
    layers = adapter_layers(model)
    assert all(STATE_ATTR not in m.__dict__ for m in layers)
    with sampling(model, "mean") as outer:
        with pytest.raises(RuntimeError, match="boom"), sampling(model, "sample", seeds=[1, 2, 3]):
            raise RuntimeError("boom")
        assert all(m.__dict__[STATE_ATTR] is outer for m in layers)
    assert all(STATE_ATTR not in m.__dict__ for m in layers)
    state = set_sampling_mode(model, "mean")
    assert state.mode == "mean" and all(m.__dict__[STATE_ATTR] is state for m in layers)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)


def test_invalid_use_raises(input_ids: torch.Tensor) -> None:
    model = tiny_peft("melora")
    with pytest.raises(ValueError, match="`mode` to be one of"):
        set_sampling_mode(model, "posterior")
    with pytest.raises(ValueError, match="empty"):
        set_sampling_mode(model, "sample", seeds=[])
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*63\)"):
        set_sampling_mode(model, "sample", seeds=[-1])
    with pytest.raises(ValueError, match="Expected a batch of 2 rows"), sampling(model, "sample", seeds=[1, 2]):
        model(input_ids)
    with pytest.warns(MeloraWarning, match="ignored"), sampling(model, "mean", seeds=[1, 2, 3]):
        pass


def test_model_without_bayesian_layers_is_untouched(input_ids: torch.Tensor) -> None:
    model = tiny_peft("lora")
    with torch.no_grad(), sampling(model, "sample", seeds=[1]):
        out = model(input_ids).logits  # plain LoRA is deterministic; seeds are not checked
    torch.testing.assert_close(out, model(input_ids).logits, atol=0, rtol=0)


def test_sampled_c_and_output_statistics() -> None:
    r, n_draws = 4, 20000
    model = peft.get_peft_model(_Probe(r, r), MeLoraConfig(r=r, lora_alpha=r, target_modules=["lin"]))
    layer = adapter_layers(model)[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.eye(r))
        layer.lora_B["default"].weight.copy_(torch.eye(r))
        layer.lora_melora_M["default"].copy_(torch.randn(r, r, generator=g))
        layer.lora_melora_H["default"].copy_(torch.rand(r, r, generator=g) * 0.4 + 0.4)
        mean, omega = layer.lora_melora_M["default"].clone(), layer.lora_melora_H["default"] ** 2
        # x = I as r tokens: token j of row i gives C_i e_j, so the output of row i is C_i^T
        with sampling(model, "sample", seeds=range(n_draws)):
            c = model(torch.eye(r).expand(n_draws, r, r)).transpose(1, 2)  # (n_draws, r, r)
    assert (c.mean(0) - mean).abs().max() < 5 * omega.max() / n_draws**0.5
    assert ((c.std(0) - omega).abs() / omega).max() < 5 / (2 * n_draws) ** 0.5

    # the layer output for a generic input: mean B M A x, variance sum_kl B_ik^2 Omega_kl^2 (A x)_l^2
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.randn(r, r, generator=g))
        layer.lora_B["default"].weight.copy_(torch.randn(r, r, generator=g))
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        x = torch.randn(r, generator=g)
        y = model(x.expand(n_draws, 1, r)).squeeze(1)  # (n_draws, r), global RNG
        expected_var = (b**2) @ (omega**2) @ ((a @ x) ** 2)
        expected_mean = b @ mean @ a @ x
    assert ((y.mean(0) - expected_mean).abs() / expected_var.sqrt()).max() < 5 / n_draws**0.5
    assert ((y.var(0) - expected_var).abs() / expected_var).max() < 5 * (2 / n_draws) ** 0.5


def test_sampled_a_statistics_blob() -> None:
    r, n, n_draws = 3, 5, 20000
    model = peft.get_peft_model(_Probe(n, r), BlobConfig(r=r, lora_alpha=r, target_modules=["lin"]))
    layer = adapter_layers(model)[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.eye(r))
        layer.lora_blob_rho["default"].copy_(torch.rand(r, n, generator=g) * 0.3 + 0.5)
        mean, std = layer.lora_A["default"].weight.clone(), layer.lora_blob_rho["default"] ** 2
        with sampling(model, "sample", seeds=range(n_draws)):
            a = model(torch.eye(n).expand(n_draws, n, n)).transpose(1, 2)  # (n_draws, r, n): row i is A_i^T
    assert (a.mean(0) - mean).abs().max() < 5 * std.max() / n_draws**0.5
    assert ((a.std(0) - std).abs() / std).max() < 5 / (2 * n_draws) ** 0.5
