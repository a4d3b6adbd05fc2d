"""End to end: MAP training (a few steps) -> `scripts/laplace.py` -> the real `lm_eval --model melora` CLI."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_fixtures import write_synthetic_obqa, write_tiny_model


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_map_then_laplace_then_lm_eval_cli(tmp_path, embedded_model_path, monkeypatch):
    from melora.train_config import TrainConfig
    from melora.training import train

    model = str(write_tiny_model(tmp_path / "tiny", embedded_model_path))
    data = write_synthetic_obqa(tmp_path / "data")
    monkeypatch.setenv("MELORA_DATA_DIR", str(data))
    cfg = TrainConfig(
        method="map", task="obqa", model=model, output_dir=str(tmp_path / "run"), max_steps=4, batch_size=4,
        lr=1e-2, warmup_ratio=0.0, dropout=0.0, eval_every=4, eval_batch_size=8, max_length=64,
    )  # fmt: skip
    adapter = train(cfg)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MELORA_DATA_DIR": str(data)}
    fit = [sys.executable, str(ROOT / "scripts" / "laplace.py"), "--adapter", str(adapter), "--task", "obqa",
           "--model", model, "--max-length", "64"]  # fmt: skip
    result = subprocess.run(fit, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lap_dir = adapter / "laplace"
    assert (lap_dir / "laplace.json").is_file() and (lap_dir / "laplace_posterior.safetensors").is_file()

    cmd = [
        os.path.join(os.path.dirname(sys.executable), "lm_eval"),
        "--model", "melora",
        "--model_args", f"pretrained={model},adapter={lap_dir},samples=8,seed=3",
        "--tasks", "melora_obqa",
        "--device", "cpu",
        "--batch_size", "4",
        "--limit", "6",
        "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))
    results = json.loads(Path(results_file).read_text())
    metrics = results["results"]["melora_obqa"]
    assert all(isinstance(metrics[f"{m},none"], float) for m in ("acc", "ece", "nll", "brier"))
    config = results["config"]
    assert (config["adapter_kind"], config["samples"], config["laplace_predictive"]) == ("laplace", 8, "glm_mc_8")
    assert config["laplace_prior_precision"] == json.loads((lap_dir / "laplace.json").read_text())["prior_precision"]
