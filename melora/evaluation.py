"""Score rendered examples with a model: choice probabilities per question, then ACC / ECE / NLL / Brier.

The same code computes validation metrics during training and the zero-shot numbers of `melora zero-shot`;
the lm-eval tasks compute the same metrics with `melora.metrics` from lm-eval's log-likelihoods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from melora.metrics import summarize
from melora.readout import choice_log_probs, collate


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from melora.protocol import Example


@torch.no_grad()
def predict_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """Choice probabilities of each example (float64 vectors, one per example, in order).

    Args:
        model: a causal LM (or a PEFT model over one) in the state it should be evaluated in.
        tokenizer: its tokenizer.
        examples: rendered examples (`melora.protocol.load_examples`).
        batch_size: questions per forward.
        progress: show a progress bar (a string is used as its label).
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int, but got {batch_size!r}.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    starts = range(0, len(examples), batch_size)
    bar = tqdm(starts, desc=progress if isinstance(progress, str) else "scoring", disable=not progress, leave=False)
    try:
        for start in bar:
            chunk = examples[start : start + batch_size]
            batch = collate(chunk, tokenizer).to(device)
            log_probs = choice_log_probs(model, batch).double().cpu()
            for row, ex in zip(log_probs, chunk):
                out.append(row[: len(ex.answers)].exp().numpy())
    finally:
        model.train(was_training)
    return out


def evaluate_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    progress: bool | str = False,
) -> dict[str, float]:
    """`acc`, `ece`, `nll`, `brier` (and `n`) of `model` on `examples`."""
    probs = predict_probs(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    metrics = summarize(probs, [ex.gold for ex in examples])
    metrics["n"] = len(examples)
    return metrics
