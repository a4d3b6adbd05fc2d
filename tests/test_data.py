"""Data access: local copies, the clear error for missing data, and the download writer."""

from __future__ import annotations

import json

import pytest

from melora import data
from melora.download import download_all, source_splits
from melora.errors import DataNotFoundError


def test_local_copy_is_read_in_order(tmp_path, monkeypatch):
    rows = [{"question": f"q{i}", "answer": i % 2 == 0, "passage": "p"} for i in range(5)]
    data.write_split(rows, tmp_path, "google/boolq", "default", "validation")
    monkeypatch.setenv("MELORA_DATA_DIR", str(tmp_path))
    assert data.load_split("boolq", None, "validation") == rows
    assert data.load_split("google/boolq", "default", "validation") == rows


def test_missing_local_split_names_dataset_split_and_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("MELORA_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        data.load_split("allenai/openbookqa", "main", "validation")
    message = str(info.value)
    for needle in ("allenai/openbookqa", "'validation'", "MELORA_DATA_DIR", "hub", "openbookqa/main/validation.jsonl"):
        assert needle in message


def test_missing_split_with_no_hub_is_the_clear_error(monkeypatch):
    monkeypatch.delenv("MELORA_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"allenai/ai2_arc \(ARC-Easy\), split 'test' is not available"):
        data.load_split("allenai/ai2_arc", "ARC-Easy", "test")


def test_unknown_dataset():
    with pytest.raises(DataNotFoundError, match="Unknown dataset"):
        data.load_split("someone/else", None, "train")


def test_download_writes_the_layout_from_an_in_memory_source(tmp_path, monkeypatch):
    import datasets

    source = {
        ("allenai/openbookqa", "main", split): datasets.Dataset.from_list(
            [
                {
                    "id": f"{split}-{i}",
                    "question_stem": "q",
                    "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                    "answerKey": "A",
                }
                for i in range(3)
            ]
        )
        for split in ("train", "validation", "test")
    }
    written = list(download_all(tmp_path, tasks=["obqa"], fetch=lambda d, c, s: source[(d, c, s)].to_list()))
    assert sorted(p.name for p in written) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    first = json.loads((tmp_path / "openbookqa" / "main" / "train.jsonl").read_text().splitlines()[0])
    assert first["id"] == "train-0" and first["choices"]["label"] == ["A", "B"]
    monkeypatch.setenv("MELORA_DATA_DIR", str(tmp_path))
    from melora.protocol import load_examples

    assert [ex.gold for ex in load_examples("obqa", "test")] == [0, 0, 0]
    assert not list(tmp_path.rglob("*.partial"))


def test_source_splits_cover_what_the_protocol_reads():
    splits = source_splits()
    assert ("allenai/winogrande", "winogrande_s", "validation") in splits
    assert ("google/boolq", "default", "train") in splits
    assert ("cais/mmlu", "college_physics", "test") in splits
    assert not any(s == ("cais/mmlu", "college_physics", "train") for s in splits)
    assert len(splits) == len(set(splits))
