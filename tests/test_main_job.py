"""Smoke test of the main job's pipeline (scripts/main_job.sh) on the tiny model and synthetic OBQA data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_fixtures import write_synthetic_obqa, write_tiny_model


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_pipeline_runs_end_to_end(tmp_path, embedded_model_path):
    model = write_tiny_model(tmp_path / "tiny", embedded_model_path)
    data = write_synthetic_obqa(tmp_path / "data")
    out = tmp_path / "main"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "MELORA_DATA_DIR": str(data),
        "MELORA_MAIN_OUT": str(out),
        "MELORA_MAIN_MODEL": str(model),
        "MELORA_MAIN_STEPS": "4",
        "MELORA_MAIN_LIMIT": "4",
        "MELORA_MAIN_SAMPLES": "2",
        "MELORA_MAIN_EVAL_LIMIT": "4",
        "MELORA_MAIN_TASKS": "melora_obqa_cloze_norm",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/main_job.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in ("melora", "map"):
        assert (out / f"train-{method}" / "adapter-best" / "adapter_config.json").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "Me-LoRA" in report and "OBQA" in report
    assert list((out / "report" / "figures").glob("reliability_*.png"))
    assert "reduced run" in proc.stdout and str(out / "report" / "report.md") in proc.stdout
