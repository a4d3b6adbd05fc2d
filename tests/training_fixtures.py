"""A tiny Llama saved on disk with the embedded model's tokenizer, and synthetic OBQA-format data."""

from __future__ import annotations

import json
from pathlib import Path


def write_tiny_model(path: Path, tokenizer_dir: str, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide random Llama with SmolLM2's tokenizer (vocab 49152) to `path`."""
    from transformers import AutoTokenizer

    from tests.conftest import make_tiny_llama

    model = make_tiny_llama(seed=seed, vocab_size=49152, tie_word_embeddings=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


COLORS = ["red", "blue", "green", "yellow"]


def write_synthetic_obqa(root: Path, n_train: int = 16, n_eval: int = 8) -> Path:
    """OBQA-format splits whose answers follow a simple rule (answer = item number mod 4)."""
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        path = root / "openbookqa" / "main" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for i in range(n):
                row = {
                    "id": f"{split}-{i}",
                    "question_stem": f"What color is item {i}?",
                    "choices": {"text": COLORS, "label": ["A", "B", "C", "D"]},
                    "answerKey": "ABCD"[i % 4],
                }
                f.write(json.dumps(row) + "\n")
    return root
