"""Smoke test of scripts/bench.py on the tiny model: every field of the JSON is there (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
            "--answer-format",
            "cloze",
        ],
        env={**os.environ, "MELORA_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    train = result["train"]
    for name in ("lora", "melora", "blob", "lora_letters"):
        r = train[name]
        assert r["answer_format"] == ("letters" if name == "lora_letters" else "cloze")
        fields = {"step_s_median", "peak_memory_bytes", "peak_rss_bytes", "trainable_params", "adapter_file_bytes"}
        assert fields <= set(r)
        assert len(r["step_s"]) == 2 and r["trainable_params"] > 0
        # CPU peak tensor bytes hold at least the fp32 model's parameters
        assert r["peak_memory_bytes"] > 4 * r["trainable_params"] and r["memory_kind"].startswith("peak CPU tensor")
    for name in ("melora", "blob"):
        assert {
            "step_time_ratio_to_lora",
            "step_time_ratio_of_medians",
            "peak_memory_ratio_to_lora",
            "peak_rss_ratio_to_lora",
            "adapter_file_ratio_to_lora",
        } <= set(train[name])
    assert "step_time_ratio_to_lora" in train["lora_letters"]
    files = train["adapter_file_llama2_7b"]
    # LoRA on q, v of 32 layers, r = 8: 32 x 2 x 8 x (4096 + 4096) fp32 numbers, plus the safetensors header
    assert 4 * 32 * 2 * 8 * 8192 < files["bytes"]["lora"] < 4 * 32 * 2 * 8 * 8192 + 65536
    assert files["bytes"]["melora"] - files["bytes"]["lora"] >= 4 * 32 * 2 * 2 * 64  # + M and H per matrix
    assert set(files["ratio_to_lora"]) == {"melora", "blob"}
    # Me-LoRA adds 2 r^2 per adapted matrix: 2 layers x (q, v) x 2 x 8^2
    assert result["train"]["melora"]["trainable_params"] - result["train"]["lora"]["trainable_params"] == 512
    ev = result["eval"]
    assert ev["documents"] == 4 and ev["samples"] == 2
    assert {"seconds", "docs_per_s", "time_ratio_to_hf"} <= set(ev["melora_s1"])
    assert "time_ratio_to_S_times_hf" in ev["melora_s2"]
    assert "| melora samples=2 |" in proc.stdout and "adapter files at Llama-2-7B shapes" in proc.stdout


def test_cpu_peak_counts_what_a_profiled_block_allocates_at_its_highest():
    from torch.profiler import ProfilerActivity, profile

    from melora.bench import _peak_allocated

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        first = torch.ones(1_000_000)  # 4 MB
        second = torch.ones(500_000)  # 2 MB more: the peak, 6 MB
        del first, second
        third = torch.ones(250_000)  # 1 MB, after both were freed
        del third
    assert 6_000_000 <= _peak_allocated(prof) < 6_100_000
