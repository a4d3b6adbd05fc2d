"""`melora report` through the CLI: help, errors as one line, and a real lm-eval run of the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from melora.cli import main
from tests.report.fakes import hf_config, parse_markdown, write_run


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("RESULTS_DIR", "--out", "--compare", "paper-13b", "--bootstrap", "--no-figures"):
        assert flag in out


def test_unreadable_input_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "results_1.json").write_text("[")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("melora report: error: ") and "results_1.json" in err[0]


def test_writes_and_lists_its_files(tmp_path, capsys):
    write_run(tmp_path / "runs", {"melora_obqa": ([[0.9, 0.1], [0.3, 0.7]], [0, 0])}, hf_config())
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-figures", "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "runs.csv", "tables.csv", "tables.tex"]
    for name in ("report.md", "runs.csv", "tables.csv", "tables.tex"):
        assert str(out / name) in printed
    assert "95% percentile bootstrap interval" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def lm_eval_output(tmp_path_factory, embedded_model_path) -> Path:
    """One real `lm_eval` CLI run of the embedded model on 8 documents of two tasks, with --log_samples."""
    out = tmp_path_factory.mktemp("lm_eval")
    lm_eval = Path(sys.executable).with_name("lm_eval")
    cmd = [
        str(lm_eval),
        "--model", "hf",
        "--model_args", f"pretrained={embedded_model_path},dtype=float32",
        "--tasks", "melora_obqa,melora_arc_e",
        "--limit", "8",
        "--device", "cpu",
        "--batch_size", "8",
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_report_on_a_real_lm_eval_run(lm_eval_output, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(lm_eval_output), "--out", str(out), "--compare", "paper-13b"]) == 0
    capsys.readouterr()
    (results_file,) = lm_eval_output.rglob("results_*.json")
    reported = json.loads(results_file.read_text())["results"]
    (table,) = parse_markdown((out / "report.md").read_text()).values()
    for task, title in (("melora_obqa", "OBQA"), ("melora_arc_e", "ARC-E")):
        assert table[("ACC", "Base (zero-shot)")][title] == f"{100 * reported[task]['acc,none']:.2f}"
        assert table[("ECE", "Base (zero-shot)")][title] == f"{100 * reported[task]['ece,none']:.2f}"
        assert table[("NLL", "Base (zero-shot)")][title] == f"{reported[task]['nll,none']:.2f}"
    assert table[("ACC", "Me-LoRA [paper]")]["OBQA"] == "85.17 ± 0.03"
    assert (out / "tables.csv").stat().st_size > 0 and "\\begin{tabular}" in (out / "tables.tex").read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    assert [p.name.split("_")[0] for p in pngs].count("reliability") == 2
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(pngs[0]).shape
    assert height > 300 and width > 300
