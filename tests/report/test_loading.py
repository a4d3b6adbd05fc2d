"""Finding runs and identifying method, base model, seed and setting from what results files record."""

from __future__ import annotations

import json

import pytest

from melora.errors import MeloraWarning
from melora.report.loading import Method, ReportError, load_records, parse_model_args
from tests.report.fakes import hf_config, melora_config, write_run


DOC = ([[0.7, 0.3]], [0])

METHOD_CASES = [
    ("hf", hf_config(), "base", "Base (zero-shot)"),
    ("melora", melora_config("melora", samples=10), "melora", "Me-LoRA (S=10)"),
    ("melora-mean", melora_config("melora", samples=0), "melora", "Me-LoRA (mean)"),
    ("blob-logits", melora_config("blob", samples=5, average="logits"), "blob", "BLoB (S=5, logit avg)"),
    ("lora", melora_config("lora", samples=0), "lora", "LoRA"),
    ("mcd", melora_config("lora", samples=3, mc_dropout=True), "mcd", "MCD (S=3)"),
    ("ens", melora_config("ensemble:lora", samples=0, ensemble_members=3), "ensemble", "ENS (3×LoRA)"),
    ("no-adapter", melora_config("none", samples=0, adapter=None), "base", "Base (zero-shot)"),
]


@pytest.mark.parametrize(("name", "config", "family", "label"), METHOD_CASES, ids=[c[0] for c in METHOD_CASES])
def test_method_from_recorded_config(tmp_path, name, config, family, label):
    write_run(tmp_path / "not-the-method-name", {"melora_obqa": DOC}, config)
    (rec,) = load_records([tmp_path])
    assert rec.run.method.family == family
    assert rec.run.method.label == label
    assert rec.run.base_model == "SmolLM2-135M-Instruct"


def test_base_model_seed_and_setting(tmp_path):
    config = hf_config(pretrained="meta-llama/Llama-2-13b-hf", seed=7)
    groups = {"melora_ood": ["melora_obqa", "melora_arc_c"]}
    write_run(tmp_path / "a", {"melora_obqa": DOC, "melora_arc_c": DOC}, config, groups=groups)
    write_run(tmp_path / "b", {"melora_obqa": DOC}, melora_config(seed=3, pretrained=None) | {"model_args": {}})
    recs = load_records([tmp_path])
    by_dir = {(r.run.results_path.parent.name, r.task): r for r in recs}
    a = by_dir[("a", "melora_obqa")]
    assert (a.run.base_model, a.run.seed, a.setting) == ("meta-llama/Llama-2-13b-hf", 7, "ood")
    b = by_dir[("b", "melora_obqa")]  # --model melora without pretrained: the embedded model
    assert (b.run.base_model, b.run.seed, b.setting) == ("SmolLM2-135M-Instruct", 3, "id")


def test_rerun_keeps_the_newest_with_a_warning(tmp_path):
    write_run(tmp_path / "old", {"melora_obqa": ([[0.4, 0.6]], [0])}, melora_config(), timestamp="t1", date=1.0)
    write_run(tmp_path / "new", {"melora_obqa": DOC}, melora_config(), timestamp="t2", date=2.0)
    with pytest.warns(MeloraWarning, match="same adapter and seed"):
        (rec,) = load_records([tmp_path])
    assert rec.run.results_path.parent.name == "new"


def test_model_args_string_form():
    assert parse_model_args("pretrained=x,dtype=float32") == {"pretrained": "x", "dtype": "float32"}
    assert parse_model_args({"a": 1}) == {"a": 1}
    assert parse_model_args(None) == {}


def test_method_sort_order_follows_the_paper():
    methods = [
        Method("melora", "melora", 1, 10),
        Method("base"),
        Method("blob", "blob", 1, 10),
        Method("lora", "lora"),
    ]
    assert [m.family for m in sorted(methods, key=Method.sort_key)] == ["base", "lora", "blob", "melora"]


def test_refuses_invalid_results_json(tmp_path):
    (tmp_path / "results_x.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"results_x\.json' is not valid JSON \(line 1"):
        load_records([tmp_path])


def test_refuses_foreign_json(tmp_path):
    (tmp_path / "results_x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReportError, match="is not an lm-eval results file"):
        load_records([tmp_path])


def test_refuses_missing_samples(tmp_path):
    path = write_run(tmp_path, {"melora_obqa": DOC}, hf_config())
    next(tmp_path.glob("samples_*.jsonl")).unlink()
    with pytest.raises(ReportError, match=r"no samples file for task\(s\) melora_obqa.*--log_samples"):
        load_records([path])


def test_refuses_bad_samples_line(tmp_path):
    write_run(tmp_path, {"melora_obqa": DOC}, hf_config())
    sample = next(tmp_path.glob("samples_*.jsonl"))
    sample.write_text(sample.read_text() + '{"doc_id": 1, "filtered_resps": "oops"}\n')
    with pytest.raises(ReportError, match=r"line 2: expected a `brier` item"):
        load_records([tmp_path])


def test_refuses_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        load_records([tmp_path / "nope"])
    with pytest.raises(ReportError, match="No lm-eval results file"):
        load_records([tmp_path])


def test_orphan_samples_warns(tmp_path):
    write_run(tmp_path, {"melora_obqa": DOC}, hf_config())
    (tmp_path / "samples_melora_obqa_other.jsonl").write_text("")
    with pytest.warns(MeloraWarning, match="no results file of the same run"):
        load_records([tmp_path])


def test_method_labels_use_the_recorded_training_method():
    from melora.report.loading import _method

    assert _method({"adapter_kind": "lora", "training_method": "map", "samples": 0}, {}).label == "MAP"
    assert _method({"adapter_kind": "lora", "training_method": None, "samples": 0}, {}).label == "LoRA"
    assert _method({"adapter_kind": "laplace", "samples": 0}, {}).label == "LAP (probit)"
    assert _method({"adapter_kind": "melora", "samples": 10}, {}).label == "Me-LoRA (S=10)"


def test_cloze_task_names_map_to_their_protocol_task():
    from melora.report.loading import task_key, task_title

    assert [task_key(t) for t in ("melora_arc_c", "melora_arc_c_cloze", "melora_arc_c_cloze_norm")] == ["arc_c"] * 3
    assert task_title("melora_arc_c_cloze_norm") == "ARC-C (cloze, per char)"
    assert task_title("melora_obqa_cloze") == "OBQA (cloze)" and task_key("arc_easy") == "arc_easy"
