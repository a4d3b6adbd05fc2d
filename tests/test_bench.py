"""Smoke test of scripts/bench.py on the tiny model: every field of the JSON is there (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_fixtures import write_synthetic_obqa, write_tiny_model


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_writes_every_field(tmp_path, embedded_model_path):
    model = write_tiny_model(tmp_path / "tiny", embedded_model_path)
    data = write_synthetic_obqa(tmp_path / "data")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/bench.py"),
            "--json",
            str(out),
            "--model",
            str(model),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--eval-limit",
            "4",
            "--eval-samples",
            "2",
            "--max-length",
            "64",
        ],
        env={**os.environ, "MELORA_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("lora", "melora", "blob"):
        r = result["train"][name]
        assert {"step_s_median", "peak_memory_bytes", "trainable_params", "adapter_file_bytes"} <= set(r)
        assert len(r["step_s"]) == 2 and r["trainable_params"] > 0
    for name in ("melora", "blob"):
        assert {"step_time_ratio_to_lora", "peak_memory_ratio_to_lora", "adapter_file_ratio_to_lora"} <= set(
            result["train"][name]
        )
    # Me-LoRA adds 2 r^2 per adapted matrix: 2 layers x (q, v) x 2 x 8^2
    assert result["train"]["melora"]["trainable_params"] - result["train"]["lora"]["trainable_params"] == 512
    ev = result["eval"]
    assert ev["documents"] == 4 and ev["samples"] == 2
    assert {"seconds", "docs_per_s", "time_ratio_to_hf"} <= set(ev["melora_s1"])
    assert "time_ratio_to_S_times_hf" in ev["melora_s2"]
    assert "| melora samples=2 |" in proc.stdout
