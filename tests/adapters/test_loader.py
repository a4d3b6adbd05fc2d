"""Save and load: bit-exact round trips for every kind, and clear refusals instead of silent downgrades."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from safetensors.torch import load_file, save_file

from melora.adapters.blob_layer import BlobLinear
from melora.adapters.loader import ADAPTER_KINDS, adapter_kind, config_class, load_adapter
from melora.adapters.melora_layer import MeLoraLinear
from melora.adapters.sampling import sampling
from melora.errors import AdapterError
from tests.adapters.conftest import adapter_layers, tiny_base, tiny_peft


LAYER_CLASS = {"melora": MeLoraLinear, "blob": BlobLinear, "lora": LoraLinear}


def _saved(kind: str, tmp_path, **kwargs: object) -> tuple[torch.nn.Module, str]:
    model = tiny_peft(kind, **kwargs)
    with torch.no_grad():  # move every parameter away from its init so the round trip checks real values
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.01 * torch.randn_like(param))
    path = str(tmp_path / kind)
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("kind", ["melora", "blob", "lora"])
def test_round_trip_is_bit_exact(kind: str, tmp_path, input_ids: torch.Tensor) -> None:
    model, path = _saved(kind, tmp_path)
    assert adapter_kind(path) == kind
    loaded = load_adapter(tiny_base(), path)
    assert isinstance(loaded, PeftModel)
    layers = adapter_layers(loaded)
    assert layers and all(type(m) is LAYER_CLASS[kind] for m in layers)
    original = dict(model.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.equal(param, original[name]), name
        assert not param.requires_grad  # is_trainable=False freezes the adapter
    with torch.no_grad(), sampling(model, "mean"), sampling(loaded, "mean"):
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_loaded_config_and_trainable(kind: str, tmp_path) -> None:
    _, path = _saved(kind, tmp_path, prior_std=0.3)
    loaded = load_adapter(tiny_base(), path, adapter_name="mine", is_trainable=True)
    config = loaded.peft_config["mine"]
    assert type(config) is ADAPTER_KINDS[kind] and config.prior_std == 0.3
    trainable = {
        next(p for p in n.split(".") if p.startswith("lora_")) for n, q in loaded.named_parameters() if q.requires_grad
    }
    assert trainable == {"lora_A", "lora_B"} | (
        {"lora_melora_M", "lora_melora_H"} if kind == "melora" else {"lora_blob_rho"}
    )


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_loaded_merge_equals_mean_mode(kind: str, tmp_path, input_ids: torch.Tensor) -> None:
    _, path = _saved(kind, tmp_path)
    loaded = load_adapter(tiny_base(), path)
    with torch.no_grad():
        with sampling(loaded, "mean"):
            expected = loaded(input_ids).logits
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids).logits, expected, atol=1e-5, rtol=0)


def test_plain_peft_loading_drops_c_silently(tmp_path) -> None:
    """Why `load_adapter` exists: PEFT's own loader builds plain LoRA layers with only a warning."""
    _, path = _saved("melora", tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = PeftModel.from_pretrained(tiny_base(), path)
    assert any("use_melora" in str(w.message) for w in caught)
    assert not any(isinstance(m, MeLoraLinear) for m in plain.modules())


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_other_base_model_is_refused_before_loading(kind: str, tmp_path) -> None:
    _, path = _saved(kind, tmp_path)
    wider = tiny_base(hidden_size=48, intermediate_size=96)
    with pytest.raises(
        AdapterError,
        match=r"'model\.layers\.0\.self_attn\.q_proj': lora_A\.weight \(4, 32\) needs in_features=32, base has 48",
    ):
        load_adapter(wider, path)
    assert not any(isinstance(m, LoraLinear) for m in wider.modules())  # the base model is untouched
    with pytest.raises(AdapterError, match=r"module 'model\.layers\.1\.self_attn\.q_proj' does not exist"):
        load_adapter(tiny_base(num_hidden_layers=1), path)


def test_missing_bayesian_tensor_is_refused(tmp_path) -> None:
    _, path = _saved("melora", tmp_path)
    weights = load_file(f"{path}/adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "lora_melora_H" not in k}, f"{path}/adapter_model.safetensors")
    with pytest.raises(AdapterError, match="lacks lora_melora_H"):
        load_adapter(tiny_base(), path)


def test_unknown_kind_is_refused(tmp_path) -> None:
    _, path = _saved("melora", tmp_path)
    config_path = tmp_path / "melora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(AdapterError, match=r"Unknown adapter kind 'ia3'.*Available: blob, lora, melora"):
        load_adapter(tiny_base(), path)
    plain = {
        k: v
        for k, v in config.items()
        if k not in ("use_melora", "prior_std", "prior_noise", "kl_variance", "std_init")
    }
    config_path.write_text(json.dumps({**plain, "use_foo": True}))  # a LoRA variant this project does not know
    with pytest.raises(AdapterError, match=r"Unknown adapter kind in .*\['use_foo'\].*Available: blob, lora, melora"):
        adapter_kind(path)
    with pytest.raises(AdapterError, match=r"Unknown adapter kind 'melorra'\. Did you mean 'melora'\?"):
        config_class("melorra")


def test_missing_directory_is_refused(tmp_path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tiny_base(), tmp_path / "nowhere")
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        adapter_kind(tmp_path)
    with pytest.raises(AdapterError, match="already a PeftModel"):
        load_adapter(tiny_peft("lora"), tmp_path)
