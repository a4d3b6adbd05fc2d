"""Factor sizes from a config (`melora.laplace.memory`) against the factors actually accumulated, and at 7B."""

from __future__ import annotations

import json

from melora.adapters.params import AdaptedLinear, find_target_linears, load_meta_model
from melora.laplace.kfac import accumulate_kron_factors
from melora.laplace.memory import kfac_factor_floats


def test_counts_match_the_accumulated_factors(tiny_lora, batches):
    factors = accumulate_kron_factors(tiny_lora, batches[:1])
    unique = {id(t): t.numel() for t in [*factors.act.values(), *factors.grad.values()]}
    linears = [
        AdaptedLinear(f"layers.{i}.self_attn.{p}", 32, 32 if p == "q_proj" else 16)
        for i in range(2)
        for p in ("q_proj", "v_proj")
    ]
    assert kfac_factor_floats(linears, rank=2)["factors"] == sum(unique.values())


def test_llama2_7b_r8_qv(tmp_path):
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = load_meta_model(str(tmp_path / "config.json"))
    sizes = kfac_factor_floats(find_target_linears(model, ["q_proj", "v_proj"]), rank=8)
    assert sizes["adapted_linears"] == 64 and sizes["lora_params"] == 4_194_304
    assert sizes["factors"] == 1_610_620_928  # 6.44 GB in float32: fits beside a 7B model on a 24 GB GPU
    assert sizes["factors_fp32_bytes"] < 6.5e9
    unshared = kfac_factor_floats(find_target_linears(model, ["q_proj", "v_proj"]), rank=8, share_inputs=False)
    assert unshared["factors"] == 2_147_491_840
