"""Seeded MC dropout: the masks against a plain-Python splitmix64, their rate, and batch independence."""

from __future__ import annotations

import peft
import pytest
import torch

from melora.mc_dropout import keep_mask, lora_dropouts, seeded_lora_dropout
from tests.adapters.conftest import tiny_base
from tests.conftest import TINY_LLAMA as TINY


MASK64 = 2**64 - 1


def _mix_reference(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _keep_reference(seed: int, layer: int, index: int, p: float) -> bool:
    """Element `index` of the row keyed by `(seed, layer)`, with Python's unbounded integers."""
    golden = 0x9E3779B97F4A7C15
    key = _mix_reference((_mix_reference((seed * golden + layer) & MASK64) + golden) & MASK64)
    output = _mix_reference((key + (index // 4 + 1) * golden) & MASK64)
    word = (output >> (16 * (index % 4))) & 0xFFFF
    return word >= round(p * 2**16)


def test_keep_mask_is_splitmix64_bit_for_bit():
    seeds = [0, 1, 2**63 - 1, 123456789]
    mask = keep_mask(torch.tensor(seeds), layer=5, shape=(3, 7), p=0.5)  # (4, 3, 7)
    for b, seed in enumerate(seeds):
        expected = [_keep_reference(seed, 5, i, 0.5) for i in range(21)]
        assert mask[b].flatten().tolist() == expected


def test_keep_rate_is_one_minus_p_and_rows_and_layers_differ():
    mask = keep_mask(torch.tensor([7, 8]), layer=0, shape=(1000, 100), p=0.1)
    assert abs(mask.float().mean().item() - 0.9) < 0.002
    assert not torch.equal(mask[0], mask[1])
    assert not torch.equal(mask[0], keep_mask(torch.tensor([7]), layer=1, shape=(1000, 100), p=0.1)[0])
    assert keep_mask(torch.tensor([7]), layer=0, shape=(5, 4), p=0.0).all()


def _mcd_model(p: float = 0.3) -> torch.nn.Module:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=p)
    model = peft.get_peft_model(tiny_base(), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model.eval()


def test_a_rows_logits_depend_on_its_seed_only_whatever_the_batch():
    model = _mcd_model()
    g = torch.Generator().manual_seed(3)
    row = torch.randint(1, TINY["vocab_size"], (1, 6), generator=g)
    longer = torch.randint(1, TINY["vocab_size"], (1, 9), generator=g)
    with torch.no_grad(), seeded_lora_dropout(model, [11]):
        alone = model(row).logits[0]  # (6, V)
    # the same row, right-padded beside a longer one, second in the batch
    batch = torch.cat([longer, torch.nn.functional.pad(row, (0, 3))])
    with torch.no_grad(), seeded_lora_dropout(model, [5, 11]):
        together = model(batch).logits[1, :6]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        with seeded_lora_dropout(model, [12]):
            other_seed = model(row).logits[0]
        deterministic = model(row).logits[0]  # hooks gone after the block
        with seeded_lora_dropout(model, [11]):
            again = model(row).logits[0]
    assert not torch.allclose(other_seed, alone, atol=1e-4)
    assert not torch.allclose(deterministic, alone, atol=1e-4)
    torch.testing.assert_close(again, alone, rtol=0, atol=0)


def test_dropout_modules_are_restored_and_batch_size_is_checked():
    model = _mcd_model()
    dropouts = [d for d in lora_dropouts(model) if isinstance(d, torch.nn.Dropout)]
    assert dropouts and all(not d.training for d in dropouts)
    dropouts[0].train()
    with pytest.raises(ValueError, match="one per seed"), seeded_lora_dropout(model, [1, 2]):
        model(torch.ones(3, 4, dtype=torch.long))
    assert dropouts[0].training and not dropouts[1].training
    assert all(not d._forward_hooks for d in dropouts)
