"""Evaluation: exact Bayesian averaging of multi-token answers, and reproducible Monte-Carlo scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from melora.evaluation import evaluate_examples, predict_probs
from melora.protocol import Example
from melora.seeding import stable_seed
from tests.adapters.conftest import tiny_peft
from tests.test_readout import CharTokenizer


SEED, SAMPLES, HEAD_SCALE = 7, 5, 30.0
# 2-token answers for CharTokenizer (" r" + "d", ...); different prompt lengths and choice counts
EXAMPLES = [
    Example("Q: which is red?\nAnswer:", (" rd", " bl", " gr"), 0, "doc-0", answer_format="cloze"),
    Example("Q: no?\nAnswer:", (" ye", " no"), 1, "doc-1", answer_format="cloze"),
    Example("Tom beat Ann so", (" wo", " wo"), 0, "doc-2", (" Tom", " Ann"), "cloze"),
]


@pytest.fixture(scope="module")
def bayesian_model() -> torch.nn.Module:
    # a wide posterior (std_init), a large B and sharp output distributions (a scaled-up head), so that the samples
    # really differ: a random tiny model is otherwise near-uniform over its vocabulary
    model = tiny_peft("melora", seed=3, b_std=1.0, std_init=0.5)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    return model


def _token_log_probs(model, tok, example: Example, seeds: list[int] | None) -> list[torch.Tensor]:
    """Per choice, the answer tokens' log-probs `(S, T_k)`: one full forward per (sample, choice)."""
    from melora.adapters.sampling import sampling

    out = []
    for context, continuation in example.scored_pairs():
        n_context = len(tok(context).input_ids)
        ids = tok(context + continuation).input_ids
        per_sample = []
        for seed in seeds:
            with sampling(model, "sample", seeds=[seed]), torch.no_grad():
                log_probs = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)  # (T, V)
            per_sample.append(torch.stack([log_probs[t - 1, ids[t]] for t in range(n_context, len(ids))]))
        out.append(torch.stack(per_sample))  # (S, T_k)
    return out


def _seeds(example: Example) -> list[int]:
    from melora.adapters.sampling import sample_seeds

    return sample_seeds([stable_seed(SEED, example.doc_id)], SAMPLES)


def test_cloze_posterior_predictive_is_the_mean_probability_of_the_whole_answer(bayesian_model):
    tok = CharTokenizer()
    got = predict_probs(bayesian_model, tok, EXAMPLES, samples=SAMPLES, seed=SEED, batch_size=8)
    gaps = []
    for example, probs in zip(EXAMPLES, got):
        token_lp = _token_log_probs(bayesian_model, tok, example, _seeds(example))
        assert all(t.shape == (SAMPLES, 2) for t in token_lp)  # two scored tokens per answer
        # brute force: log mean_s exp(sum_t log p_s(token_t)), then normalised over the question's choices
        exact = torch.stack([torch.logsumexp(t.sum(1), 0) - math.log(SAMPLES) for t in token_lp])
        np.testing.assert_allclose(probs, exact.softmax(0).numpy(), atol=1e-5, rtol=0)
        # averaging per-token distributions first, sum_t log mean_s p_s(token_t), is another quantity
        per_token = torch.stack([(torch.logsumexp(t, 0) - math.log(SAMPLES)).sum() for t in token_lp])
        gaps.append(np.abs(probs - per_token.softmax(0).numpy()).max())
    assert max(gaps) > 1e-2, gaps


def test_cloze_scores_do_not_depend_on_the_batch_size(bayesian_model):
    tok = CharTokenizer()
    one = predict_probs(bayesian_model, tok, EXAMPLES, samples=SAMPLES, seed=SEED, batch_size=1)
    many = predict_probs(bayesian_model, tok, EXAMPLES, samples=SAMPLES, seed=SEED, batch_size=64)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    other_seed = predict_probs(bayesian_model, tok, EXAMPLES, samples=SAMPLES, seed=SEED + 1, batch_size=64)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(many, other_seed))


def test_cloze_posterior_mean_and_metrics(bayesian_model):
    from melora.adapters.sampling import sampling

    tok = CharTokenizer()
    mean = predict_probs(bayesian_model, tok, EXAMPLES, samples=0)
    for example, probs in zip(EXAMPLES, mean):
        assert probs.shape == (len(example.answers),) and probs.sum() == pytest.approx(1.0)
        with sampling(bayesian_model, "mean"), torch.no_grad():
            lls = []
            for context, continuation in example.scored_pairs():
                n_context, ids = len(tok(context).input_ids), tok(context + continuation).input_ids
                lp = bayesian_model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
                lls.append(sum(lp[t - 1, ids[t]] for t in range(n_context, len(ids))))
        np.testing.assert_allclose(probs, torch.stack(lls).softmax(0).numpy(), atol=1e-5, rtol=0)
    metrics = evaluate_examples(bayesian_model, tok, EXAMPLES, samples=SAMPLES, seed=SEED)
    assert metrics["n"] == 3 and 0 <= metrics["acc"] <= 1 and metrics["nll"] > 0


def test_mc_dropout_scores_do_not_depend_on_the_batch_size():
    import peft

    from tests.adapters.conftest import tiny_base

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.4)
    model = peft.get_peft_model(tiny_base(seed=3), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1.0)
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    model.eval()
    tok = CharTokenizer()
    kwargs = dict(samples=SAMPLES, seed=SEED, mc_dropout=True)
    one = predict_probs(model, tok, EXAMPLES, batch_size=1, **kwargs)
    many = predict_probs(model, tok, EXAMPLES, batch_size=64, **kwargs)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    deterministic = predict_probs(model, tok, EXAMPLES, batch_size=64, samples=SAMPLES, seed=SEED)
    other_seed = predict_probs(model, tok, EXAMPLES, batch_size=64, samples=SAMPLES, seed=SEED + 1, mc_dropout=True)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(many, deterministic))
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(many, other_seed))
    assert not any(m.training for m in model.modules())  # left in eval mode, dropout modules included
