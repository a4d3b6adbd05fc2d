"""Shared fixtures: a tiny random Llama built in memory, and the embedded model for end-to-end tests.

Tests run offline: the hub is switched off here, before any Hugging Face library is imported. Tests that read
real benchmark data use `MELORA_DATA_DIR` (CI points it at the shared data copy).
"""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


TINY_LLAMA = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def make_tiny_llama(seed: int = 0, **overrides: int) -> torch.nn.Module:
    """A randomly initialised `LlamaForCausalLM` small enough for unit tests (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    return model.eval()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_llama()


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    from melora.embedded_model import prepare_model

    return str(prepare_model())


@pytest.fixture(scope="session")
def smollm_tokenizer(embedded_model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture(scope="session")
def smollm_model(embedded_model_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
