"""The answer read-out: padded batches read the same position and tokens as one-at-a-time scoring."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from melora.cloze_readout import ClozeBatch, choice_sequence_log_probs, collate_cloze, packed_attention_mask
from melora.errors import ProtocolError
from melora.protocol import Example
from melora.readout import choice_log_probs, collate, collate_examples, normalised_choice_log_probs


class CharTokenizer:
    """A tokenizer for the tiny model: one token per character, a space joined to the next one; pad id 0."""

    pad_token_id = 0
    bos_token_id = eos_token_id = 1
    name_or_path = "chars"

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        pieces = re.findall(r" ?[^ ]| ", text)
        return SimpleNamespace(input_ids=[3 + (sum(map(ord, piece)) % 125) for piece in pieces])


def test_batched_padded_equals_single(tiny_llama):
    tok = CharTokenizer()
    examples = [
        Example("Q: a long question here?\nAnswer:", (" A", " B"), 1, "0"),
        Example("Q: short\nAnswer:", (" A", " B", " C"), 2, "1"),
    ]
    batch = collate(examples, tok)
    assert batch.input_ids.shape == (2, len(tok(examples[0].prompt).input_ids))
    assert batch.choice_mask.tolist() == [[True, True, False], [True, True, True]]
    with torch.no_grad():
        together = choice_log_probs(tiny_llama, batch)
        alone = [choice_log_probs(tiny_llama, collate([ex], tok))[0] for ex in examples]
    assert torch.allclose(together[0, :2], alone[0], atol=1e-5)
    assert torch.allclose(together[1], alone[1], atol=1e-5)
    assert together[0, 2] == -float("inf")
    assert torch.allclose(together.exp().sum(-1), torch.ones(2))
    # the direct computation: full-vocab log-softmax at the prompt's last token, restricted and renormalised
    ids = torch.tensor([tok(examples[1].prompt).input_ids])
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids).logits[0, -1].log_softmax(-1)
    choice = logits[[tok(" A").input_ids[0], tok(" B").input_ids[0], tok(" C").input_ids[0]]]
    assert torch.allclose(alone[1], choice.log_softmax(-1), atol=1e-5)


def test_gradients_flow_for_training(tiny_llama):
    tok = CharTokenizer()
    batch = collate([Example("Q: x\nAnswer:", (" A", " B"), 0, "0")], tok)
    loss = torch.nn.functional.nll_loss(choice_log_probs(tiny_llama, batch), batch.labels)
    loss.backward()
    assert tiny_llama.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# Cloze read-out

CLOZE_EXAMPLES = [
    Example("Q: what is red?\nAnswer:", (" an apple", " sky", " grass"), 0, "0", answer_format="cloze"),
    Example("Tom beat Ann so", (" he won.", " he won."), 1, "1", (" Tom", " Ann"), "cloze"),  # WinoGrande-like
    Example("Q: x?\nAnswer:", (" yes", " no"), 1, "2", answer_format="cloze"),
]


def _naive_sequence_log_probs(model, tok, example: Example) -> torch.Tensor:
    """Each choice as its own full sequence `prompt + context + answer`: sum of the answer tokens' log-probs."""
    scores = []
    for context, continuation in example.scored_pairs():
        n_context = len(tok(context).input_ids)
        ids = tok(context + continuation).input_ids
        log_probs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)  # (T, V)
        scores.append(sum(log_probs[t - 1, ids[t]] for t in range(n_context, len(ids))))
    return torch.stack(scores)


def test_packed_cloze_equals_naive_per_choice_sequences(tiny_llama):
    tok = CharTokenizer()
    batch = collate_cloze(CLOZE_EXAMPLES, tok)
    assert batch.choice_mask.tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    with torch.no_grad():
        together = choice_sequence_log_probs(tiny_llama, batch)  # (B, K), not normalised
        alone = [choice_sequence_log_probs(tiny_llama, collate_cloze([ex], tok))[0] for ex in CLOZE_EXAMPLES]
        naive = [_naive_sequence_log_probs(tiny_llama, tok, ex) for ex in CLOZE_EXAMPLES]
    for i, ex in enumerate(CLOZE_EXAMPLES):
        k = len(ex.answers)
        assert torch.allclose(together[i, :k], naive[i], atol=1e-5, rtol=0), (together[i], naive[i])
        assert torch.allclose(alone[i], naive[i], atol=1e-5, rtol=0)
    assert together[1, 2] == -float("inf") and together[2, 2] == -float("inf")
    assert (together[:, :2] < 0).all() and not torch.allclose(together[0].exp().sum(), torch.tensor(1.0))
    # the shared prompt is in the row once: prompt + every choice, not K copies of the prompt
    prompt_len = len(tok(CLOZE_EXAMPLES[0].prompt).input_ids)
    choices_len = sum(len(tok(CLOZE_EXAMPLES[0].prompt + a).input_ids) - prompt_len for a in CLOZE_EXAMPLES[0].answers)
    assert int((batch.segment_ids[0] >= 0).sum()) == prompt_len + choices_len


def test_cloze_eager_attention_equals_sdpa():
    from tests.conftest import make_tiny_llama

    batch = collate_cloze(CLOZE_EXAMPLES, CharTokenizer())
    with torch.no_grad():
        sdpa = choice_sequence_log_probs(make_tiny_llama(attn_implementation="sdpa"), batch)
        eager = choice_sequence_log_probs(make_tiny_llama(attn_implementation="eager"), batch)
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_packed_mask_blocks_other_choices_and_padding():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    mask = packed_attention_mask(segments)[0, 0]
    assert mask[3].tolist() == [True, True, True, True, False, False]  # prompt + own segment, causal
    assert mask[4].tolist() == [True, True, False, False, True, False]  # never choice 1
    assert mask[5].tolist() == [False] * 5 + [True]  # padding sees itself only (no empty row)


def test_cloze_gradients_flow_and_rows_repeat(tiny_llama):
    tok = CharTokenizer()
    batch = collate_examples(CLOZE_EXAMPLES, tok)
    assert isinstance(batch, ClozeBatch)
    log_probs = normalised_choice_log_probs(tiny_llama, batch)  # (B, K), choice-normalised
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3))
    torch.nn.functional.nll_loss(log_probs, batch.labels).backward()
    assert tiny_llama.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    repeated = batch.repeat_rows(2)
    assert len(repeated) == 6 and torch.equal(repeated.input_ids[1], batch.input_ids[0])


def test_letters_dispatch_is_the_single_token_read_out_and_formats_do_not_mix(tiny_llama):
    tok = CharTokenizer()
    letters = [Example("Q: x\nAnswer:", (" A", " B"), 0, "0")]
    with torch.no_grad():
        assert torch.equal(
            normalised_choice_log_probs(tiny_llama, collate_examples(letters, tok)),
            choice_log_probs(tiny_llama, collate(letters, tok)),
        )
    with pytest.raises(ProtocolError, match="one answer format"):
        collate_examples(letters + CLOZE_EXAMPLES[:1], tok)


def test_cloze_norm_divides_each_answer_log_likelihood_by_its_length(tiny_llama):
    tok = CharTokenizer()
    pairs = [(" short", " a much longer answer"), (" x y", " z")]
    examples = [Example("Q: which?\nAnswer:", answers, 0, str(i), (), "cloze_norm") for i, answers in enumerate(pairs)]
    batch = collate_examples(examples, tok)
    assert isinstance(batch, ClozeBatch)
    with torch.no_grad():
        raw = choice_sequence_log_probs(tiny_llama, batch)  # (B, K) summed answer log-likelihoods
        got = normalised_choice_log_probs(tiny_llama, batch)
    lengths = torch.tensor([[len(a) for a in answers] for answers in pairs], dtype=torch.float32)
    torch.testing.assert_close(got, torch.log_softmax(raw / lengths, dim=-1))
    plain = collate_examples([Example(e.prompt, e.answers, 0, e.doc_id, (), "cloze") for e in examples], tok)
    with torch.no_grad():
        assert not torch.allclose(normalised_choice_log_probs(tiny_llama, plain), got)
