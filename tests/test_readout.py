"""The answer read-out: padded batches read the same position and tokens as one-at-a-time scoring."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from melora.protocol import Example
from melora.readout import choice_log_probs, collate


class CharTokenizer:
    """A tokenizer for the tiny model: one token per character, a space joined to the next one; pad id 0."""

    pad_token_id = 0
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
