"""`--model melora` averages whole multi-token answers over samples: log mean_s exp(sum_t log p_s(token_t))."""

from __future__ import annotations

import math

import peft
import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM

from harness_models.melora_lm import MeloraLM, doc_seed
from melora.adapters import MeLoraConfig
from melora.adapters.sampling import row_seed, sampling
from tests.training_fixtures import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, embedded_model_path):
    root = tmp_path_factory.mktemp("whole-answer")
    base = write_tiny_model(root / "base", embedded_model_path)
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        MeLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
            elif "melora_H" in name:
                param.fill_(1.0)
    model.save_pretrained(root / "adapter")
    return str(base), str(root / "adapter")


def _requests(pairs: list[tuple[str, str]], doc_id: int) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, idx=k, metadata=("task", doc_id, 1)) for k, pair in enumerate(pairs)]


def _brute_force(lm: MeloraLM, prompt: str, pairs: list[tuple[str, str]], samples: int) -> list[float]:
    """A loop over samples: each sample scores each full (context + continuation) sequence on its own."""
    tok = lm.tokenizer
    seed = doc_seed(lm.seed, tok(prompt).input_ids)
    per_sample = []
    for s in range(samples):
        scores = []
        for context, continuation in pairs:
            ctx = tok(context).input_ids
            whole = tok(context + continuation).input_ids
            with torch.no_grad(), sampling(lm.model, "sample", seeds=[row_seed(seed, s)]):
                log_probs = lm.model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            scores.append(sum(log_probs[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
        per_sample.append(scores)
    values = torch.tensor(per_sample, dtype=torch.float64)  # (S, K)
    return (torch.logsumexp(values, 0) - math.log(samples)).tolist()


def test_multi_token_answers_are_averaged_whole(tiny):
    base, adapter = tiny
    lm = MeloraLM(pretrained=base, adapter=adapter, samples=3, seed=5, batch_size=4, device="cpu")
    prompt = "Question: which of these is bright?\nAnswer:"
    pairs = [(prompt, " the noon sun in summer"), (prompt, " a moonless night")]
    assert all(len(lm.tokenizer(p + c).input_ids) - len(lm.tokenizer(p).input_ids) >= 2 for p, c in pairs)
    got = [ll for ll, _ in lm.loglikelihood(_requests(pairs, 0), disable_tqdm=True)]
    expected = _brute_force(lm, prompt, pairs, 3)
    assert got == pytest.approx(expected, abs=1e-4)
    per_token = [ll for ll, _ in MeloraLM.__mro__[1].loglikelihood(lm, _requests(pairs, 0), disable_tqdm=True)]
    assert max(abs(a - b) for a, b in zip(per_token, expected)) > 1e-3  # per-token averaging is another quantity


def test_winogrande_style_contexts_share_one_sample(tiny):
    base, adapter = tiny
    lm = MeloraLM(pretrained=base, adapter=adapter, samples=2, seed=1, batch_size=8, device="cpu")
    prompt = "Sarah was a better surgeon than Maria so"
    pairs = [
        (prompt + " Sarah", " always got the easier cases."),
        (prompt + " Maria", " always got the easier cases."),
    ]
    got = [ll for ll, _ in lm.loglikelihood(_requests(pairs, 3), disable_tqdm=True)]
    assert got == pytest.approx(_brute_force(lm, prompt, pairs, 2), abs=1e-4)
    # the same numbers whatever else is in the call, and at another batch size
    other = _requests([("Question: x?\nAnswer:", " a b c"), ("Question: x?\nAnswer:", " d e")], 4)
    lm.batch_size_per_gpu = 1
    again = [ll for ll, _ in lm.loglikelihood(other + _requests(pairs, 3), disable_tqdm=True)][2:]
    assert again == pytest.approx(got, abs=1e-5)
