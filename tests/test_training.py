"""Training: every method learns and saves the right adapter kind, optimiser groups, resume, errors, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from melora import training
from melora.adapters import adapter_kind, load_adapter
from melora.errors import DataNotFoundError, MeloraError
from melora.train_config import TrainConfig, build_parser, config_from_args
from tests.training_fixtures import write_synthetic_obqa, write_tiny_model


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_model_path):
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_model_path))


@pytest.fixture
def synthetic_data(tmp_path, monkeypatch):
    root = write_synthetic_obqa(tmp_path / "data")
    monkeypatch.setenv("MELORA_DATA_DIR", str(root))
    return root


def _config(tmp_path, model, **overrides) -> TrainConfig:
    base = dict(
        method="melora",
        task="obqa",
        model=model,
        output_dir=str(tmp_path / "run"),
        max_steps=12,
        batch_size=4,
        lr=1e-2,
        kl_lr=1e-3,
        warmup_ratio=0.0,
        dropout=0.0,
        eval_every=6,
        eval_samples=2,
        eval_batch_size=8,
        train_limit=4,
        max_length=64,
    )
    return TrainConfig(**{**base, **overrides})


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


EXPECTED_KIND = {"melora": "melora", "blob": "blob", "map": "lora", "mle": "lora", "mcd": "lora"}


@pytest.mark.parametrize("method", list(EXPECTED_KIND))
def test_method_learns_a_fixed_batch_and_saves_its_kind(method, tmp_path, tiny_model_dir, synthetic_data):
    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path, tiny_model_dir, method=method, max_steps=40, eval_every=20, lr=5e-2)
    best = training.train(cfg)
    losses = _losses(Path(cfg.output_dir))
    assert len(losses) == cfg.max_steps
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # train_limit=4 = batch: a fixed batch
    assert adapter_kind(best) == EXPECTED_KIND[method]
    model = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), best)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected_class = {"melora": "MeLoraLinear", "blob": "BlobLinear"}.get(method, "Linear")
    assert type(layer).__name__ == expected_class
    saved = json.loads((Path(cfg.output_dir) / "config.json").read_text())
    assert saved["method"] == method and saved["max_steps"] == 40
    validation = [
        r for r in map(json.loads, (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()) if "val_nll" in r
    ]
    assert [r["step"] for r in validation] == [20, 40]
    assert all(set(r) >= {"val_acc", "val_ece", "val_nll", "val_brier"} for r in validation)


def test_ensemble_gathers_members_into_one_adapter(tmp_path, tiny_model_dir, synthetic_data):
    cfg = _config(tmp_path, tiny_model_dir, method="ens", ensemble_size=2, max_steps=4, eval_every=4)
    best = training.train(cfg)
    manifest = json.loads((best / "ensemble.json").read_text())
    assert manifest["kind"] == "ensemble" and manifest["members"] == ["member-0", "member-1"]
    a, b = (load_file(best / m / "adapter_model.safetensors") for m in manifest["members"])
    assert all(adapter_kind(best / m) == "lora" for m in manifest["members"])
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different members


def test_each_optimiser_updates_the_documented_parameters(tmp_path, tiny_model_dir, synthetic_data):
    # AdamW's lr is negligible, so whatever moves is moved by the KL's SGD: it must be A, M, H and never B.
    cfg = _config(tmp_path, tiny_model_dir, lr=1e-30, kl_lr=10.0, kl_weight="uniform", max_steps=2)
    trainer = training.Trainer(cfg)
    trainer._setup()
    assert trainer.param_groups["nll (AdamW)"].startswith("A, B, melora_M, melora_H")
    assert trainer.param_groups["kl (SGD)"].startswith("A, melora_M, melora_H")
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    trainer._step(0)
    moved = {
        n.split(".lora_")[1].split(".")[0]
        for n, p in trainer.unwrapped.named_parameters()
        if n in before and not torch.allclose(p, before[n], atol=1e-12, rtol=0)
    }
    assert moved == {"A", "melora_M", "melora_H"}


@pytest.mark.parametrize("method", ["melora", "blob"])
def test_kl_step_is_sgd_on_the_autograd_gradient_of_the_weighted_kl(method, tmp_path, tiny_model_dir, synthetic_data):
    # The loop takes the KL's gradients in closed form; the update must be the SGD step on autograd's gradient.
    from melora.adapters.kl import kl_divergence
    from melora.kl_weight import kl_weight
    from melora.seeding import stable_seed

    cfg = _config(tmp_path, tiny_model_dir, method=method, lr=1e-30, kl_lr=0.5, kl_weight="uniform", max_steps=2)
    trainer = training.Trainer(cfg)
    trainer._setup()
    params = trainer.kl_params
    before = [p.detach().clone() for p in params]
    noise = torch.rand((), generator=torch.Generator().manual_seed(stable_seed(cfg.seed, "kl", 0)))
    grads = torch.autograd.grad(kl_divergence(trainer.unwrapped, noise=float(noise)), params)
    weight = kl_weight(0, "uniform", trainer.steps_per_epoch, len(trainer.train_examples))
    trainer._step(0)
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(p.detach(), b - 0.5 * weight * g, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_run_shorter_than_an_epoch_says_the_blundell_kl_weight_stays_tiny(
    tmp_path, tiny_model_dir, synthetic_data, capsys
):
    def trainer(name: str, **overrides):
        cfg = _config(tmp_path, tiny_model_dir, train_limit=16, output_dir=str(tmp_path / name), **overrides)
        return training.Trainer(cfg)

    short = trainer("short", max_steps=2)  # of a 4-step epoch
    short._setup()
    assert "the weight never exceeds 1.3e-01" in capsys.readouterr().out  # 2^2 / (2^5 - 1)
    uniform = trainer("uniform", max_steps=2, kl_weight="uniform")
    uniform._setup()
    full = trainer("full", max_steps=4)
    full._setup()
    assert "never exceeds" not in capsys.readouterr().out


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, synthetic_data, monkeypatch):
    common = dict(max_steps=6, eval_every=2, dropout=0.1, train_limit=8)
    straight = _config(tmp_path / "a", tiny_model_dir, **common)
    training.train(straight)

    killed = _config(tmp_path / "b", tiny_model_dir, **common)
    original_step = training.Trainer._step

    def step_then_die(self, step):
        if step == 3:  # after the checkpoint of step 2, before the one of step 4
            raise KeyboardInterrupt("killed")
        return original_step(self, step)

    monkeypatch.setattr(training.Trainer, "_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(killed)
    state = json.loads((Path(killed.output_dir) / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == 2
    monkeypatch.setattr(training.Trainer, "_step", original_step)
    with pytest.raises(MeloraError, match="--resume"):
        training.train(killed)  # an existing run is never overwritten silently
    killed.resume = True
    training.train(killed)

    a = load_file(Path(straight.output_dir) / "adapter-last" / "adapter_model.safetensors")
    b = load_file(Path(killed.output_dir) / "adapter-last" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, synthetic_data, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir, max_steps=4, eval_every=2)
    real_save, calls = torch.save, []

    def save_then_die(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: die half-way through writing it
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt("killed while saving")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(training.torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg)
    monkeypatch.setattr(training.torch, "save", real_save)
    ckpt = Path(cfg.output_dir) / "checkpoint-last"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    torch.load(ckpt / "trainable.pt", weights_only=True)  # intact
    cfg.resume = True
    training.train(cfg)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 4


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, tiny_model_dir, synthetic_data, monkeypatch):
    import melora.readout

    cfg = _config(tmp_path, tiny_model_dir, max_steps=6, eval_every=2)
    real, calls = melora.readout.choice_log_probs, []

    def nan_at_step_4(model, batch):
        out = real(model, batch)
        if model.training:
            calls.append(1)
            if len(calls) == 4:
                return out * float("nan")
        return out

    monkeypatch.setattr(melora.readout, "choice_log_probs", nan_at_step_4)
    with pytest.raises(training.TrainingDivergedError, match=r"the NLL became nan at step 4.*checkpoint.*is kept"):
        training.train(cfg)
    state = json.loads((Path(cfg.output_dir) / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == 2


def test_bad_input_errors(tmp_path, tiny_model_dir, monkeypatch):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "laplace"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "mmlu_chem"])
    with pytest.raises(MeloraError, match="Unknown method 'nope'"):
        training.train(_config(tmp_path, tiny_model_dir, method="nope"))
    with pytest.raises(MeloraError, match="evaluation-only"):
        training.train(_config(tmp_path, tiny_model_dir, task="mmlu_chem"))
    with pytest.raises(MeloraError, match="--batch-size"):
        TrainConfig(batch_size=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MELORA_DATA_DIR", str(empty))
    with pytest.raises(DataNotFoundError, match=r"google/boolq, split 'train' is not available"):
        training.train(_config(tmp_path, tiny_model_dir, task="boolq", output_dir=str(tmp_path / "boolq")))


def test_parser_defaults_are_the_papers():
    cfg = config_from_args(build_parser().parse_args([]))
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.rank, cfg.alpha, cfg.dropout) == (1e-4, 4, 5000, 8, 16, 0.1)
    assert (cfg.warmup_ratio, cfg.max_length, cfg.kl_lr, cfg.prior_std, cfg.eval_every) == (0.02, 300, 1e-4, 0.2, 100)
    assert cfg.target_modules == ("q_proj", "v_proj") and cfg.prior_noise is True
    assert config_from_args(build_parser().parse_args(["--no-prior-noise"])).prior_noise is False


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, tiny_model_dir, synthetic_data):
    args = [
        "--model",
        tiny_model_dir,
        "--task",
        "obqa",
        "--method",
        "melora",
        "--max-steps",
        "4",
        "--eval-every",
        "4",
        "--batch-size",
        "4",
        "--train-limit",
        "8",
        "--dropout",
        "0",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--eval-samples",
        "2",
        "--max-length",
        "64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), *args, "--output-dir", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(ROOT / "scripts/train.py"),
            *args,
            "--output-dir",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "1 process(es)" in one.stdout and "2 process(es) (MULTI_CPU)" in two.stdout  # really data parallel
    a = load_file(tmp_path / "one" / "adapter-last" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter-last" / "adapter_model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert not torch.equal(a[next(k for k in a if "lora_B" in k)], torch.zeros(1))  # training moved B


# ----------------------------------------------------------------------------------------------------------
# Cloze answer format


@pytest.mark.parametrize("method", ["map", "melora"])
def test_cloze_training_learns_a_fixed_batch(method, tmp_path, tiny_model_dir, synthetic_data):
    cfg = _config(tmp_path, tiny_model_dir, method=method, answer_format="cloze", max_steps=30, eval_every=15, lr=5e-2)
    training.train(cfg)
    losses = _losses(Path(cfg.output_dir))
    assert len(losses) == cfg.max_steps
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # train_limit=4 = batch: a fixed batch
    saved = json.loads((Path(cfg.output_dir) / "config.json").read_text())
    assert saved["answer_format"] == "cloze"
    records = list(map(json.loads, (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()))
    assert [r["step"] for r in records if "val_nll" in r] == [15, 30]


def test_cloze_step_loss_equals_the_naive_per_choice_computation(tmp_path, tiny_model_dir, synthetic_data):
    """The first step's loss is the cross-entropy over each choice's full-sequence answer log-likelihood."""
    cfg = _config(tmp_path, tiny_model_dir, method="map", answer_format="cloze", max_steps=2, dropout=0.0)
    trainer = training.Trainer(cfg)
    trainer._setup()
    tok, model = trainer.tokenizer, trainer.unwrapped
    examples = [trainer.train_examples[i] for i in trainer._global_batch(0)]
    assert all(ex.answer_format == "cloze" and ex.prompt.startswith("Question: ") for ex in examples)
    model.eval()  # dropout is 0: train and eval mode compute the same
    losses = []
    with torch.no_grad():
        for ex in examples:
            scores = []
            for context, continuation in ex.scored_pairs():
                ids, n_context = tok(context + continuation).input_ids, len(tok(context).input_ids)
                log_probs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)  # (T, V)
                scores.append(sum(log_probs[t - 1, ids[t]] for t in range(n_context, len(ids))))
            losses.append(-torch.stack(scores).log_softmax(0)[ex.gold])
    logs = trainer._step(0)
    assert logs["loss"] == pytest.approx(float(torch.stack(losses).mean()), abs=1e-5)


def test_answer_format_flag():
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).answer_format == "letters"
    assert config_from_args(parser.parse_args(["--answer-format", "cloze"])).answer_format == "cloze"
    with pytest.raises(SystemExit):
        parser.parse_args(["--answer-format", "words"])
    with pytest.raises(MeloraError, match="--answer-format"):
        TrainConfig(answer_format="words")
