"""The embedded model is a real pretrained model, prepared once, atomically."""

from __future__ import annotations

import math

import pytest
import torch

from melora import embedded_model


QUESTIONS = [
    "Which of these is a source of light? The sun is a star that gives off light and heat.",
    "Plants need water and sunlight to grow. The roots take up water from the soil.",
    "The capital of France is Paris, and the capital of Germany is Berlin.",
]


def _mean_nll(model, tokenizer, texts):
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text).input_ids])
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        total += out.loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total / count


def test_embedded_model_is_pretrained(smollm_model, smollm_tokenizer):
    from transformers import AutoModelForCausalLM

    assert type(smollm_model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in smollm_model.parameters()) == 134_515_008
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(smollm_model.config).eval()
    trained, untrained = (
        _mean_nll(smollm_model, smollm_tokenizer, QUESTIONS),
        _mean_nll(random_model, smollm_tokenizer, QUESTIONS),
    )
    assert untrained > math.log(smollm_model.config.vocab_size) - 1  # a random model is near uniform
    assert trained < 0.5 * untrained

    ids = torch.tensor([smollm_tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        next_id = smollm_model(input_ids=ids).logits[0, -1].argmax().item()
    assert smollm_tokenizer.decode([next_id]) == " Paris"


def test_second_prepare_is_a_no_op(embedded_model_path, monkeypatch):
    monkeypatch.setattr(embedded_model, "_convert", lambda *a: pytest.fail("converted twice"))
    before = (embedded_model.default_model_path() / "model.safetensors").stat().st_mtime_ns
    assert str(embedded_model.prepare_model()) == embedded_model_path
    assert (embedded_model.default_model_path() / "model.safetensors").stat().st_mtime_ns == before


def test_a_conversion_cut_short_never_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("MELORA_CACHE", str(tmp_path))

    def crash(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setattr(embedded_model, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        embedded_model.prepare_model()
    target = embedded_model.default_model_path()
    assert not target.exists() and not embedded_model.is_prepared(target)
    assert not list(target.parent.glob(".*partial*"))

    # a partial directory left by a hard kill (no cleanup ran) is ignored and replaced
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(embedded_model, "_convert", lambda gguf, out: (out / "model.safetensors").write_text("x"))
    assert embedded_model.prepare_model() == target
    assert embedded_model.is_prepared(target) and (target / "model.safetensors").exists()


def test_resolve_model_prefers_the_named_model(embedded_model_path):
    assert embedded_model.resolve_model("some/model") == "some/model"
    assert embedded_model.resolve_model(None) == embedded_model_path
