"""Fixtures of the adapter tests: a tiny random Llama wrapped with each adapter kind, B moved away from zero."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_LLAMA as TINY


TARGETS = ["q_proj", "v_proj"]


def tiny_base(seed: int = 0, **overrides: int) -> torch.nn.Module:
    """A random `LlamaForCausalLM` (fp32, eval mode); the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


def adapter_config(kind: str, r: int = 4, **kwargs: object):
    """The config of `kind` ("lora", "melora", "blob") on q and v, with lora_alpha = 2 r and no dropout."""
    import peft

    from melora.adapters.loader import ADAPTER_KINDS

    cls = ADAPTER_KINDS[kind] if kind != "lora" else peft.LoraConfig
    return cls(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0, **kwargs)


def tiny_peft(kind: str, seed: int = 0, r: int = 4, b_std: float = 0.2, **kwargs: object) -> torch.nn.Module:
    """`tiny_base(seed)` with a `kind` adapter whose B is random (so the adapter is not a no-op)."""
    import peft

    model = peft.get_peft_model(tiny_base(seed), adapter_config(kind, r=r, **kwargs))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=b_std)
    return model.eval()


def adapter_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The LoRA layers of `model`, in module order."""
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (3, 6), generator=torch.Generator().manual_seed(123))
