"""`fit_laplace` / `scripts/laplace.py` on a tiny on-disk model with synthetic OBQA data, and the harness route."""

from __future__ import annotations

import json
import math

import pytest
import torch

from melora.errors import AdapterError, MeloraError
from tests.training_fixtures import write_synthetic_obqa, write_tiny_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_model_path) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_model_path))


@pytest.fixture
def synthetic_data(tmp_path, monkeypatch):
    root = write_synthetic_obqa(tmp_path / "data")
    monkeypatch.setenv("MELORA_DATA_DIR", str(root))
    return root


@pytest.fixture
def map_adapter(tmp_path, tiny_model_dir) -> str:
    """A LoRA adapter with random A and B (a stand-in for a trained MAP adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "map")
    return str(tmp_path / "map")


def _fit(adapter, model, **kw):
    from melora.laplace.fit import LaplaceFitConfig, fit_laplace

    return fit_laplace(LaplaceFitConfig(adapter=adapter, task="obqa", model=model, max_length=64, **kw))


def test_script_writes_a_lap_directory_inside_the_adapter(map_adapter, tiny_model_dir, synthetic_data, capsys):
    from melora.adapters import adapter_kind
    from melora.laplace.posterior import laplace_adapter_dir, load_posterior, read_laplace_meta
    from scripts.laplace import main

    assert main(["--adapter", map_adapter, "--task", "obqa", "--model", tiny_model_dir, "--max-length", "64"]) == 0
    lap_dir = f"{map_adapter}/laplace"
    meta = read_laplace_meta(lap_dir)
    assert meta["adapter"] == ".." and laplace_adapter_dir(lap_dir) == map_adapter
    assert (meta["split"], meta["n_examples"], meta["prior_method"]) == ("train", 16, "marglik")
    assert meta["prior_precision"] > 0 and math.isfinite(meta["log_marginal_likelihood"])
    posterior = load_posterior(lap_dir, meta["prior_precision"])
    assert posterior.n_params == meta["n_params"] == 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)  # 2 layers: q, v
    assert adapter_kind(map_adapter) == "lora"  # the MAP directory stays a plain LoRA adapter


def test_val_nll_prior_uses_the_validation_split(map_adapter, tiny_model_dir, synthetic_data, tmp_path):
    out = _fit(map_adapter, tiny_model_dir, prior_method="val_nll", output_dir=str(tmp_path / "lap"))
    meta = json.loads((out / "laplace.json").read_text())
    search = meta["prior_search"]
    assert search["n_val"] == 8 and len(search["val_nll"]) == len(search["log10_grid"])
    best = min(range(len(search["val_nll"])), key=search["val_nll"].__getitem__)
    assert meta["prior_precision"] == pytest.approx(10 ** search["log10_grid"][best])
    assert meta["adapter"].endswith("map")


def test_bad_inputs_are_refused(map_adapter, tiny_model_dir, synthetic_data, tmp_path):
    from melora.laplace.fit import LaplaceFitConfig
    from melora.laplace.posterior import laplace_adapter_dir

    with pytest.raises(MeloraError, match="prior_method"):
        LaplaceFitConfig(adapter=map_adapter, task="obqa", prior_method="evidence")
    out = _fit(map_adapter, tiny_model_dir, train_limit=4)
    (tmp_path / "map" / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(AdapterError, match="changed since the Laplace posterior"):
        laplace_adapter_dir(out)


def test_harness_scores_are_the_glm_predictive(map_adapter, tiny_model_dir, synthetic_data):
    """`MeloraLM` on a LAP directory returns, per choice, the log GLM predictive of `melora.laplace`."""
    from harness_models.melora_lm import MeloraLM
    from melora.laplace.posterior import load_posterior, read_laplace_meta
    from melora.laplace.predictive import glm_moments, predictive_log_probs
    from melora.protocol import answer_token_ids, load_examples
    from melora.readout import collate

    lap_dir = _fit(map_adapter, tiny_model_dir, train_limit=8)
    examples = None
    for samples in (0, 3):
        lm = MeloraLM(pretrained=tiny_model_dir, adapter=str(lap_dir), samples=samples, batch_size=3, device="cpu")
        assert lm.adapters.kind == "laplace" and lm.get_model_info()["laplace_predictive"] in ("probit", "glm_mc_3")
        examples = examples or load_examples("obqa", "test", tokenizer=lm.tokenizer, max_length=64, limit=3)
        requests = []
        for ex in examples:
            context = lm.tok_encode(ex.prompt)
            for token in answer_token_ids(lm.tokenizer, ex):
                requests.append(((ex.prompt, lm.tokenizer.decode([token])), context, [token]))
        scores = [ll for ll, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        got = torch.tensor(scores).view(len(examples), -1)
        meta = read_laplace_meta(lap_dir)
        posterior = load_posterior(lap_dir, meta["prior_precision"])
        batch = collate(examples, lm.tokenizer)
        moments = glm_moments(lm.model, batch, posterior)
        if samples == 0:
            expected = predictive_log_probs(moments, 0)
            torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)
        assert torch.allclose(got.exp().sum(-1), torch.ones(len(examples)), atol=1e-4)


def test_harness_refuses_multi_token_answers(map_adapter, tiny_model_dir, synthetic_data):
    from harness_models.melora_lm import MeloraLM

    lap_dir = _fit(map_adapter, tiny_model_dir, train_limit=4)
    lm = MeloraLM(pretrained=tiny_model_dir, adapter=str(lap_dir), samples=0, batch_size=2, device="cpu")
    with pytest.raises(MeloraError, match="single-token answers"):
        lm._loglikelihood_tokens([(("Q:", " red blue"), [1, 2], [3, 4])], disable_tqdm=True)
