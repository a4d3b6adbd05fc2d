"""Metrics recomputed from samples files written with known probabilities, pooled groups, seeds and bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from melora.errors import MeloraWarning
from melora.report.aggregate import build_tables
from melora.report.loading import load_records
from tests.report.fakes import hf_config, melora_config, write_run


# conf 0.9, 0.6, 0.7, 0.8; correct 1, 0, 1, 1; each in its own 15-bin bin
PROBS = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]]
LABELS = [0, 1, 1, 0]
EXPECTED = {
    "acc": 0.75,
    "ece": (0.1 + 0.6 + 0.3 + 0.2) / 4,
    "nll": -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4,
    "brier": (0.02 + 0.72 + 0.18 + 0.08) / 4,
}


def _tables(paths, **kwargs):
    return build_tables(load_records(paths), **kwargs)


@pytest.mark.parametrize("with_brier", [True, False], ids=["brier-item", "log-likelihoods"])
def test_task_metrics_equal_hand_computed_values(tmp_path, with_brier):
    write_run(tmp_path, {"melora_obqa": (PROBS, LABELS)}, hf_config(), with_brier=with_brier)
    (table,) = _tables([tmp_path])
    cell = table.cells[(table.methods[0], "melora_obqa")]
    for metric, value in EXPECTED.items():
        assert cell[metric].mean == pytest.approx(value, abs=1e-12), metric
        assert cell[metric].std is None  # one seed: no std


def test_pooled_group_ece_is_computed_over_the_union_not_averaged(tmp_path):
    arc_c = ([[0.9, 0.1], [0.9, 0.1]], [0, 1])  # bin 13: acc 0.5, conf 0.9 -> ECE 0.4
    arc_e = ([[0.92, 0.08], [0.95, 0.05]], [0, 0])  # bins 13 and 14 -> ECE (0.08 + 0.05) / 2 = 0.065
    groups = {"melora_ood": ["melora_obqa", "melora_arc_c", "melora_arc_e"]}
    tasks = {"melora_obqa": (PROBS, LABELS), "melora_arc_c": arc_c, "melora_arc_e": arc_e}
    write_run(tmp_path, tasks, melora_config(), groups=groups)
    (table,) = _tables([tmp_path])
    assert table.setting == "ood"
    keys = [k for k, _ in table.columns]
    assert keys == ["melora_obqa", "melora_arc_c", "melora_arc_e", "pooled_smaller_shift"]  # no MMLU: no larger shift
    method = table.methods[0]
    assert table.cells[(method, "melora_arc_c")]["ece"].mean == pytest.approx(0.4)
    assert table.cells[(method, "melora_arc_e")]["ece"].mean == pytest.approx(0.065)
    pooled = table.cells[(method, "pooled_smaller_shift")]
    # pooled bin 13: conf (0.9, 0.9, 0.92), correct (1, 0, 1); bin 14: conf 0.95, correct 1
    expected_ece = (3 * abs(2 / 3 - (0.9 + 0.9 + 0.92) / 3) + abs(1 - 0.95)) / 4
    assert pooled["ece"].mean == pytest.approx(expected_ece, abs=1e-12)
    assert expected_ece != pytest.approx((0.4 + 0.065) / 2)
    assert pooled["acc"].mean == pytest.approx(0.75)
    gold_probs = (0.9, 0.1, 0.92, 0.95)
    assert pooled["nll"].mean == pytest.approx(-sum(math.log(p) for p in gold_probs) / 4)


def test_larger_shift_pools_the_three_mmlu_sets(tmp_path):
    tasks = {
        "melora_mmlu_chem": ([[0.5, 0.3, 0.2]], [0]),
        "melora_mmlu_phys": ([[0.2, 0.7, 0.1]], [0]),
        "melora_mmlu_math": ([[0.25, 0.25, 0.5]], [2]),
    }
    write_run(tmp_path, tasks, melora_config())  # no group recorded: MMLU alone marks the shift setting
    (table,) = _tables([tmp_path])
    assert table.setting == "ood"
    cell = table.cells[(table.methods[0], "pooled_larger_shift")]
    assert cell["acc"].mean == pytest.approx(2 / 3)
    chem, phys, math_ = 0.5**2 + 0.3**2 + 0.2**2, 0.8**2 + 0.7**2 + 0.1**2, 0.25**2 + 0.25**2 + 0.5**2
    assert cell["brier"].mean == pytest.approx((chem + phys + math_) / 3)


def test_mean_and_std_over_three_seeds_equal_numpy(tmp_path):
    rng = np.random.default_rng(0)
    per_seed = []
    for seed in range(3):
        logits = rng.normal(size=(20, 4))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = rng.integers(0, 4, 20)
        write_run(tmp_path / f"s{seed}", {"melora_arc_c": (probs.tolist(), labels.tolist())}, melora_config(seed=seed))
        per_seed.append((probs, labels))
    (table,) = _tables([tmp_path])
    assert len(table.methods) == 1
    cell = table.cells[(table.methods[0], "melora_arc_c")]
    from melora.metrics import summarize

    values = {m: np.array([summarize(p, y)[m] for p, y in per_seed]) for m in ("acc", "ece", "nll", "brier")}
    for metric, v in values.items():
        assert cell[metric].n == 3
        assert cell[metric].mean == pytest.approx(np.mean(v), abs=1e-12)
        assert cell[metric].std == pytest.approx(np.std(v, ddof=1), abs=1e-12)


def test_bootstrap_intervals_are_seeded_and_bracket_the_mean(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=60)
    write_run(tmp_path, {"melora_obqa": (probs.tolist(), rng.integers(0, 3, 60).tolist())}, hf_config())
    first = _tables([tmp_path], bootstrap=200, seed=3)[0]
    again = _tables([tmp_path], bootstrap=200, seed=3)[0]
    key = (first.methods[0], "melora_obqa")
    for metric, summary in first.cells[key].items():
        low, high = summary.ci
        assert low <= summary.mean <= high or metric == "ece"  # ECE is biased upward under resampling
        assert low < high
        assert again.cells[key][metric].ci == summary.ci


def test_reported_mismatch_warns(tmp_path):
    wrong = {"melora_obqa": {"acc": 0.5, "ece": EXPECTED["ece"], "nll": EXPECTED["nll"], "brier": EXPECTED["brier"]}}
    write_run(tmp_path, {"melora_obqa": (PROBS, LABELS)}, hf_config(), reported=wrong)
    with pytest.warns(MeloraWarning, match=r"acc recomputed from the samples is 0\.750000"):
        (table,) = _tables([tmp_path])
    assert table.cells[(table.methods[0], "melora_obqa")]["acc"].mean == 0.75
