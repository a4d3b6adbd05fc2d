"""The answer read-out: log-probabilities of each choice's answer token at the position after the prompt.

Training (cross-entropy over the answer tokens) and evaluation (ACC/ECE/NLL) both go through `collate` and
`choice_log_probs`, so they read the same position with the same tokens as the lm-eval tasks: the log-softmax
over the whole vocabulary at the last prompt token, restricted to the question's answer tokens and
renormalised over them (choice-normalised probabilities).

Batches are right-padded to the longest prompt of the batch (dynamic padding); only the logits of the last
positions are computed (`logits_to_keep`), so memory does not grow with the vocabulary times the length.

The cloze format's read-out (multi-token answers, the prompt shared by the choices) is `melora.cloze_readout`;
`collate_examples` and `normalised_choice_log_probs` pick the read-out from the examples' `answer_format`, so
training and evaluation serve both formats through the same two calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from melora.cloze_readout import ClozeBatch, choice_sequence_log_probs, collate_cloze
from melora.errors import ProtocolError
from melora.protocol import CLOZE_FORMATS, Example, answer_token_ids


if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ChoiceBatch:
    """A padded batch of prompts and their answer tokens.

    Attributes:
        input_ids (`torch.LongTensor`): `(B, T)` prompt tokens, right-padded.
        attention_mask (`torch.LongTensor`): `(B, T)`, 1 on prompt tokens.
        last_index (`torch.LongTensor`): `(B,)` position of each prompt's last token.
        choice_ids (`torch.LongTensor`): `(B, K)` answer token ids, padded with 0 beyond a question's choices.
        choice_mask (`torch.BoolTensor`): `(B, K)`, True on real choices.
        labels (`torch.LongTensor`): `(B,)` gold choice index.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_index: torch.Tensor
    choice_ids: torch.Tensor
    choice_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> ChoiceBatch:
        """The batch on `device`."""
        return ChoiceBatch(**{k: v.to(device) for k, v in vars(self).items()})

    def repeat_rows(self, n: int) -> ChoiceBatch:
        """Each row repeated `n` times in a row (`B*n` rows): row `b*n + s` is sample `s` of question `b`."""
        return ChoiceBatch(**{k: v.repeat_interleave(n, dim=0) for k, v in vars(self).items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase) -> ChoiceBatch:
    """Tokenise and pad a list of examples (the answer tokens are checked to be single tokens)."""
    encoded = [tokenizer(ex.prompt).input_ids for ex in examples]
    choices = [answer_token_ids(tokenizer, ex) for ex in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width, k_max = max(len(ids) for ids in encoded), max(len(c) for c in choices)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    choice_ids = torch.zeros((len(examples), k_max), dtype=torch.long)
    choice_mask = torch.zeros((len(examples), k_max), dtype=torch.bool)
    for i, (ids, cids) in enumerate(zip(encoded, choices)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        choice_ids[i, : len(cids)] = torch.tensor(cids)
        choice_mask[i, : len(cids)] = True
    return ChoiceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        last_index=torch.tensor([len(ids) - 1 for ids in encoded]),
        choice_ids=choice_ids,
        choice_mask=choice_mask,
        labels=torch.tensor([ex.gold for ex in examples]),
    )


def choice_log_probs(model: PreTrainedModel, batch: ChoiceBatch, normalise: bool = True) -> torch.Tensor:
    """Choice-normalised log-probabilities `(B, K)` in float32 (`-inf` on padded choices).

    The model is called once on the whole batch (through its own `forward`, so DDP and PEFT wrappers see the
    call); gradients flow when the caller has them enabled. With `normalise=False` the answer tokens keep their
    full-vocabulary log-probabilities (what lm-eval's log-likelihood of the answer is), for averaging over posterior
    samples before the choices are normalised.
    """
    width = batch.input_ids.shape[1]
    keep = int(width - batch.last_index.min().item())  # logits of the positions from the shortest prompt's end
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep)
    rows = torch.arange(len(batch), device=batch.input_ids.device)
    logits = out.logits[rows, batch.last_index - (width - keep)]  # (B, V)
    vocab_log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    answer = vocab_log_probs.gather(1, batch.choice_ids)  # (B, K)
    answer = answer.masked_fill(~batch.choice_mask, -math.inf)
    return torch.log_softmax(answer, dim=-1) if normalise else answer  # renormalised over the question's choices


def collate_examples(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase) -> ChoiceBatch | ClozeBatch:
    """`collate` for letter-format examples, `melora.cloze_readout.collate_cloze` for cloze ones.

    Raises:
        ProtocolError: the examples mix answer formats.
    """
    formats = sorted({ex.answer_format for ex in examples})
    if len(formats) > 1:
        raise ProtocolError(f"Expected examples of one answer format in a batch, but got {formats}.")
    return collate_cloze(examples, tokenizer) if formats[0] in CLOZE_FORMATS else collate(examples, tokenizer)


def normalised_choice_log_probs(model: PreTrainedModel, batch: ChoiceBatch | ClozeBatch) -> torch.Tensor:
    """Choice-normalised log-probabilities `(B, K)` of either read-out (`-inf` on padded choices).

    Letters: `choice_log_probs` (unchanged). Cloze: `log_softmax` over the choices of their summed answer
    log-likelihoods (`choice_sequence_log_probs`), each scaled by `batch.score_scale` (1, or 1 / answer length in the
    `cloze_norm` format). Training's cross-entropy is the NLL of the gold choice under it.
    """
    if isinstance(batch, ClozeBatch):
        return torch.log_softmax(choice_sequence_log_probs(model, batch) * batch.score_scale, dim=-1)
    return choice_log_probs(model, batch)
