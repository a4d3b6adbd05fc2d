"""The melora_* task YAMLs and hooks: generated files up to date, documents from the protocol, metrics, errors."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from melora import protocol
from melora.errors import DataNotFoundError


TASKS_DIR = Path(__file__).resolve().parents[2] / "lm_eval_tasks"


def _utils():
    spec = importlib.util.spec_from_file_location("melora_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_yamls_are_up_to_date():
    script = TASKS_DIR / "_generate_configs.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_task_manager_indexes_the_nine_tasks_and_two_groups():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(tm.all_subtasks) >= {protocol.TASKS[t].lm_eval_name for t in protocol.TASKS}
    assert {"melora_id", "melora_ood"} <= set(tm.all_groups)


def test_documents_are_the_protocols_test_split(smollm_tokenizer, embedded_model_path):
    dataset = _utils().load_test_split("arc_c", pretrained=embedded_model_path, samples=4, version=1.0)
    expected = protocol.load_examples("arc_c", "test", tokenizer=smollm_tokenizer)
    assert list(dataset) == ["test"] and len(dataset["test"]) == len(expected) == 1172
    for i in (0, 500, 1171):
        doc = dataset["test"][i]
        assert doc["prompt"] == expected[i].prompt and doc["gold"] == expected[i].gold
        assert doc["choices"] == list(expected[i].answers) and doc["choices"][0] == " A"


def test_boolq_passages_are_shortened_with_the_models_tokenizer(smollm_tokenizer, embedded_model_path):
    docs = _utils().load_test_split("boolq", pretrained=embedded_model_path)["test"]
    lengths = [len(smollm_tokenizer(d["prompt"]).input_ids) for d in docs.select(range(200))]
    assert max(lengths) + 1 <= protocol.DEFAULT_MAX_LENGTH
    assert all(d["prompt"].endswith("Answer (true or false):") for d in docs.select(range(200)))


def test_missing_data_names_the_problem(monkeypatch, tmp_path, embedded_model_path):
    monkeypatch.setenv("MELORA_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="MELORA_DATA_DIR"):
        _utils().load_test_split("mmlu_chem", pretrained=embedded_model_path)


def test_process_results_items():
    utils = _utils()
    lls = [math.log(0.2), math.log(0.5), math.log(0.3)]
    items = utils.process_results({"gold": 2}, [(ll - 1.0, False) for ll in lls])  # shift: normalised away
    assert items["acc"] == 0.0
    assert items["nll"] == pytest.approx(-math.log(0.3))
    assert items["ece"] == pytest.approx([0.5, 0.0])
    gold, probs = items["brier"]
    assert gold == 2 and probs == pytest.approx([0.2, 0.5, 0.3])


def test_aggregations_match_netcal_and_a_direct_brier():
    from netcal.metrics import ECE

    utils = _utils()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.7, size=300)
    labels = rng.integers(0, 4, size=300)
    items = [
        utils.process_results({"gold": int(y)}, [(math.log(p), False) for p in ps]) for ps, y in zip(probs, labels)
    ]
    assert utils.ece([it["ece"] for it in items]) == pytest.approx(ECE(bins=15).measure(probs, labels), abs=1e-9)
    expected_brier = np.mean(((probs - np.eye(4)[labels]) ** 2).sum(axis=1))
    assert utils.brier([it["brier"] for it in items]) == pytest.approx(expected_brier)


def test_cloze_tasks_and_groups_are_indexed():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(tm.all_subtasks) >= {f"{protocol.TASKS[t].lm_eval_name}_cloze" for t in protocol.TASKS}
    assert {"melora_id_cloze", "melora_ood_cloze"} <= set(tm.all_groups)


def test_cloze_requests_are_the_protocols_scored_pairs(embedded_model_path):
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = get_task_dict(["melora_wgs_cloze", "melora_arc_e_cloze"], tm)
    for name, task_name in (("melora_wgs_cloze", "wgs"), ("melora_arc_e_cloze", "arc_e")):
        task = tasks[name]
        task.build_all_requests(limit=3, rank=0, world_size=1)
        examples = protocol.load_examples(task_name, "test", limit=3, answer_format="cloze")
        for ex in examples:
            doc_index = int(ex.doc_id.rsplit("/", 1)[1])
            pairs = [tuple(i.args) for i in sorted(task.instances, key=lambda i: i.idx) if i.doc_id == doc_index]
            assert pairs == ex.scored_pairs()
    wg = protocol.load_examples("wgs", "test", limit=1, answer_format="cloze")[0]
    assert len(set(wg.answers)) == 1 and wg.contexts[0] != wg.contexts[1]  # one continuation, two contexts


def test_cloze_norm_process_results_scales_log_likelihoods_by_answer_length():
    utils = _utils()
    doc = {"gold": 1, "score_scale": [1 / 2, 1 / 20]}
    out = utils.process_results(doc, [(-4.0, False), (-20.0, False)])  # per character: -2 vs -1
    assert out["acc"] == 1.0
    assert out["brier"][1] == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])
    plain = utils.process_results({"gold": 1}, [(-4.0, False), (-20.0, False)])
    assert plain["acc"] == 0.0


def test_lm_evals_custom_kwargs_hint_is_dropped_for_our_tasks_only(caplog, embedded_model_path):
    import logging

    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        get_task_dict(["melora_mmlu_chem"], tm)  # builds the task: lm-eval logs the hint as it loads the dataset
        logging.getLogger("lm_eval.api.task").warning("other_task: Custom kwargs can be passed to `--metadata` ...")
    hints = [r.getMessage() for r in caplog.records if "Custom kwargs" in r.getMessage()]
    assert hints == ["other_task: Custom kwargs can be passed to `--metadata` ..."]
