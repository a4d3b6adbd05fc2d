"""Me-LoRA layer and config: LoRA equivalence, init, per-row C, merge."""

from __future__ import annotations

import math

import peft
import pytest
import torch

from melora.adapters.melora_config import MeLoraConfig
from melora.adapters.melora_layer import MeLoraLinear, MeLoraLinearVariant, melora_apply_c, melora_sample_c
from melora.adapters.sampling import sampling
from tests.adapters.conftest import adapter_layers, tiny_base, tiny_peft


def _copy_lora_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    with torch.no_grad():
        for a, b in zip(adapter_layers(src), adapter_layers(dst), strict=True):
            b.lora_A["default"].weight.copy_(a.lora_A["default"].weight)
            b.lora_B["default"].weight.copy_(a.lora_B["default"].weight)


def test_get_peft_model_builds_melora_layers() -> None:
    model = peft.get_peft_model(tiny_base(), MeLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    layers = adapter_layers(model)
    assert len(layers) == 4
    assert all(isinstance(m, MeLoraLinear) for m in layers)
    assert all(isinstance(m.lora_variant["default"], MeLoraLinearVariant) for m in layers)
    names = {
        next(part for part in n.split(".") if part.startswith("lora_"))
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert names == {"lora_A", "lora_B", "lora_melora_M", "lora_melora_H"}
    # q_proj is 32 -> 32, v_proj 32 -> 16 (2 kv heads of 8); per layer r (n + m) + 2 r^2
    assert model.get_nb_trainable_parameters()[0] == 2 * ((8 * 64 + 128) + (8 * 48 + 128))


def test_init_m_identity_and_omega_range() -> None:
    torch.manual_seed(0)
    model = peft.get_peft_model(tiny_base(), MeLoraConfig(r=8, target_modules=["q_proj"], std_init=0.05))
    for layer in adapter_layers(model):
        assert torch.equal(layer.lora_melora_M["default"], torch.eye(8))
        omega = layer.lora_melora_H["default"] ** 2
        assert omega.min() >= 0.05 / math.sqrt(2) - 1e-7 and omega.max() <= 0.05 + 1e-7
        assert torch.all(layer.lora_B["default"].weight == 0)  # starts as LoRA: a no-op


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_equals_lora_when_h_zero_and_m_identity(mode: str, input_ids: torch.Tensor) -> None:
    melora = tiny_peft("melora")
    lora = tiny_peft("lora")
    _copy_lora_weights(melora, lora)
    with torch.no_grad():
        for layer in adapter_layers(melora):
            layer.lora_melora_H["default"].zero_()
    with torch.no_grad(), sampling(melora, mode):
        out = melora(input_ids).logits
    expected = lora(input_ids).logits
    base = tiny_base()(input_ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_apply_c_per_row_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    h, c = torch.randn(3, 5, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    expected = torch.stack([h[i] @ c[i].T for i in range(3)])
    torch.testing.assert_close(melora_apply_c(h, c), expected)
    torch.testing.assert_close(melora_apply_c(h, c[0]), h @ c[0].T)
    two_d = torch.randn(3, 4, generator=g)  # (rows, r): one token per row
    torch.testing.assert_close(melora_apply_c(two_d, c), torch.stack([two_d[i] @ c[i].T for i in range(3)]))


def test_sample_c_formula() -> None:
    m, h, eps = torch.randn(4, 4), torch.randn(4, 4), torch.randn(2, 4, 4)
    torch.testing.assert_close(melora_sample_c(m, h, eps), m + (h * h) * eps)


def test_merge_equals_mean_mode(input_ids: torch.Tensor) -> None:
    model = tiny_peft("melora")
    with torch.no_grad():
        for layer in adapter_layers(model):
            layer.lora_melora_M["default"].add_(0.3 * torch.randn(4, 4))
        with sampling(model, "mean"):
            expected = model(input_ids).logits
        merged = model.merge_and_unload()
    assert not any(isinstance(m, MeLoraLinear) for m in merged.modules())
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(merged(input_ids).logits, expected, atol=1e-5, rtol=0)


def test_merge_unmerge_roundtrip(input_ids: torch.Tensor) -> None:
    model = tiny_peft("melora")
    weight = adapter_layers(model)[0].get_base_layer().weight.detach().clone()
    model.base_model.merge_adapter()
    model.base_model.unmerge_adapter()
    torch.testing.assert_close(adapter_layers(model)[0].get_base_layer().weight, weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_std": 0.0}, "`prior_std` must be positive, got 0.0"),
        ({"std_init": -1.0}, "`std_init` must be positive, got -1.0"),
        ({"kl_variance": "tight"}, "`kl_variance` must be one of"),
        ({"use_melora": False}, "`use_melora` must be True"),
        ({"use_dora": True}, "`use_dora` cannot be combined"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MeLoraConfig(r=4, target_modules=["q_proj"], **kwargs)


def test_config_roundtrip(tmp_path) -> None:
    config = MeLoraConfig(r=4, target_modules=["q_proj"], prior_std=0.3, prior_noise=False, kl_variance="exact")
    config.save_pretrained(tmp_path)
    loaded = MeLoraConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MeLoraConfig)
    assert (loaded.prior_std, loaded.prior_noise, loaded.kl_variance) == (0.3, False, "exact")
    assert loaded._custom_modules == {torch.nn.Linear: MeLoraLinear}
