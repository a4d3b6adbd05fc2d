"""The training loop for Me-LoRA and every baseline, run with `accelerate launch scripts/train.py`.

One step, for a global batch of `--batch-size` questions split over the processes:

1. NLL: cross-entropy over each question's answer tokens at the answer position (`melora.readout`, the read-out the
   lm-eval tasks use), with one posterior sample per question for Bayesian methods. With `--answer-format cloze`:
   cross-entropy over the choices' summed answer log-likelihoods (`melora.cloze_readout`: the prompt is run once
   per question, packed with all its choices, and one posterior sample serves them all). `AdamW` (lr `--lr`, linear
   warm-up and decay) steps on it and updates **every trainable adapter parameter** (LoRA: A, B; Me-LoRA: A, B, M,
   H; BLoB: A, B, rho).
2. KL (Bayesian methods): `SGD` (lr `--kl-lr`, same schedule shape) steps on `kl_weight(step) * KL` and updates
   **only the parameters the KL depends on** (Me-LoRA: A, M, H; BLoB: A, rho), with the KL's gradients in closed
   form (`melora.adapters.kl.kl_divergence_with_grads`, tested against autograd), so the NLL's gradients never leak
   into it. BLoB's own code gets this wrong by accident (its AdamW is built before rho exists, so rho is trained only
   by SGD); here both groups are explicit and logged.

Every draw is seeded from `(seed, step, question)` (`melora.seeding`): posterior samples per question, dropout per
step and process, the KL's prior noise per step. A run is therefore the same whatever the number of processes
(dropout aside) and whether it was interrupted and resumed.

Every `--eval-every` steps: validation ACC / ECE / NLL / Brier (`melora.evaluation`, posterior samples for
Bayesian methods), written to `metrics.jsonl`; the best adapter by `--select-by` (default validation NLL, lower is
better; a proper scoring rule that rewards both accuracy and calibration) is kept in `adapter-best/`, the latest in
`adapter-last/`, and the training state in `checkpoint-last/`, each written atomically. The test split is never
read. Only the main process writes.

Checkpoints hold the trainable parameters and optimiser and scheduler states only (a few MB), not the frozen base
model that `accelerator.save_state` would write (538 MB for SmolLM2, 13 GB for Llama-2-7B).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from melora.checkpoint import atomic_directory, recover
from melora.errors import MeloraError
from melora.kl_weight import kl_weight
from melora.methods import get_method
from melora.seeding import stable_seed
from melora.train_config import TrainConfig


logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.pt"


class TrainingDivergedError(MeloraError):
    """The loss (or the KL) became NaN or infinite; the last good checkpoint is kept."""


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a training run; return the directory of the best adapter.

    Raises:
        MeloraError: bad configuration, unavailable data, an existing run without `--resume`/`--overwrite`, or a
            diverged loss (`TrainingDivergedError`).
    """
    method = get_method(cfg.method)
    if method.ensemble:
        return _train_ensemble(cfg, method.member_method)
    return Trainer(cfg).run()


def _train_ensemble(cfg: TrainConfig, member_method: str) -> Path:
    """Train `ensemble_size` members (seeds seed, seed+1, ...) and gather them into one ensemble adapter."""
    out = Path(cfg.output_dir)
    _prepare_output_dir(out, cfg, is_main=True)
    cfg.save(out / "config.json")
    members = []
    for k in range(cfg.ensemble_size):
        member_cfg = replace(
            cfg, method=member_method, seed=cfg.seed + k, output_dir=str(out / f"member-{k}"), overwrite=False
        )
        member_dir = Path(member_cfg.output_dir)
        state = member_dir / "checkpoint-last" / STATE_FILE
        if state.exists() and json.loads(state.read_text())["step"] >= cfg.max_steps:
            print(f"member {k}: already trained")
        else:
            member_cfg.resume = member_dir.exists()
            Trainer(member_cfg).run()
        members.append(member_dir)
    for which in ("adapter-best", "adapter-last"):
        with atomic_directory(out / which) as tmp:
            for k, member_dir in enumerate(members):
                shutil.copytree(member_dir / which, tmp / f"member-{k}")
            manifest = {
                "kind": "ensemble",
                "members": [f"member-{k}" for k in range(len(members))],
                "member_method": member_method,
            }
            (tmp / "ensemble.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out / "adapter-best"


def _prepare_output_dir(out: Path, cfg: TrainConfig, is_main: bool) -> None:
    if not is_main:
        return
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    has_run = (out / "checkpoint-last").exists() or (out / ".checkpoint-last.old").exists()
    if has_run and not cfg.resume:
        raise MeloraError(
            f"Output directory {out} already holds a run. Pass --resume to continue it or --overwrite to start over."
        )
    out.mkdir(parents=True, exist_ok=True)


class Trainer:
    """One training run: `run()` executes it; `_setup()` and `_step(i)` are what `melora.bench` times."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.method = get_method(cfg.method)
        self.out = Path(cfg.output_dir)

    # -- setup -------------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        # cpu=True without CUDA: otherwise accelerate ignores a torchrun launch on CPU and every process trains alone
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), log_with=cfg.report_to, project_dir=str(self.out)
        )
        acc = self.accelerator
        acc.print(f"{acc.num_processes} process(es) ({acc.state.distributed_type.value}), device {acc.device}")
        _prepare_output_dir(self.out, cfg, acc.is_main_process)
        acc.wait_for_everyone()
        if cfg.batch_size % acc.num_processes:
            raise MeloraError(
                f"Expected --batch-size ({cfg.batch_size}) to be divisible by the number of processes "
                f"({acc.num_processes}): it is the global batch."
            )
        set_seed(cfg.seed)  # before the model is built: the adapter's initial weights depend on it
        self._load_model_and_data()
        self._build_optimisers()
        self.start_step, self.best = 0, None
        if cfg.resume:
            self._resume()
        if acc.is_main_process:
            cfg.save(self.out / "config.json")
        if cfg.report_to:
            acc.init_trackers(self.out.name, config=cfg.to_dict())

    def _load_model_and_data(self) -> None:
        import peft
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from melora.embedded_model import resolve_model
        from melora.protocol import check_tokenizer, get_task, load_examples

        cfg, acc = self.cfg, self.accelerator
        task = get_task(cfg.task)
        if not task.has_train:
            raise MeloraError(
                f"Task {cfg.task!r} is evaluation-only; train on one of wgs, wgm, arc_c, arc_e, obqa, boolq."
            )
        model_path = resolve_model(cfg.model) if acc.is_main_process else None
        acc.wait_for_everyone()
        model_path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        check_tokenizer(self.tokenizer, [task.name], answer_format=cfg.answer_format)
        self.train_examples, self.val_examples = (
            load_examples(
                task,
                split,
                tokenizer=self.tokenizer,
                max_length=cfg.max_length,
                limit=limit,
                answer_format=cfg.answer_format,
            )
            for split, limit in (("train", cfg.train_limit), ("validation", cfg.eval_limit))
        )
        if len(self.train_examples) < cfg.batch_size:
            raise MeloraError(
                f"Task {task.name!r} has {len(self.train_examples)} training questions, fewer than "
                f"--batch-size {cfg.batch_size}."
            )
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype)
        if dtype is None:
            dtype = torch.bfloat16 if acc.device.type == "cuda" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model = peft.get_peft_model(base, self.method.peft_config(cfg))
        self.steps_per_epoch = len(self.train_examples) // cfg.batch_size

    def _build_optimisers(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        from melora.adapters.sampling import bayesian_adapters

        cfg, acc = self.cfg, self.accelerator
        nll_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        kl_params = self.method.kl_parameters(self.model) if self.method.bayesian else []
        wd = self.method.weight_decay if cfg.weight_decay is None else cfg.weight_decay
        # foreach: one multi-tensor kernel per update rule, not a Python loop over the many small adapter tensors
        self.optimizer = torch.optim.AdamW([p for _, p in nll_params], lr=cfg.lr, weight_decay=wd, foreach=True)
        warmup = int(cfg.warmup_ratio * cfg.max_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, cfg.max_steps)
        self.param_groups = {"nll (AdamW)": _summarise(nll_params), "kl (SGD)": _summarise(kl_params)}
        acc.print(
            f"optimisers: AdamW(lr={cfg.lr}, weight_decay={wd}) on the NLL updates {self.param_groups['nll (AdamW)']}"
        )
        self.kl_optimizer = self.kl_scheduler = None
        if kl_params:
            self.kl_optimizer = torch.optim.SGD([p for _, p in kl_params], lr=cfg.kl_lr, foreach=True)
            self.kl_scheduler = get_linear_schedule_with_warmup(self.kl_optimizer, warmup, cfg.max_steps)
            acc.print(
                f"            SGD(lr={cfg.kl_lr}) on {cfg.kl_weight}-weighted KL updates "
                f"{self.param_groups['kl (SGD)']}"
            )
            if cfg.kl_weight == "blundell" and cfg.max_steps < self.steps_per_epoch:
                largest = max(
                    kl_weight(s, "blundell", self.steps_per_epoch, len(self.train_examples))
                    for s in range(cfg.max_steps)
                )
                acc.print(
                    f"note: --kl-weight blundell puts an epoch's KL weight on its last steps; this run stops after "
                    f"{cfg.max_steps} of a {self.steps_per_epoch}-step epoch, so the weight never exceeds "
                    f"{largest:.1e} and the KL barely trains. --kl-weight uniform weighs every step "
                    f"1/{len(self.train_examples)}."
                )
        self.kl_params = [p for _, p in kl_params]
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if self.kl_optimizer is not None:
            self.kl_optimizer = acc.prepare(self.kl_optimizer)
        self.unwrapped = acc.unwrap_model(self.model)
        self.bayesian_adapters = bayesian_adapters(self.unwrapped)  # the layers sampled every step

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def _save_checkpoint(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        with atomic_directory(self.out / "checkpoint-last") as tmp:
            torch.save(
                {
                    "trainable": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "kl_optimizer": self.kl_optimizer.state_dict() if self.kl_optimizer else None,
                    "kl_scheduler": self.kl_scheduler.state_dict() if self.kl_scheduler else None,
                },
                tmp / TRAINABLE_FILE,
            )
            state = {"step": step, "best": self.best, "config": self.cfg.to_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _save_adapter(self, name: str, step: int, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with atomic_directory(self.out / name) as tmp:
            self.unwrapped.save_pretrained(tmp)
            info = {"step": step, "method": self.cfg.method, "task": self.cfg.task, "validation": metrics}
            (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")

    def _resume(self) -> None:
        ckpt = self.out / "checkpoint-last"
        recover(ckpt)
        if not (ckpt / STATE_FILE).exists():
            self.accelerator.print(f"--resume: no checkpoint in {self.out}; starting from step 0")
            return
        state = json.loads((ckpt / STATE_FILE).read_text())
        saved = state["config"]
        for key in ("method", "task", "seed", "batch_size", "max_steps", "rank", "model", "train_limit"):
            current = self.cfg.to_dict()[key]
            if saved.get(key) != current:
                raise MeloraError(
                    f"--resume: the checkpoint in {ckpt} was made with {key}={saved.get(key)!r}, "
                    f"not {current!r}. Use the same settings or --overwrite."
                )
        blob = torch.load(ckpt / TRAINABLE_FILE, map_location="cpu", weights_only=True)
        params = dict(self.unwrapped.named_parameters())
        with torch.no_grad():
            for name, value in blob["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.kl_optimizer is not None:
            self.kl_optimizer.load_state_dict(blob["kl_optimizer"])
            self.kl_scheduler.load_state_dict(blob["kl_scheduler"])
        self.start_step, self.best = state["step"], state["best"]
        self.accelerator.print(f"resumed from step {self.start_step} ({ckpt})")

    # -- the loop --------------------------------------------------------------------------------------------
    def _global_batch(self, step: int) -> list[int]:
        """Question indices of the global batch of `step`: a seeded permutation per epoch, remainder dropped."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(stable_seed(self.cfg.seed, "epoch", epoch))
        order = torch.randperm(len(self.train_examples), generator=generator).tolist()
        return order[position * self.cfg.batch_size : (position + 1) * self.cfg.batch_size]

    def _step(self, step: int) -> dict[str, float]:
        from melora.adapters.kl import kl_divergence_with_grads
        from melora.adapters.sampling import sampling
        from melora.readout import collate_examples, normalised_choice_log_probs

        cfg, acc = self.cfg, self.accelerator
        indices = self._global_batch(step)
        per_process = cfg.batch_size // acc.num_processes
        local = indices[acc.process_index * per_process : (acc.process_index + 1) * per_process]
        # letters: one row per question read at the answer position; cloze: one packed row per question (prompt
        # once, then every choice), so the row's posterior sample serves the prompt and all its choices
        batch = collate_examples([self.train_examples[i] for i in local], self.tokenizer).to(acc.device)
        torch.manual_seed(stable_seed(cfg.seed, "dropout", step, acc.process_index))
        seeds = [stable_seed(cfg.seed, "sample", step, i) for i in local]
        self.model.train()
        bayesian = self.method.bayesian
        with sampling(self.unwrapped, "sample", seeds, self.bayesian_adapters) if bayesian else nullcontext():
            log_probs = normalised_choice_log_probs(self.model, batch)  # (b, K)
        nll = torch.nn.functional.nll_loss(log_probs, batch.labels)
        if not torch.isfinite(nll):
            self._diverged(step, "the NLL", nll.item())
        acc.backward(nll)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logs = {"loss": nll.item(), "lr": self.scheduler.get_last_lr()[0]}
        if self.kl_optimizer is not None:
            weight = kl_weight(step, cfg.kl_weight, self.steps_per_epoch, len(self.train_examples))
            noise = torch.rand((), generator=torch.Generator().manual_seed(stable_seed(cfg.seed, "kl", step)))
            layers = [module for _, module, _, _ in self.bayesian_adapters]
            kl, grads = kl_divergence_with_grads(self.unwrapped, noise=float(noise), layers=layers)
            if not torch.isfinite(kl):
                self._diverged(step, "the KL", kl.item())
            for p in self.kl_params:
                p.grad = grads.get(p)
            torch._foreach_mul_([p.grad for p in self.kl_params if p.grad is not None], weight)
            self.kl_optimizer.step()
            self.kl_scheduler.step()
            self.kl_optimizer.zero_grad(set_to_none=True)
            logs.update(kl=kl.item(), kl_weight=weight)
        return logs

    def _diverged(self, step: int, what: str, value: float) -> None:
        ckpt = self.out / "checkpoint-last"
        kept = f"the last good checkpoint ({ckpt}) is kept" if ckpt.exists() else "no checkpoint had been written yet"
        raise TrainingDivergedError(
            f"{what} became {value} at step {step + 1}; training stopped and {kept}. "
            "Lower --lr / --kl-lr, or check the data."
        )

    def _validate(self, step: int) -> dict[str, float]:
        from melora.evaluation import evaluate_examples

        cfg = self.cfg
        samples = cfg.eval_samples if (self.method.bayesian or self.method.mc_dropout) else 0
        metrics = evaluate_examples(
            self.unwrapped,
            self.tokenizer,
            self.val_examples,
            batch_size=cfg.eval_batch_size,
            samples=samples,
            seed=cfg.seed,
            mc_dropout=self.method.mc_dropout,
            progress="validation",
        )
        return {f"val_{k}": v for k, v in metrics.items()}

    def _is_better(self, metrics: dict[str, float]) -> bool:
        key = f"val_{self.cfg.select_by}"
        if self.best is None:
            return True
        value, best = metrics[key], self.best["value"]
        return value > best if self.cfg.select_by == "acc" else value < best

    def run(self) -> Path:
        from tqdm.auto import tqdm

        self._setup()
        cfg, acc = self.cfg, self.accelerator
        log_path = self.out / "metrics.jsonl"
        bar = tqdm(
            range(self.start_step, cfg.max_steps),
            initial=self.start_step,
            total=cfg.max_steps,
            desc=f"{cfg.method} on {cfg.task}",
            disable=not acc.is_main_process,
        )
        started = time.perf_counter()
        for step in bar:
            logs = self._step(step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "kl_weight"})
            done = step + 1
            if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.max_steps):
                _append_jsonl(log_path, {"step": done, **logs})
            if done % cfg.eval_every == 0 or done == cfg.max_steps:
                metrics = self._validate(step) if acc.is_main_process else {}
                acc.wait_for_everyone()
                if acc.is_main_process:
                    metrics["elapsed_s"] = round(time.perf_counter() - started, 2)
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "val_n"))
                    _append_jsonl(log_path, {"step": done, **metrics})
                    if self._is_better(metrics):
                        self.best = {"step": done, "metric": cfg.select_by, "value": metrics[f"val_{cfg.select_by}"]}
                        self._save_adapter("adapter-best", done, metrics)
                    self._save_adapter("adapter-last", done, metrics)
                    self._save_checkpoint(done)
                if cfg.report_to:
                    acc.log({**logs, **metrics}, step=done)
                acc.wait_for_everyone()
        if cfg.report_to:
            acc.end_training()
        acc.print(
            f"best adapter (validation {cfg.select_by}): {self.out / 'adapter-best'} (step {self.best['step']})"
            if self.best
            else "no validation was run"
        )
        return self.out / "adapter-best"


def _summarise(named: list[tuple[str, Any]]) -> str:
    """'A, B, M, H (n tensors, k parameters)' from named parameters: the parameter kinds an optimiser owns."""
    kinds = []
    for name, _ in named:
        kind = name.split(".lora_")[-1].split(".")[0] if ".lora_" in name else name.rsplit(".", 1)[-1]
        if kind not in kinds:
            kinds.append(kind)
    total = sum(p.numel() for _, p in named)
    return f"{', '.join(kinds) or 'nothing'} ({len(named)} tensors, {total:,} parameters)"


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")
