"""The paper's tables as shipped in the package, checked against values typed here from the paper's text."""

from __future__ import annotations

import pytest

from melora.report.aggregate import build_tables
from melora.report.loading import load_records
from melora.report.published import COMPARE_CHOICES, matches_base_model, published_tables
from melora.report.tables import table_view, to_markdown
from tests.report.fakes import hf_config, parse_markdown, write_run


# (name, setting, metric, method, task, mean, std): a sample over the four tables, typed from the paper
SAMPLE = [
    ("paper-13b", "id", "acc", "Me-LoRA", "obqa", 85.17, 0.03),
    ("paper-13b", "id", "ece", "BLoB", "obqa", 6.23, 0.51),
    ("paper-13b", "id", "acc", "MAP", "arc_e", 88.06, 0.67),
    ("paper-13b", "id", "nll", "LAP", "wgs", 2.75, 1.30),
    ("paper-13b", "id", "ece", "BLoB", "boolq", 1.05, 0.19),
    ("paper-13b", "ood", "acc", "Me-LoRA", "mmlu_chem", 42.75, 0.08),
    ("paper-13b", "ood", "ece", "MCD", "arc_e", 1.90, 0.19),
    ("paper-13b", "ood", "nll", "ENS", "mmlu_phys", 1.83, 0.08),
    ("paper-7b", "id", "acc", "BLoB", "wgs", 66.71, 0.17),
    ("paper-7b", "id", "ece", "ENS", "wgs", 14.20, 5.24),
    ("paper-7b", "id", "nll", "Me-LoRA", "boolq", 0.42, 0.00),
    ("paper-7b", "ood", "acc", "MAP", "mmlu_math", 36.46, 0.85),
    ("paper-7b", "ood", "ece", "MAP", "mmlu_phys", 31.82, 4.20),
    ("paper-7b", "ood", "nll", "LAP", "mmlu_math", 4.38, 2.07),
]
# cells the paper's text cuts: left empty (or the std only)
EMPTY = [
    ("paper-13b", "ood", "acc", "Me-LoRA", "mmlu_math"),
    ("paper-13b", "ood", "nll", "MAP", "mmlu_math"),
    ("paper-7b", "ood", "nll", "Me-LoRA", "obqa"),
]
STD_ONLY_EMPTY = [
    ("paper-13b", "ood", "nll", "Me-LoRA", "arc_c", 0.68),
    ("paper-7b", "ood", "ece", "BLoB", "mmlu_math", 18.36),
]


@pytest.mark.parametrize(("name", "setting", "metric", "method", "task", "mean", "std"), SAMPLE)
def test_published_sample(name, setting, metric, method, task, mean, std):
    cell = published_tables(name)[setting].get(metric, method, task)
    assert (cell.mean, cell.std) == (mean, std)


def test_cut_cells_are_empty():
    for name, setting, metric, method, task in EMPTY:
        assert published_tables(name)[setting].get(metric, method, task) is None
    for name, setting, metric, method, task, mean in STD_ONLY_EMPTY:
        cell = published_tables(name)[setting].get(metric, method, task)
        assert (cell.mean, cell.std) == (mean, None)


def test_every_table_is_complete_in_shape():
    for name in COMPARE_CHOICES:
        tables = published_tables(name)
        assert set(tables) == {"id", "ood"}
        for table in tables.values():
            assert len(table.columns) == 6
            assert {m for _, m, _ in table.cells} == {"MAP", "MCD", "ENS", "LAP", "BLoB", "Me-LoRA"}


def test_base_model_match():
    assert matches_base_model("paper-13b", "meta-llama/Llama-2-13b-hf")
    assert not matches_base_model("paper-13b", "Llama-2-7b-hf")
    assert not matches_base_model("paper-7b", "SmolLM2-135M-Instruct")


def test_compare_puts_published_rows_in_the_right_cells(tmp_path):
    write_run(tmp_path, {"melora_obqa": ([[0.9, 0.1]], [0])}, hf_config())
    (table,) = build_tables(load_records([tmp_path]))
    md = to_markdown(table_view(table, published_tables("paper-13b")[table.setting]))
    (parsed,) = parse_markdown(md).values()
    assert parsed[("ACC", "Me-LoRA [paper]")]["OBQA"] == "85.17 ± 0.03"
    assert parsed[("ECE", "BLoB [paper]")]["OBQA"] == "6.23 ± 0.51"
    assert parsed[("ACC", "MAP [paper]")]["WG-S"] == "72.35 ± 0.75"  # paper columns shown even without our run
    assert parsed[("ACC", "Base (zero-shot)")]["WG-S"] == ""
    assert "Different base model" in md and "Table 2" in md
