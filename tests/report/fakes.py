"""Write lm-eval output files (results, samples) with known predictions, laid out as `lm_eval --log_samples` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from melora.metrics import summarize


def melora_config(
    kind: str = "melora", samples: int = 10, seed: int = 0, adapter: str | None = "runs/a", **extra: Any
) -> dict[str, Any]:
    """The `config` entry of a `--model melora` results file (model_args plus `get_model_info()` fields)."""
    return {
        "model": "melora",
        "model_args": {"pretrained": "/models/SmolLM2-135M-Instruct", "adapter": adapter, "samples": samples},
        "adapter": adapter,
        "adapter_kind": kind,
        "ensemble_members": 1,
        "samples": samples,
        "average": "probs",
        "seed": seed,
        "mc_dropout": False,
        "limit": None,
        **extra,
    }


def hf_config(pretrained: str = "/models/SmolLM2-135M-Instruct", seed: int = 0) -> dict[str, Any]:
    """The `config` entry of a `--model hf` results file."""
    return {"model": "hf", "model_args": {"pretrained": pretrained, "dtype": "float32"}, "random_seed": seed}


def write_run(
    directory: str | Path,
    tasks: dict[str, tuple[list[list[float]], list[int]]],
    config: dict[str, Any],
    *,
    timestamp: str = "2026-01-01T00-00-00.000000",
    groups: dict[str, list[str]] | None = None,
    reported: dict[str, dict[str, float]] | None = None,
    date: float = 0.0,
    with_brier: bool = True,
) -> Path:
    """Write `results_<ts>.json` and one `samples_<task>_<ts>.jsonl` per task; returns the results file.

    Args:
        tasks: `{task: (probs per document, gold indices)}`.
        config: the results' `config` (see `melora_config`, `hf_config`).
        groups: lm-eval's `group_subtasks`.
        reported: metrics to write instead of the true ones (to provoke a mismatch).
        with_brier: write the `brier` item `[gold, probs]` (else only the log-likelihoods in `filtered_resps`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = {}
    for task, (probs, labels) in tasks.items():
        metrics = (reported or {}).get(task) or summarize(probs, labels)
        results[task] = {"alias": task, **{f"{k},none": v for k, v in metrics.items()}, "ece_stderr,none": "N/A"}
        with open(directory / f"samples_{task}_{timestamp}.jsonl", "w") as f:
            for i, (p, y) in enumerate(zip(probs, labels)):
                conf = max(p)
                item = {
                    "doc_id": i,
                    "doc": {"prompt": f"q{i}", "choices": [f" {c}" for c in "ABCDE"[: len(p)]], "gold": y},
                    "target": str(y),
                    "filtered_resps": [[str(math.log(x)), "False"] for x in p],
                    "filter": "none",
                    "acc": float(p.index(conf) == y),
                    "ece": [conf, float(p.index(conf) == y)],
                }
                if with_brier:
                    item["brier"] = [y, p]
                f.write(json.dumps(item) + "\n")
    for group in groups or {}:
        results[group] = {"alias": group}
    path = directory / f"results_{timestamp}.json"
    data = {"results": results, "group_subtasks": groups or {}, "config": config, "n-shot": {}, "date": date}
    path.write_text(json.dumps(data))
    return path


def parse_markdown(markdown: str) -> dict[str, dict[tuple[str, str], dict[str, str]]]:
    """The report's Markdown tables as `{title: {(metric label, method): {column title: cell text}}}`."""
    tables: dict[str, dict[tuple[str, str], dict[str, str]]] = {}
    title, header, metric = None, None, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            title, header = line[4:], None
            tables[title] = {}
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                metric = cells[0].split(" ")[0] if cells[0] else metric
                tables[title][(metric, cells[1])] = dict(zip(header[2:], cells[2:]))
    return tables
