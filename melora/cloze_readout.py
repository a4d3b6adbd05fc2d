"""The cloze read-out: the summed log-likelihood of each choice's answer tokens, the question's prefix run once.

In the cloze format (`melora.protocol`, `answer_format="cloze"`) choice `k` of a question is scored as
`log p(answer_k | prompt + context_k) = sum_t log p(answer_k[t] | prompt, context_k, answer_k[:t])`, the quantity
lm-eval's `loglikelihood` returns for the pair `(prompt + context_k, answer_k)`. `choice_sequence_log_probs`
returns these sums, **not** renormalised over the choices: training's cross-entropy and the metrics take
`log_softmax` over the question's choices, and Monte-Carlo evaluation averages the sums over posterior samples
first (`melora.evaluation`).

Packing: the shared prompt is processed once per question. A question becomes one row
`[prompt | context_0 answer_0 | context_1 answer_1 | ...]` with a block attention mask: every token sees the prompt
and the earlier tokens of its own choice segment, never another choice's; position ids restart after the prompt in
every segment, so each segment is computed exactly as if it followed the prompt alone (equal to the naive per-choice
full-sequence computation up to float rounding). The first token of every segment is predicted by the logits at the
prompt's last token, the others by the previous token of their own segment; only those positions are projected onto
the vocabulary (`logits_to_keep` as a boolean mask). A row costs `len(prompt) + sum_k len(choice_k)` tokens instead of
`K * len(prompt) + sum_k len(choice_k)` for K separate sequences.

Posterior samples: because a question (and all its choices) is one row, one weight sample per row serves the prompt
and every choice of that question: `sampling(model, "sample", seeds=...)` with one seed per row, exactly as for the
letter read-out, and rows doc-major `b * S + s` after `ClozeBatch.repeat_rows(S)`.

The attention mask is 4-D `(B, 1, T, T)`: boolean for SDPA (and flex) attention, additive float for eager. Flash
attention kernels take no arbitrary mask and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from melora.errors import MeloraError
from melora.protocol import Example, choice_score_scale, choice_token_ids


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROMPT_SEGMENT = 0
PAD_SEGMENT = -1


@dataclass
class ClozeBatch:
    """A padded batch of packed questions: `[prompt | choice 0 | choice 1 | ...]`, one row per question.

    Attributes:
        input_ids (`torch.LongTensor`): `(B, T)` packed tokens, right-padded.
        segment_ids (`torch.LongTensor`): `(B, T)`: 0 on the prompt, `k + 1` on choice `k`'s context and answer,
            -1 on padding.
        position_ids (`torch.LongTensor`): `(B, T)`: `0..P-1` on the prompt, `P, P+1, ...` again in every segment.
        score_positions (`torch.LongTensor`): `(B, M)` position whose logits predict each scored (answer) token.
        score_targets (`torch.LongTensor`): `(B, M)` the scored token ids.
        score_choices (`torch.LongTensor`): `(B, M)` the choice each scored token belongs to.
        score_mask (`torch.BoolTensor`): `(B, M)`, True on real scored tokens (rows are padded to `M`).
        choice_mask (`torch.BoolTensor`): `(B, K)`, True on real choices.
        labels (`torch.LongTensor`): `(B,)` gold choice index.
        score_scale (`torch.Tensor`): `(B, K)` factor of each choice's log-likelihood before the softmax over choices
            (`melora.protocol.choice_score_scale`: 1, or 1 / answer length in the `cloze_norm` format).
    """

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    position_ids: torch.Tensor
    score_positions: torch.Tensor
    score_targets: torch.Tensor
    score_choices: torch.Tensor
    score_mask: torch.Tensor
    choice_mask: torch.Tensor
    labels: torch.Tensor
    score_scale: torch.Tensor

    def to(self, device: torch.device | str) -> ClozeBatch:
        """The batch on `device`."""
        return ClozeBatch(**{k: v.to(device) for k, v in vars(self).items()})

    def repeat_rows(self, n: int) -> ClozeBatch:
        """Each row repeated `n` times in a row (`B*n` rows): row `b*n + s` is sample `s` of question `b`."""
        return ClozeBatch(**{k: v.repeat_interleave(n, dim=0) for k, v in vars(self).items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_cloze(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase) -> ClozeBatch:
    """Tokenise, pack and pad cloze examples (`melora.protocol.choice_token_ids` splits prompt, context, answer).

    Example:
        >>> batch = collate_cloze(examples, tokenizer)  # doctest: +SKIP
        >>> choice_sequence_log_probs(model, batch).log_softmax(-1)  # (B, K) choice-normalised  # doctest: +SKIP
    """
    rows, scores = [], []
    for ex in examples:
        prompt_ids, segments = choice_token_ids(tokenizer, ex)
        ids, segs, pos = list(prompt_ids), [PROMPT_SEGMENT] * len(prompt_ids), list(range(len(prompt_ids)))
        scored = []  # (predicting position, target token, choice)
        for k, (choice_ids, n_context) in enumerate(segments):
            start = len(ids)
            ids += choice_ids
            segs += [k + 1] * len(choice_ids)
            pos += range(len(prompt_ids), len(prompt_ids) + len(choice_ids))
            for j in range(n_context, len(choice_ids)):
                # token j of the segment is predicted by the prompt's last token (j = 0) or by token j - 1
                scored.append((len(prompt_ids) - 1 if j == 0 else start + j - 1, choice_ids[j], k))
        rows.append((ids, segs, pos))
        scores.append(scored)
    n_rows, width = len(examples), max(len(ids) for ids, _, _ in rows)
    n_scored, k_max = max(len(s) for s in scores), max(len(ex.answers) for ex in examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = ClozeBatch(
        input_ids=torch.full((n_rows, width), pad_id, dtype=torch.long),
        segment_ids=torch.full((n_rows, width), PAD_SEGMENT, dtype=torch.long),
        position_ids=torch.zeros((n_rows, width), dtype=torch.long),
        score_positions=torch.zeros((n_rows, n_scored), dtype=torch.long),
        score_targets=torch.zeros((n_rows, n_scored), dtype=torch.long),
        score_choices=torch.zeros((n_rows, n_scored), dtype=torch.long),
        score_mask=torch.zeros((n_rows, n_scored), dtype=torch.bool),
        choice_mask=torch.zeros((n_rows, k_max), dtype=torch.bool),
        labels=torch.tensor([ex.gold for ex in examples]),
        score_scale=torch.ones((n_rows, k_max), dtype=torch.float32),
    )
    for i, ((ids, segs, pos), scored, ex) in enumerate(zip(rows, scores, examples)):
        batch.input_ids[i, : len(ids)] = torch.tensor(ids)
        batch.segment_ids[i, : len(ids)] = torch.tensor(segs)
        batch.position_ids[i, : len(ids)] = torch.tensor(pos)
        positions, targets, choices = zip(*scored)
        batch.score_positions[i, : len(scored)] = torch.tensor(positions)
        batch.score_targets[i, : len(scored)] = torch.tensor(targets)
        batch.score_choices[i, : len(scored)] = torch.tensor(choices)
        batch.score_mask[i, : len(scored)] = True
        batch.choice_mask[i, : len(ex.answers)] = True
        batch.score_scale[i, : len(ex.answers)] = torch.tensor(choice_score_scale(ex))
    return batch


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean `(B, 1, T, T)` mask of packed rows: query `i` may attend to key `j` (True) when allowed.

    `j <= i`, both real tokens, and `j` on the prompt or in `i`'s own segment. A padding token attends to itself
    only, so no attention row is empty (an empty row would give NaN in SDPA); nothing real attends to padding.
    """
    t = segment_ids.shape[1]
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]  # (B, T, 1), (B, 1, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    real = (query != PAD_SEGMENT) & (key != PAD_SEGMENT)  # (B, T, T)
    same_or_prompt = (key == PROMPT_SEGMENT) | (key == query)  # (B, T, T)
    diagonal = torch.eye(t, dtype=torch.bool, device=segment_ids.device)  # (T, T)
    return ((causal & real & same_or_prompt) | diagonal)[:, None]  # (B, 1, T, T)


def choice_sequence_log_probs(model: PreTrainedModel, batch: ClozeBatch) -> torch.Tensor:
    """Summed log-likelihood of each choice's answer tokens, `(B, K)` float32, `-inf` on padded choices.

    Not renormalised over the choices: `log_softmax(result, -1)` gives the choice-normalised log-probabilities.
    The model is called once on the packed batch (through its own `forward`, so DDP and PEFT wrappers and the
    sampling context see the call: one weight sample per row serves the prompt and all choices of the question);
    gradients flow when the caller has them enabled.

    Raises:
        MeloraError: the model uses an attention implementation that takes no custom mask (flash attention).
    """
    allowed = packed_attention_mask(batch.segment_ids)  # (B, 1, T, T)
    implementation = _attention_implementation(model)
    if "flash" in implementation:
        raise MeloraError(
            f"The cloze read-out packs a question's choices with a block attention mask, which attention "
            f"implementation {implementation!r} cannot take; load the model with attn_implementation='sdpa' "
            "or 'eager'."
        )
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    keep = torch.zeros_like(batch.input_ids, dtype=torch.bool)  # (B, T) positions whose logits are needed
    row_of = torch.arange(len(batch), device=keep.device)[:, None].expand_as(batch.score_positions)  # (B, M)
    keep[row_of[batch.score_mask], batch.score_positions[batch.score_mask]] = True
    out = model(
        input_ids=batch.input_ids,
        attention_mask=allowed,
        position_ids=batch.position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1])  # (N, V): the kept positions, row-major
    vocab_log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    flat = keep.flatten().cumsum(0).view_as(keep) - 1  # (B, T) index of a kept position in `logits`
    rows = flat.gather(1, batch.score_positions)  # (B, M)
    token = vocab_log_probs[rows, batch.score_targets]  # (B, M)
    token = token.masked_fill(~batch.score_mask, 0.0)
    summed = torch.zeros(batch.choice_mask.shape, dtype=token.dtype, device=token.device)  # (B, K)
    summed = summed.scatter_add(1, batch.score_choices, token)
    return summed.masked_fill(~batch.choice_mask, -math.inf)


def _attention_implementation(model: torch.nn.Module) -> str:
    """The attention implementation of a (possibly DDP- or PEFT-wrapped) transformers model."""
    inner = getattr(model, "module", model)  # DDP
    config = getattr(inner, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "sdpa")
