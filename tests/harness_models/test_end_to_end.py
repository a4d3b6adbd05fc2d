"""End to end on the embedded model: lm-eval's own `hf` model, batch sizes, seeds, and the real `lm_eval` CLI."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest


METRICS = ("acc", "ece", "nll", "brier")


def _evaluate(model, task_manager, task: str, limit: int, batch_size: int = 4, model_args=None) -> dict:
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=task_manager,
        limit=limit,
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )


def _doc_probs(results: dict, task: str) -> dict[int, list[float]]:
    return {s["doc_id"]: s["brier"][1] for s in results["samples"][task]}


@pytest.mark.slow
def test_samples_zero_equals_hf_on_the_merged_mean_model(
    embedded_model_path, melora_adapter_dir, task_manager, tmp_path
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from melora.adapters import load_adapter

    base = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32)
    load_adapter(base, melora_adapter_dir).merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(embedded_model_path).save_pretrained(tmp_path / "merged")

    task = "melora_arc_e"
    ours = _evaluate("melora", task_manager, task, 4, model_args={"adapter": melora_adapter_dir, "samples": 0})
    hf = _evaluate(
        "hf", task_manager, task, 4, model_args={"pretrained": str(tmp_path / "merged"), "dtype": "float32"}
    )
    for metric in ("acc", "nll"):
        assert ours["results"][task][f"{metric},none"] == pytest.approx(
            hf["results"][task][f"{metric},none"], abs=1e-5
        )
    assert [s["doc"]["doc_id"] for s in ours["samples"][task]] == [s["doc"]["doc_id"] for s in hf["samples"][task]]
    assert ours["config"]["sampling"] == "posterior_mean"


@pytest.mark.slow
def test_same_seed_any_batch_size_and_seeds_matter(embedded_model_path, melora_adapter_dir, task_manager):
    from lm_eval.api.registry import get_model

    lm = get_model("melora").create_from_arg_obj(
        {"adapter": melora_adapter_dir, "samples": 4, "seed": 3}, {"batch_size": 8, "device": "cpu"}
    )
    task = "melora_obqa"
    runs = {}
    for batch_size in (8, 1):
        lm.batch_size_per_gpu = batch_size
        runs[batch_size] = _evaluate(lm, task_manager, task, 2, batch_size=batch_size)
    for metric in METRICS:  # equal up to float32 rounding of matrix products of different shapes (~1e-6)
        assert runs[1]["results"][task][f"{metric},none"] == pytest.approx(
            runs[8]["results"][task][f"{metric},none"], abs=1e-5
        )
    lm.seed = 4
    other = _evaluate(lm, task_manager, task, 2, batch_size=8)
    a, b = _doc_probs(runs[8], task), _doc_probs(other, task)
    assert all(not np.allclose(a[d], b[d], atol=1e-6) for d in a)


@pytest.mark.slow
def test_lm_eval_cli_over_melora_ood(melora_adapter_dir, tmp_path):
    """The plain `lm_eval` command: `--model melora` and the tasks are found with no --include_path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        *(os.path.join(os.path.dirname(sys.executable), "lm_eval"),),
        "--model", "melora",
        "--model_args", f"adapter={melora_adapter_dir},samples=2,seed=5",
        "--tasks", "melora_ood",
        "--device", "cpu",
        "--batch_size", "8",
        "--limit", "2",
        "--output_path", str(tmp_path),
        "--log_samples",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    (results_file,) = glob.glob(str(tmp_path / "*" / "results_*.json"))
    with open(results_file) as f:
        results = json.load(f)
    subtasks = [
        "melora_obqa",
        "melora_arc_c",
        "melora_arc_e",
        "melora_mmlu_chem",
        "melora_mmlu_phys",
        "melora_mmlu_math",
    ]
    for task in subtasks:
        assert all(isinstance(results["results"][task][f"{m},none"], float) for m in METRICS), task
    assert "ece,none" not in results["results"]["melora_ood"]  # a group's ECE would be a mean of ECEs
    config = results["config"]
    assert (config["adapter_kind"], config["samples"], config["average"], config["seed"]) == ("melora", 2, "probs", 5)

    for task in subtasks:  # ece and nll recomputed from the samples file, independently of melora.metrics
        (samples_file,) = glob.glob(str(tmp_path / "*" / f"samples_{task}_*.jsonl"))
        with open(samples_file) as f:
            samples = [json.loads(line) for line in f]
        assert len(samples) == 2
        probs, gold = [], []
        for s in samples:
            lls = np.array([float(r[0]) for r in s["filtered_resps"]])
            p = np.exp(lls - lls.max())
            probs.append(p / p.sum())
            gold.append(s["doc"]["gold"])
            np.testing.assert_allclose(s["brier"][1], probs[-1], atol=1e-9)
        nll = np.mean([-np.log(p[g]) for p, g in zip(probs, gold)])
        assert results["results"][task]["nll,none"] == pytest.approx(nll, abs=1e-9)
        assert results["results"][task]["ece,none"] == pytest.approx(_numpy_ece(probs, gold), abs=1e-9)


def _numpy_ece(probs, gold, n_bins: int = 15) -> float:
    """Top-label L1 ECE, equal-width bins, right-open, as torchmetrics computes it."""
    conf = np.array([p.max() for p in probs])
    correct = np.array([float(p.argmax() == g) for p, g in zip(probs, gold)])
    bins = np.minimum(np.floor(conf * n_bins).astype(int), n_bins)
    return float(
        sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in set(bins)) / len(conf)
    )
