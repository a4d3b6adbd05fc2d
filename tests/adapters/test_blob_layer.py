"""BLoB layer and config: init, exact per-row sampling of A, LoRA equivalence of the mean, merge."""

from __future__ import annotations

import math

import peft
import pytest
import torch

from melora.adapters.blob_config import BlobConfig
from melora.adapters.blob_layer import (
    BlobLinear,
    BlobLinearVariant,
    BlobSampledProduct,
    blob_apply_a,
    blob_sample_a,
)
from melora.adapters.sampling import sampling
from tests.adapters.conftest import adapter_layers, tiny_base, tiny_peft


def test_get_peft_model_builds_blob_layers() -> None:
    model = peft.get_peft_model(tiny_base(), BlobConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    layers = adapter_layers(model)
    assert len(layers) == 4 and all(isinstance(m, BlobLinear) for m in layers)
    assert all(isinstance(m.lora_variant["default"], BlobLinearVariant) for m in layers)
    # q: 32 -> 32, v: 32 -> 16; per layer r (m + 2 n)
    assert model.get_nb_trainable_parameters()[0] == 2 * (8 * (32 + 64) + 8 * (16 + 64))


def test_init_rho_range() -> None:
    model = peft.get_peft_model(tiny_base(), BlobConfig(r=8, target_modules=["q_proj"], rho_init=0.05))
    for layer in adapter_layers(model):
        rho = layer.lora_blob_rho["default"]
        assert rho.shape == layer.lora_A["default"].weight.shape
        assert rho.min() >= 0.05 / math.sqrt(2) and rho.max() <= 0.05
        assert torch.all(layer.lora_B["default"].weight == 0)


def test_mean_mode_equals_lora(input_ids: torch.Tensor) -> None:
    blob, lora = tiny_peft("blob"), tiny_peft("lora")
    with torch.no_grad():
        for a, b in zip(adapter_layers(blob), adapter_layers(lora), strict=True):
            b.lora_A["default"].weight.copy_(a.lora_A["default"].weight)
            b.lora_B["default"].weight.copy_(a.lora_B["default"].weight)
        with sampling(blob, "mean"):
            out = blob(input_ids).logits
        torch.testing.assert_close(out, lora(input_ids).logits, atol=1e-6, rtol=0)
        with sampling(blob, "sample"):
            assert not torch.allclose(blob(input_ids).logits, out, atol=1e-6)


def test_sample_and_apply_a_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    mean, rho, eps = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    a = blob_sample_a(mean, rho, eps)
    torch.testing.assert_close(a, mean + rho**2 * eps)
    x = torch.randn(3, 5, 6, generator=g)
    torch.testing.assert_close(blob_apply_a(x, a), torch.stack([x[i] @ a[i].T for i in range(3)]))


def test_merge_equals_mean_mode(input_ids: torch.Tensor) -> None:
    model = tiny_peft("blob")
    with torch.no_grad(), sampling(model, "mean"):
        expected = model(input_ids).logits
    merged = model.merge_and_unload()
    assert not any(isinstance(m, BlobLinear) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_std": -0.2}, "`prior_std` must be positive, got -0.2"),
        ({"rho_init": 0.0}, "`rho_init` must be positive, got 0.0"),
        ({"use_blob": False}, "`use_blob` must be True"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BlobConfig(r=4, target_modules=["q_proj"], **kwargs)


def test_sampled_product_gradients_match_autograd() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rho = torch.rand(2, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(BlobSampledProduct.apply, (x, mean, rho, eps))
    out = BlobSampledProduct.apply(x, mean, rho, eps)
    expected = blob_apply_a(x, blob_sample_a(mean, rho, eps))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * weights).sum(), (x, mean, rho))
    want = torch.autograd.grad((expected * weights).sum(), (x, mean, rho))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
