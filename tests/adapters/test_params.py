"""Parameter accounting: the formulas agree with the trainable parameters PEFT actually creates."""

from __future__ import annotations

import json

import peft
import pytest

from melora.adapters.params import (
    ModelConfigError,
    count_adapter_params,
    find_target_linears,
    params_table,
    trainable_params,
)
from tests.adapters.conftest import TINY, adapter_config, tiny_base


TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.mark.parametrize("kind", ["lora", "blob", "melora"])
@pytest.mark.parametrize("r", [2, 8])
def test_formula_matches_peft(kind: str, r: int) -> None:
    config = adapter_config(kind, r=r)
    config.target_modules = set(TARGETS)
    model = peft.get_peft_model(tiny_base(), config)
    linears = find_target_linears(tiny_base(), TARGETS)
    assert len(linears) == 3 * TINY["num_hidden_layers"]
    expected = sum(trainable_params(kind, lin.in_features, lin.out_features, r) for lin in linears)
    assert model.get_nb_trainable_parameters()[0] == expected
    assert params_table(linears, r)["methods"][kind]["params"] == expected


def test_report_from_config_dir(tmp_path) -> None:
    tiny_base().config.save_pretrained(tmp_path)
    report = count_adapter_params(tmp_path, [4], ["q_proj"])
    assert report["adapted_linears"] == 2
    row = report["rows"][0]
    assert row["methods"]["lora"] == {"params": 2 * 4 * 64, "bytes_fp32": 4 * 512, "bytes_bf16": 2 * 512}
    assert row["melora_over_blob"] == pytest.approx((512 + 2 * 32) / (2 * 4 * 96))
    json.dumps(report)  # JSON-ready


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(ModelConfigError, match="does not exist"):
        count_adapter_params(tmp_path / "missing.json", [8], ["q_proj"])
    with pytest.raises(ModelConfigError, match=r"\['w_proj'\] match no linear layer. Available: .*q_proj"):
        find_target_linears(tiny_base(), ["w_proj"])
    with pytest.raises(ModelConfigError, match="`rank` to be a positive int"):
        params_table([], 0)
    with pytest.raises(ValueError, match="`method` to be one of"):
        trainable_params("vera", 4, 4, 2)
