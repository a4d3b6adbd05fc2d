"""Score rendered examples with a model: choice probabilities per question, then ACC / ECE / NLL / Brier.

The same code computes validation metrics during training and the numbers of `melora zero-shot`; the lm-eval tasks
compute the same metrics with `melora.metrics` from lm-eval's log-likelihoods.

Posterior samples: with `samples = S > 0` on a model with Bayesian layers (Me-LoRA, BLoB), each question is
repeated `S` times in one batched forward, sample `s` of a question drawing its weights from
`row_seed(stable_seed(seed, doc_id), s)`, and the `S` choice distributions are averaged (`average`, default the
posterior predictive `probs`). The numbers therefore depend on the seed and the documents only, not on the batch
size. `samples = 0` evaluates the posterior mean. With `mc_dropout`, the LoRA dropout layers stay active and the
`S` passes differ by their dropout masks, keyed by the same row seeds (`melora.mc_dropout`): batch-size independent
too.

Multi-token answers (the cloze format): the posterior predictive of a choice is the mean over samples of that
sample's probability of the whole answer text, `log mean_s exp(sum_t log p_s(token_t))`, then normalised over the
question's choices: `p(k) = mean_s P_s(a_k) / sum_j mean_s P_s(a_j)`, which is what lm-eval computes from the
`melora` model's per-request log-likelihoods. Each sample `s` of a question is one packed row holding the prompt and
every choice (`melora.cloze_readout`), so all choices of a question are scored with the same weight sample; the
summed log-likelihoods are averaged over samples before the normalisation. Averaging per-token distributions first
would be a different (and wrong) quantity. In the letter format the per-sample read-out is already normalised over
the choices and is averaged as it is (single tokens: the two orders of "sum over tokens" and "mean over samples"
coincide).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from melora.cloze_readout import ClozeBatch, choice_sequence_log_probs
from melora.metrics import normalise_log_likelihoods, summarize
from melora.predictive import average_log_probs
from melora.protocol import choice_score_scale
from melora.readout import ChoiceBatch, choice_log_probs, collate_examples
from melora.seeding import stable_seed


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from melora.protocol import Example


def has_bayesian_layers(model: torch.nn.Module) -> bool:
    """True when `model` holds Me-LoRA or BLoB layers (without importing PEFT for a plain model)."""
    import sys

    if "melora.adapters.sampling" not in sys.modules and "peft" not in sys.modules:
        return False
    from melora.adapters.sampling import bayesian_adapters

    return bool(bayesian_adapters(model))


@torch.no_grad()
def predict_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    samples: int = 0,
    seed: int = 0,
    average: str = "probs",
    mc_dropout: bool = False,
    doc_seeds: Sequence[int] | None = None,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """Posterior-averaged log-likelihood of each choice's answer, not normalised over the choices (float64).

    For a choice `k` this is `log mean_s exp(ll_s(k))` (`average="probs"`), `ll_s(k)` being the sample's
    log-likelihood of the whole answer (one token in the letter format, the sum over its tokens in the cloze
    format): what lm-eval's `loglikelihood` returns for the `(prompt + context, answer)` request.

    Args:
        model: a causal LM, or a PEFT model over one.
        tokenizer: its tokenizer.
        examples: rendered examples (`melora.protocol.load_examples`), all of one answer format.
        batch_size: forward rows per call; with `S` samples, `max(1, batch_size // S)` questions per call.
        samples: posterior (or dropout) samples per question; 0 = posterior mean / deterministic.
        seed: run seed of the posterior samples.
        average: `probs` or `logits` (see `melora.predictive`).
        mc_dropout: keep LoRA dropout active (MC dropout baseline).
        doc_seeds: one seed per example (default `stable_seed(seed, doc_id)`); sample `s` of example `i` uses
            `row_seed(doc_seeds[i], s)`.
        progress: show a progress bar (a string is used as its label).
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int, but got {batch_size!r}.")
    if samples < 0:
        raise ValueError(f"Expected `samples` to be >= 0, but got {samples!r}.")
    if doc_seeds is not None and len(doc_seeds) != len(examples):
        raise ValueError(f"Expected one doc seed per example ({len(examples)}), but got {len(doc_seeds)}.")
    if doc_seeds is None:
        doc_seeds = [stable_seed(seed, ex.doc_id) for ex in examples]
    bayesian = has_bayesian_layers(model)
    n_samples = samples if (samples > 0 and (bayesian or mc_dropout)) else 1
    per_call = max(1, batch_size // n_samples)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    starts = range(0, len(examples), per_call)
    bar = tqdm(starts, desc=progress if isinstance(progress, str) else "scoring", disable=not progress, leave=False)
    try:
        for start in bar:
            chunk = examples[start : start + per_call]
            batch = collate_examples(chunk, tokenizer).to(device)
            log_liks = _sampled_log_probs(
                model,
                batch,
                doc_seeds[start : start + per_call],
                n_samples,
                sample=bayesian and samples > 0,
                bayesian=bayesian,
                mc_dropout=mc_dropout and samples > 0,
            )  # (B * S, K)
            averaged = average_log_probs(log_liks.view(len(chunk), n_samples, -1), average, dim=1).cpu()  # (B, K)
            out += [row[: len(ex.answers)].numpy() for row, ex in zip(averaged, chunk)]
    finally:
        model.train(was_training)
    return out


def predict_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    **kwargs,
) -> list[np.ndarray]:
    """Choice probabilities of each example (float64 vectors, one per example, in order).

    The posterior-averaged answer log-likelihoods (`predict_log_likelihoods`, which takes the same `kwargs`) are
    normalised over each question's own choices: samples are averaged first, choices normalised after, which is
    lm-eval's order (in the `cloze_norm` format each log-likelihood is first divided by its answer's length).
    """
    lls = predict_log_likelihoods(model, tokenizer, examples, **kwargs)
    return [normalise_log_likelihoods(ll * np.asarray(choice_score_scale(ex))) for ll, ex in zip(lls, examples)]


def _sampled_log_probs(
    model: PreTrainedModel,
    batch: ChoiceBatch | ClozeBatch,
    doc_seeds: Sequence[int],
    n_samples: int,
    *,
    sample: bool,
    bayesian: bool,
    mc_dropout: bool,
) -> torch.Tensor:
    """(B * S, K) per-sample answer log-likelihoods, not normalised over the choices; rows doc-major, sample `s` of
    doc `b` at row `b * S + s`.

    Letters: the answer token's full-vocabulary log-probability. Cloze: the summed log-likelihood of the answer's
    tokens, one packed row per (question, sample), so the row's seed gives one weight sample (and one set of MC
    dropout masks) to the prompt and every choice. Either way the samples are averaged first and the choices
    normalised after, which is lm-eval's order (the `melora` lm-eval model computes the same numbers).
    """
    from melora.adapters.sampling import sample_seeds, sampling
    from melora.mc_dropout import seeded_lora_dropout

    if n_samples > 1:
        batch = batch.repeat_rows(n_samples)
    row_seeds = sample_seeds(list(doc_seeds), n_samples)
    with ExitStack() as stack:
        if sample:
            stack.enter_context(sampling(model, "sample", seeds=row_seeds))
        elif bayesian:
            stack.enter_context(sampling(model, "mean"))
        if mc_dropout:
            stack.enter_context(seeded_lora_dropout(model, row_seeds))
        if isinstance(batch, ClozeBatch):
            return choice_sequence_log_probs(model, batch)
        return choice_log_probs(model, batch, normalise=False)


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    **kwargs,
) -> dict[str, float]:
    """`acc`, `ece`, `nll`, `brier` (and `n`) of `model` on `examples`; `kwargs` go to `predict_probs`."""
    probs = predict_probs(model, tokenizer, examples, **kwargs)
    metrics = summarize(probs, [ex.gold for ex in examples])
    metrics["n"] = len(examples)
    return metrics
