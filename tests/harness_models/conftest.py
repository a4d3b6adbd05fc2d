"""Fixtures of the lm-eval model tests: a small Me-LoRA adapter on the embedded model, and a task manager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


TASKS_DIR = Path(__file__).resolve().parents[2] / "lm_eval_tasks"


def build_melora_adapter(base_path: str, out: Path, seed: int = 0) -> Path:
    """A Me-LoRA adapter (r=8 on q, v) on `base_path` with random B and a clearly non-zero posterior std."""
    import peft
    from transformers import AutoModelForCausalLM

    from melora.adapters import MeLoraConfig

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = peft.get_peft_model(base, MeLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            elif "melora_H" in name:  # Omega = H*H = 0.25: samples differ visibly
                param.fill_(0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def melora_adapter_dir(embedded_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_melora_adapter(embedded_model_path, tmp_path_factory.mktemp("melora-adapter")))


@pytest.fixture(scope="session")
def task_manager():
    """Only the melora tasks (skips indexing lm-eval's own ~13 s of YAMLs)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
