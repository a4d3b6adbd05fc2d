"""Cost of Me-LoRA and BLoB against plain PEFT LoRA, and of the `melora` lm-eval model against lm-eval's `hf`.

Everything is measured in one run, on the same batches and base model, and reported as ratios:

- training: the median wall time of one optimiser step of `melora.training` (read-out forward, NLL backward, AdamW,
  and for Bayesian methods the seeded posterior sample and the KL's SGD step), and the peak memory of a process
  that runs it (CUDA: `max_memory_allocated`; CPU: the peak resident set size of a fresh subprocess per method, so
  runs do not see each other's allocations);
- adapters: trainable parameters and `adapter_model.safetensors` bytes;
- evaluation: documents per second of `--model melora` at `samples=1` and `samples=S` and of `--model hf`, on the
  same documents (see `bench_eval`).

Where a GPU is present the base model runs in bf16 at the paper's batch size (4) and a 300-token sequence; on CPU the
embedded model in fp32 with the batch given.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from melora.train_config import TrainConfig


# name -> (method, answer format); the rows compared with plain LoRA in the base config's format, plus LoRA in the
# other answer format (cloze vs letters step time on the same questions).
TRAIN_METHODS = {"lora": ("mle", None), "melora": ("melora", None), "blob": ("blob", None)}


def _train_cfg(base: TrainConfig, method: str, out: Path, answer_format: str | None = None) -> TrainConfig:
    fmt = answer_format or base.answer_format
    return replace(base, method=method, output_dir=str(out), overwrite=True, dropout=0.0, answer_format=fmt)


def time_training_steps(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, Any]:
    """Median step time (s) and peak memory of `steps` timed training steps after `warmup` untimed ones."""
    import torch

    from melora.training import Trainer

    trainer = Trainer(cfg)
    trainer._setup()
    cuda = trainer.accelerator.device.type == "cuda"
    times = []
    for step in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
            if step == warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer._step(step)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        trainer.unwrapped.save_pretrained(tmp)
        adapter_bytes = (Path(tmp) / "adapter_model.safetensors").stat().st_size
    return {
        "step_s_median": statistics.median(times),
        "step_s": times,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes(),
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS of the process",
        "trainable_params": sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad),
        "adapter_file_bytes": adapter_bytes,
        "device": str(trainer.accelerator.device),
    }


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_training(base: TrainConfig, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Train-step time, peak memory, parameters and adapter bytes of LoRA, Me-LoRA and BLoB, with ratios to LoRA.

    Each method runs in its own subprocess (same config, same batches: the batch of step `i` depends on the seed
    only), so peak memory is the method's own.
    """
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        other = "cloze" if base.answer_format == "letters" else "letters"
        for name, (method, fmt) in {**TRAIN_METHODS, f"lora_{other}": ("mle", other)}.items():
            cfg = _train_cfg(base, method, Path(tmp) / name, fmt)
            payload = json.dumps({"cfg": cfg.to_dict(), "steps": steps, "warmup": warmup})
            proc = subprocess.run(
                [sys.executable, "-c", "import sys, melora.bench as b; b._child(sys.argv[1])", payload],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark of {name} failed:\n{proc.stderr[-3000:]}")
            results[name] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "answer_format": cfg.answer_format}
    lora = results["lora"]
    for name in ("melora", "blob"):
        r = results[name]
        r["step_time_ratio_to_lora"] = r["step_s_median"] / lora["step_s_median"]
        r["peak_memory_ratio_to_lora"] = r["peak_memory_bytes"] / lora["peak_memory_bytes"]
        r["adapter_file_ratio_to_lora"] = r["adapter_file_bytes"] / lora["adapter_file_bytes"]
        r["trainable_params_ratio_to_lora"] = r["trainable_params"] / lora["trainable_params"]
    for name, r in results.items():
        if name.startswith("lora_"):  # LoRA in the other answer format: its step time against the base format's
            r["step_time_ratio_to_lora"] = r["step_s_median"] / lora["step_s_median"]
    return results


def _child(payload: str) -> None:
    """Entry of a benchmark subprocess: time one method, print its result as the last stdout line."""
    spec = json.loads(payload)
    cfg = TrainConfig(**spec["cfg"])
    result = time_training_steps(cfg, spec["steps"], spec["warmup"])
    print(json.dumps(result))


def write_bench_adapter(model_path: str, out: Path, rank: int = 8, seed: int = 0) -> Path:
    """A Me-LoRA adapter on `model_path` with small random B and H (an untrained stand-in of the right shape)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from melora.adapters import MeLoraConfig

    torch.manual_seed(seed)
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path),
        MeLoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(out)
    return out


def _requests(task_names: list[str], limit: int) -> list:
    """lm-eval loglikelihood requests of the first `limit` documents of each `melora_*` task."""
    from lm_eval.tasks import TaskManager, get_task_dict

    import lm_eval_tasks

    manager = TaskManager(include_path=str(Path(lm_eval_tasks.__file__).parent), include_defaults=False)
    requests = []
    for task in get_task_dict(task_names, manager).values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests += list(task.instances)
    return requests


def bench_eval(
    model_path: str, adapter: str, task_names: list[str], limit: int, samples: int, batch_size: int, device: str
) -> dict[str, Any]:
    """Documents per second of `hf`, `melora` at `samples=1` and at `samples=S`, on the same requests.

    Only `loglikelihood` over the prepared requests is timed (model loading and task building are not), after one
    untimed warm-up batch, so the ratios compare the models' own work.
    """
    from lm_eval.models.huggingface import HFLM

    from harness_models.melora_lm import MeloraLM

    requests = _requests(task_names, limit)
    n_docs = len({(r.task_name, r.doc_id) for r in requests})
    candidates = {
        "hf": lambda: HFLM(pretrained=model_path, batch_size=batch_size, device=device),
        "melora_s1": lambda: MeloraLM(
            pretrained=model_path, adapter=adapter, samples=1, batch_size=batch_size, device=device
        ),
        f"melora_s{samples}": lambda: MeloraLM(
            pretrained=model_path, adapter=adapter, samples=samples, batch_size=batch_size, device=device
        ),
    }
    out: dict[str, Any] = {"documents": n_docs, "requests": len(requests), "tasks": task_names}
    for name, build in candidates.items():
        lm = build()
        lm.loglikelihood(requests[:batch_size], disable_tqdm=True)  # warm-up
        start = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "docs_per_s": n_docs / seconds}
        del lm
    hf = out["hf"]["seconds"]
    out["melora_s1"]["time_ratio_to_hf"] = out["melora_s1"]["seconds"] / hf
    out[f"melora_s{samples}"]["time_ratio_to_hf"] = out[f"melora_s{samples}"]["seconds"] / hf
    out[f"melora_s{samples}"]["time_ratio_to_S_times_hf"] = out[f"melora_s{samples}"]["seconds"] / (samples * hf)
    out["samples"] = samples
    return out


def format_table(result: dict) -> str:
    """The measurements as a Markdown table (medians and ratios)."""
    train = result["train"]
    lines = [
        f"model {result['model']} on {result['device']} ({result['threads']} threads)",
        "",
        "| method (answer format) | step (s, median) | x LoRA | peak memory (MiB) | x LoRA | trainable params "
        "| adapter bytes | x LoRA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in train.items():

        def ratio(key: str, r: dict = r) -> str:
            return f"{r[key]:.3f}" if key in r else "1"

        lines.append(
            f"| {name} ({r['answer_format']}) | {r['step_s_median']:.3f} | {ratio('step_time_ratio_to_lora')} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} | {ratio('peak_memory_ratio_to_lora')} | "
            f"{r['trainable_params']:,} | {r['adapter_file_bytes']:,} | {ratio('adapter_file_ratio_to_lora')} |"
        )
    if "eval" in result:
        ev, s = result["eval"], result["eval"]["samples"]
        lines += [
            "",
            f"evaluation: {ev['documents']} documents ({', '.join(ev['tasks'])})",
            "",
            "| model | seconds | docs/s | x hf | x S*hf |",
            "|---|---|---|---|---|",
            f"| hf | {ev['hf']['seconds']:.2f} | {ev['hf']['docs_per_s']:.2f} | 1 | |",
            f"| melora samples=1 | {ev['melora_s1']['seconds']:.2f} | {ev['melora_s1']['docs_per_s']:.2f} | "
            f"{ev['melora_s1']['time_ratio_to_hf']:.3f} | |",
            f"| melora samples={s} | {ev[f'melora_s{s}']['seconds']:.2f} | {ev[f'melora_s{s}']['docs_per_s']:.2f} "
            f"| {ev[f'melora_s{s}']['time_ratio_to_hf']:.3f} | {ev[f'melora_s{s}']['time_ratio_to_S_times_hf']:.3f} |",
        ]
    return "\n".join(lines)
