"""The `melora` lm-eval model: model_args, adapter loading, and the Monte-Carlo predictive of `_model_call`."""

from __future__ import annotations

import math

import pytest
import torch

from melora.errors import AdapterError, MeloraError, MeloraWarning
from tests.conftest import TINY_LLAMA as TINY


def _tiny_base_dir(path, seed: int = 0, **overrides: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).save_pretrained(path)
    return str(path)


def _tiny_adapter_dir(base_dir: str, path, kind: str = "melora", seed: int = 0, **config: object) -> str:
    import peft
    from transformers import AutoModelForCausalLM

    from melora.adapters import MeLoraConfig

    cls = MeLoraConfig if kind == "melora" else peft.LoraConfig
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        cls(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **config),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif "melora_H" in name:
                param.fill_(0.7)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = _tiny_base_dir(root / "base")
    return {
        "base": base,
        "melora": _tiny_adapter_dir(base, root / "melora"),
        "lora": _tiny_adapter_dir(base, root / "lora", kind="lora", lora_dropout=0.3),
        "other_base": _tiny_base_dir(root / "other", hidden_size=48),
    }


def _lm(tiny_dirs, embedded_model_path, **kwargs):
    from harness_models.melora_lm import MeloraLM

    # The tiny model has no tokenizer of its own; `_model_call` only sees token ids (< 128 here).
    return MeloraLM(pretrained=tiny_dirs["base"], tokenizer=embedded_model_path, device="cpu", **kwargs)


# -- model_args --------------------------------------------------------------------------------------------


def test_unknown_model_arg_is_named_with_the_valid_ones():
    from harness_models.melora_lm import MeloraLM

    with pytest.raises(
        MeloraError, match=r"Unknown model_arg 'sampels' \(did you mean 'samples'\?\).*Valid: .*adapter"
    ):
        MeloraLM(sampels=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": -1}, "`samples` to be an int >= 0, but got -1"),
        ({"samples": 2.5}, "`samples` to be an int"),
        ({"average": "mean"}, "`average` to be one of"),
        ({"seed": -3}, "`seed` to be an int"),
        ({"mc_dropout": "maybe"}, "`mc_dropout` to be true or false"),
        ({"peft": "x"}, "pass the adapter as `adapter=`"),
    ],
)
def test_invalid_model_args(kwargs, match):
    from harness_models.melora_lm import MeloraLM

    with pytest.raises(MeloraError, match=match):
        MeloraLM(**kwargs)


def test_missing_adapter_is_refused_before_loading(tmp_path):
    from harness_models.melora_lm import MeloraLM

    with pytest.raises(AdapterError, match="does not exist"):
        MeloraLM(adapter=str(tmp_path / "nope"))


def test_adapter_of_another_base_model_is_refused(tiny_dirs, embedded_model_path):
    from harness_models.melora_lm import MeloraLM

    with pytest.raises(AdapterError, match="does not fit this base model"):
        MeloraLM(pretrained=tiny_dirs["other_base"], tokenizer=embedded_model_path, adapter=tiny_dirs["melora"])


def test_melora_adapter_is_loaded_as_melora(tiny_dirs, embedded_model_path):
    from melora.adapters import MeLoraLinear

    lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["melora"], samples=3)
    layers = [m for m in lm.model.modules() if isinstance(m, MeLoraLinear)]
    assert len(layers) == 2 * TINY["num_hidden_layers"]
    assert all("default" in m.lora_melora_H for m in layers)
    info = lm.get_model_info()
    assert (info["adapter_kind"], info["samples"], info["average"], info["seed"]) == ("melora", 3, "probs", 0)


def test_plain_lora_with_samples_warns_and_runs_one_pass(tiny_dirs, embedded_model_path):
    with pytest.warns(MeloraWarning, match="samples=5 is ignored"):
        lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["lora"], samples=5)
    assert lm.samples == 0 and lm.get_model_info()["adapter_kind"] == "lora"


# -- the Monte-Carlo predictive ----------------------------------------------------------------------------


def _reference(lm, inps, seeds, n_samples):
    """`S` separate forwards per row with the documented seeds, averaged with `melora.predictive`."""
    from melora.adapters.sampling import row_seed, sampling
    from melora.predictive import average_log_probs

    out = []
    with torch.no_grad():
        for row, seed in zip(inps, seeds):
            passes = []
            for s in range(n_samples):
                with sampling(lm.model, "sample", seeds=[row_seed(seed, s)]):
                    passes.append(torch.log_softmax(lm.model(row[None]).logits.float(), dim=-1)[0])
            out.append(average_log_probs(torch.stack(passes), "probs"))
    return torch.stack(out)


def test_model_call_is_the_seeded_posterior_predictive_at_any_batch_size(tiny_dirs, embedded_model_path):
    lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["melora"], samples=3, seed=7)
    inps = torch.randint(0, TINY["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(1))
    seeds = lm._doc_seeds(inps)
    expected = _reference(lm, inps, seeds, 3)
    for batch_size in (1, 2, 9):
        lm.batch_size_per_gpu = batch_size
        got = lm._model_call(inps)
        assert got.shape == (3, 9, TINY["vocab_size"])
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    lm.seed = 8
    assert not torch.allclose(lm._model_call(inps), got)


def test_samples_zero_is_the_posterior_mean(tiny_dirs, embedded_model_path):
    from melora.adapters.sampling import sampling

    lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["melora"], samples=0)
    inps = torch.randint(0, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), sampling(lm.model, "mean"):
        expected = lm.model(inps).logits
    torch.testing.assert_close(lm._model_call(inps), expected)
    assert lm.get_model_info()["sampling"] == "posterior_mean"


def test_rows_of_one_context_share_a_seed(tiny_dirs, embedded_model_path):
    lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["melora"], samples=2)
    context, choices = [5, 6, 7, 8], [[9, 10], [11, 12, 13]]  # multi-token choices: different rows, one document
    requests = [(("c", "x"), context, choice) for choice in choices]
    seen = []
    original = lm._model_call
    lm._model_call = lambda inps, *a, **k: (seen.append(lm._doc_seeds(inps)), original(inps, *a, **k))[1]
    lm._loglikelihood_tokens(requests, disable_tqdm=True)
    seeds = [s for batch in seen for s in batch]
    assert len(seeds) == 2 and seeds[0] == seeds[1]


def test_ensemble_averages_member_probabilities(tiny_dirs, embedded_model_path, tmp_path):
    import json
    import shutil

    for i, seed in enumerate((1, 2)):
        _tiny_adapter_dir(tiny_dirs["base"], tmp_path / f"m{i}", kind="lora", seed=seed)
    (tmp_path / "ensemble.json").write_text(json.dumps({"kind": "ensemble", "members": ["m0", "m1"]}))
    lm = _lm(tiny_dirs, embedded_model_path, adapter=str(tmp_path), samples=0)
    inps = torch.randint(0, TINY["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(3))
    members = []
    for i in range(2):
        single = _lm(tiny_dirs, embedded_model_path, adapter=str(tmp_path / f"m{i}"), samples=0)
        members.append(torch.log_softmax(single._model_call(inps).float(), dim=-1))
    expected = torch.logsumexp(torch.stack(members), dim=0) - math.log(2)
    torch.testing.assert_close(lm._model_call(inps), expected, atol=1e-5, rtol=0)
    assert lm.get_model_info()["adapter_kind"] == "ensemble:lora"
    shutil.rmtree(tmp_path / "m1")
    (tmp_path / "ensemble.json").write_text(json.dumps({"kind": "ensemble", "members": []}))
    with pytest.raises(AdapterError, match="at least one member"):
        _lm(tiny_dirs, embedded_model_path, adapter=str(tmp_path))


def test_mc_dropout_is_stochastic_and_repeatable_at_any_batch_size(tiny_dirs, embedded_model_path):
    lm = _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["lora"], samples=4, mc_dropout=True)
    inps = torch.randint(0, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(4))
    first, second = lm._model_call(inps), lm._model_call(inps)
    torch.testing.assert_close(first, second)
    for batch_size in (1, 3, 8):  # the 8 passes split into forwards of 1, 3 (uneven) or 8 rows
        lm.batch_size_per_gpu = batch_size
        torch.testing.assert_close(lm._model_call(inps), first, rtol=1e-5, atol=1e-5)
    lm.seed = 1
    assert not torch.allclose(lm._model_call(inps), first, atol=1e-4)
    lm.seed = 0
    lm.samples, lm.mc_dropout = 0, False
    assert not torch.allclose(torch.log_softmax(lm._model_call(inps), dim=-1), first, atol=1e-4)


def test_results_config_records_the_training_method(tiny_dirs, embedded_model_path, tmp_path):
    import json
    import shutil

    adapter = tmp_path / "map-adapter"
    shutil.copytree(tiny_dirs["lora"], adapter)
    (adapter / "training_info.json").write_text(json.dumps({"method": "map", "step": 10}))
    info = _lm(tiny_dirs, embedded_model_path, adapter=str(adapter), samples=0).get_model_info()
    assert info["adapter_kind"] == "lora" and info["training_method"] == "map"
    assert (
        _lm(tiny_dirs, embedded_model_path, adapter=tiny_dirs["lora"], samples=0).get_model_info()["training_method"]
        is None
    )
