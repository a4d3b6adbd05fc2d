"""`melora params`: the paper's Table 1 setting (Llama-2-7B and 13B shapes, q and v) from a config alone."""

from __future__ import annotations

import json
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from melora.cli import main  # noqa: E402


LLAMA2 = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40},
}
# exact counts (the paper's Table 1 rounds these; see melora/adapters/params.py for where it disagrees)
EXPECTED = {
    ("7b", 8): (4_194_304, 6_291_456, 4_202_496),
    ("7b", 64): (33_554_432, 50_331_648, 34_078_720),
    ("13b", 8): (6_553_600, 9_830_400, 6_563_840),
    ("13b", 64): (52_428_800, 78_643_200, 53_084_160),
}


def _config(tmp_path, size: str) -> str:
    shape = LLAMA2[size]
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "num_key_value_heads": shape["num_attention_heads"],
        **shape,
    }
    path = tmp_path / f"llama-2-{size}.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_table_for_llama2_7b(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["params", "--model-config", _config(tmp_path, "7b"), "--rank", "8", "--target-modules", "q_proj,v_proj"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "64 adapted linears" in out
    for label, count in zip(("LoRA", "BLoB", "Me-LoRA"), EXPECTED[("7b", 8)], strict=True):
        assert any(line.split()[:2] == ["8", label] and f"{count:,}" in line for line in out.splitlines()), label
    assert "Me-LoRA / BLoB = 0.6680" in out


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_json_for_ranks_8_and_64(size: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["params", "--model-config", _config(tmp_path, size), "--rank", "8,64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["target_modules"] == ["q_proj", "v_proj"]
    for row in report["rows"]:
        counts = tuple(row["methods"][m]["params"] for m in ("lora", "blob", "melora"))
        assert counts == EXPECTED[(size, row["rank"])]
        assert row["methods"]["melora"]["bytes_fp32"] == 4 * counts[2]
        assert row["methods"]["melora"]["bytes_bf16"] == 2 * counts[2]
        assert row["melora_over_blob"] == pytest.approx(counts[2] / counts[1])


def test_model_directory_is_accepted(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    os.replace(_config(tmp_path, "7b"), tmp_path / "config.json")
    assert main(["params", "--model-config", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["methods"]["lora"]["params"] == 4_194_304


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-config", "/nonexistent/config.json"], "does not exist"),
        (["--rank", "0"], "`--rank` to be positive ints"),
        (["--target-modules", "w_proj"], "match no linear layer"),
    ],
)
def test_bad_input_is_one_clear_line(args, message: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["params", "--model-config", _config(tmp_path, "7b"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("melora params: error:") and message in err and err.count("\n") == 1


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["params", "--help"])
    out = capsys.readouterr().out
    assert "--model-config" in out and "--target-modules" in out and "--json" in out
