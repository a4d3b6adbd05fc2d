"""Hooks of the `melora_*` lm-eval tasks: documents from `melora.protocol`, metrics from `melora.metrics`.

The YAMLs beside this file name these functions with `!function utils.<name>`. Nothing here renders a prompt or
computes a metric itself: the protocol module renders (the same prompt and answer tokens as training, the test split
as the protocol defines it) and the metrics module computes, so the numbers of a task equal those of
`melora.evaluation` on the same predictions.

Per document, `process_results` returns four items:

- `acc`: 1.0 if the most probable choice is gold (mean-aggregated);
- `nll`: `-log p(gold)` (mean-aggregated);
- `ece`: `[confidence, correct]`, aggregated by `ece` into the 15-bin top-label ECE of the task;
- `brier`: `[gold, probs]`, aggregated by `brier` into the mean Brier score of the task.

`probs` are the choice-normalised probabilities (softmax over the question's own choices of the log-likelihoods lm-eval
computed for them). The `brier` item therefore carries everything a pooled metric over several tasks needs; it is
written to the `--log_samples` files, which `melora report` reads.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase


class _CustomKwargsHint(logging.Filter):
    """Drop lm-eval's per-task hint about passing custom-dataset kwargs through `--metadata`, for our tasks only.

    lm-eval logs it as a warning for every task built from a `custom_dataset`, whatever its config; ours take
    nothing from `--metadata` (the model_args reach `load_test_split` by themselves), so six tasks meant six
    warnings that asked the user for nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("melora_") and ": Custom kwargs can be passed to `--metadata`" in message)


_TASK_LOGGER = logging.getLogger("lm_eval.api.task")
if not any(type(f).__name__ == "_CustomKwargsHint" for f in _TASK_LOGGER.filters):  # lm-eval may load this twice
    _TASK_LOGGER.addFilter(_CustomKwargsHint())


def load_test_split(
    melora_task: str, pretrained: Any = None, tokenizer: Any = None, answer_format: str = "letters", **kwargs: Any
) -> datasets.DatasetDict:
    """The rendered test split of one task, as a `datasets.DatasetDict` with a single `test` split.

    lm-eval calls it as `custom_dataset(**metadata, **dataset_kwargs)`; the metadata holds the model_args, so
    `pretrained` (and `tokenizer`, when given) name the model whose tokenizer shortens over-long prompts exactly as
    in training (`melora.protocol.render(..., tokenizer=..., max_length=300)`). Without them the embedded model's
    tokenizer is used. Other keys (the rest of the model_args, `version`) are ignored.

    Args:
        melora_task (`str`): the protocol's task name (`arc_c`), from the YAML's `dataset_kwargs`.
        answer_format (`str`): `letters` or `cloze` (the `*_cloze` tasks), from the YAML's `dataset_kwargs`.
        pretrained: the model_args' `pretrained` (a path or hub id), or `None`.
        tokenizer: the model_args' `tokenizer`, or `None`.

    Returns:
        `datasets.DatasetDict`: `test` rows with `prompt`, `choices` (the answer strings, leading space included),
        `gold` (index) and `doc_id` (`<task>/test/<row>`); for the cloze format also `contexts` (`prompt` plus each
        choice's unscored context: WinoGrande's option in the blank) and `answer` (the continuation WinoGrande
        scores, the same for both options), which lm-eval's multiple-input mode reads.

    Raises:
        melora.errors.DataNotFoundError: the data is available neither from the hub nor under `MELORA_DATA_DIR`.
    """
    import datasets

    from melora.protocol import get_task, load_examples

    spec = get_task(melora_task)
    examples = load_examples(
        spec, "test", tokenizer=_tokenizer(_tokenizer_source(pretrained, tokenizer)), answer_format=answer_format
    )
    rows = [
        {"prompt": ex.prompt, "choices": list(ex.answers), "gold": ex.gold, "doc_id": ex.doc_id} for ex in examples
    ]
    if answer_format != "letters":
        from melora.protocol import choice_score_scale

        for row, ex in zip(rows, examples):
            row["contexts"] = [context for context, _ in ex.scored_pairs()]
            row["answer"] = ex.answers[0]
            row["score_scale"] = choice_score_scale(ex)  # 1, or 1 / answer length (cloze_norm)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _tokenizer_source(pretrained: Any, tokenizer: Any) -> str:
    from melora.embedded_model import resolve_model

    if isinstance(tokenizer, str) and tokenizer:
        return tokenizer
    return resolve_model(pretrained if isinstance(pretrained, str) else None)


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, loaded once per process (every task of a run shares it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def process_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Per-document items of `acc`, `nll`, `ece` and `brier` from the choices' `(log-likelihood, is_greedy)` pairs."""
    from melora.metrics import nll, normalise_log_likelihoods, top_label

    scale = doc.get("score_scale") or [1.0] * len(results)  # cloze_norm: log-likelihood per answer character
    probs = normalise_log_likelihoods([float(ll) * s for (ll, _), s in zip(results, scale)])  # (K,) float64
    gold = int(doc["gold"])
    confidence, correct = top_label([probs], [gold])
    return {
        "acc": float(correct[0]),
        "nll": nll([probs], [gold]),
        "ece": [float(confidence[0]), float(correct[0])],
        "brier": [gold, [float(p) for p in probs]],
    }


def ece(items: Sequence[Sequence[float]]) -> float:
    """Top-label ECE (15 equal-width bins, L1) of a task from its `[confidence, correct]` items."""
    from melora.metrics import calibration_error_from_top_label

    return calibration_error_from_top_label([c for c, _ in items], [a for _, a in items])


def brier(items: Sequence[tuple[int, Sequence[float]]]) -> float:
    """Mean Brier score `sum_k (p_k - onehot_k)^2` of a task from its `[gold, probs]` items."""
    from melora.metrics import brier as brier_score

    return brier_score([probs for _, probs in items], [gold for gold, _ in items])
