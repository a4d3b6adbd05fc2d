"""Markdown, CSV and LaTeX tables: units, mean ± std, blanks, best marks, several base models."""

from __future__ import annotations

import csv
import io

from melora.report.aggregate import build_tables
from melora.report.loading import load_records
from melora.report.tables import table_view, to_csv, to_latex, to_markdown
from tests.report.fakes import hf_config, melora_config, parse_markdown, write_run


GOOD = ([[0.9, 0.1], [0.2, 0.8]], [0, 1])  # acc 1.0
BAD = ([[0.6, 0.4], [0.7, 0.3]], [1, 0])  # acc 0.5


def _views(tmp_path):
    return [table_view(t) for t in build_tables(load_records([tmp_path]))]


def test_one_method_one_seed_has_no_std_and_percent_units(tmp_path):
    write_run(tmp_path, {"melora_obqa": GOOD}, hf_config())
    (view,) = _views(tmp_path)
    md = to_markdown(view)
    (table,) = parse_markdown(md).values()
    assert table[("ACC", "Base (zero-shot)")] == {"OBQA": "100.00"}
    assert table[("ECE", "Base (zero-shot)")] == {"OBQA": "15.00"}  # |1 - 0.9| and |1 - 0.8|, mean 0.15
    assert "±" not in md.split("- Mean")[0]
    assert "ACC and ECE in percent" in md


def test_missing_tasks_are_blank_and_best_is_bold(tmp_path):
    write_run(tmp_path / "m", {"melora_obqa": GOOD, "melora_arc_e": GOOD}, melora_config("melora"))
    write_run(tmp_path / "b", {"melora_obqa": BAD}, hf_config())
    (view,) = _views(tmp_path)
    (table,) = parse_markdown(to_markdown(view)).values()
    assert table[("ACC", "Base (zero-shot)")] == {"ARC-E": "", "OBQA": "50.00"}
    assert table[("ACC", "Me-LoRA (S=10)")] == {"ARC-E": "100.00", "OBQA": "**100.00**"}  # one row: not marked
    assert table[("ECE", "Base (zero-shot)")]["OBQA"].startswith("**") is False


def test_several_base_models_get_separate_tables(tmp_path):
    write_run(tmp_path / "x", {"melora_obqa": GOOD}, hf_config("/m/model-x"))
    write_run(tmp_path / "y", {"melora_obqa": BAD}, hf_config("org/model-y"))
    titles = [v.title for v in _views(tmp_path)]
    assert titles == ["model-x, in-distribution", "org/model-y, in-distribution"]


def test_csv_and_latex_hold_the_markdown_numbers(tmp_path):
    for seed, data in enumerate([GOOD, BAD, GOOD]):
        write_run(tmp_path / f"s{seed}", {"melora_obqa": data}, melora_config(seed=seed))
    (view,) = _views(tmp_path)
    (table,) = parse_markdown(to_markdown(view)).values()
    assert table[("ACC", "Me-LoRA (S=10)")]["OBQA"] == "83.33 ± 28.87"  # numpy: mean, std(ddof=1) of 100, 50, 100
    rows = list(csv.DictReader(io.StringIO(to_csv([view]))))
    acc = next(r for r in rows if r["metric"] == "ACC")
    assert (acc["mean"], acc["std"], acc["n"], acc["unit"]) == ("83.33", "28.87", "3", "%")
    latex = to_latex(view)
    assert r"83.33$_{\pm 28.87}$" in latex
    assert latex.count(r"\midrule") == 4 and r"\begin{tabular}{llc}" in latex
