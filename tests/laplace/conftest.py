"""Tiny LoRA models and hand-made answer batches for the Laplace tests."""

from __future__ import annotations

import pytest
import torch

from melora.readout import ChoiceBatch
from tests.conftest import make_tiny_llama


def make_tiny_lora(seed: int = 0, target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> torch.nn.Module:
    """A tiny random Llama with a LoRA adapter whose A and B are both random (away from the no-op B = 0)."""
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(seed=seed)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=list(target_modules), init_lora_weights=False)
    torch.manual_seed(seed + 1)
    return get_peft_model(model, config).eval()


def make_batch(prompts: list[list[int]], choices: list[list[int]], labels: list[int]) -> ChoiceBatch:
    """A right-padded `ChoiceBatch` from token-id prompts and per-row answer token ids."""
    width, k_max = max(map(len, prompts)), max(map(len, choices))
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    choice_ids = torch.zeros(len(prompts), k_max, dtype=torch.long)
    choice_mask = torch.zeros(len(prompts), k_max, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, choices)):
        input_ids[i, : len(p)] = torch.tensor(p)
        attention_mask[i, : len(p)] = 1
        choice_ids[i, : len(c)] = torch.tensor(c)
        choice_mask[i, : len(c)] = True
    return ChoiceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        last_index=torch.tensor([len(p) - 1 for p in prompts]),
        choice_ids=choice_ids,
        choice_mask=choice_mask,
        labels=torch.tensor(labels),
    )


@pytest.fixture
def tiny_lora() -> torch.nn.Module:
    return make_tiny_lora()


@pytest.fixture
def batches() -> list[ChoiceBatch]:
    """Two batches of multi-token prompts; the second has a question with 3 of 4 choices (padding)."""
    return [
        make_batch([[5, 9, 17, 3], [7, 8, 2]], [[10, 11, 12, 13], [10, 11, 12, 13]], [0, 2]),
        make_batch([[1, 2, 3, 4, 5], [40, 41]], [[10, 11, 12, 13], [20, 21, 22]], [3, 1]),
    ]
