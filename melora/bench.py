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


TRAIN_METHODS = {"lora": "mle", "melora": "melora", "blob": "blob"}


def _train_cfg(base: TrainConfig, method: str, out: Path) -> TrainConfig:
    return replace(base, method=method, output_dir=str(out), overwrite=True, dropout=0.0)


def time_training_steps(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, Any]:
    """Median step time (s) and peak memory of `steps` timed training steps after `warmup` untimed ones."""
    import torch

    from melora.training import _Trainer

    trainer = _Trainer(cfg)
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
        for name, method in TRAIN_METHODS.items():
            cfg = _train_cfg(base, method, Path(tmp) / name)
            payload = json.dumps({"cfg": cfg.to_dict(), "steps": steps, "warmup": warmup})
            proc = subprocess.run(
                [sys.executable, "-c", "import sys, melora.bench as b; b._child(sys.argv[1])", payload],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark of {name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    lora = results["lora"]
    for name in ("melora", "blob"):
        r = results[name]
        r["step_time_ratio_to_lora"] = r["step_s_median"] / lora["step_s_median"]
        r["peak_memory_ratio_to_lora"] = r["peak_memory_bytes"] / lora["peak_memory_bytes"]
        r["adapter_file_ratio_to_lora"] = r["adapter_file_bytes"] / lora["adapter_file_bytes"]
        r["trainable_params_ratio_to_lora"] = r["trainable_params"] / lora["trainable_params"]
    return results


def _child(payload: str) -> None:
    """Entry of a benchmark subprocess: time one method, print its result as the last stdout line."""
    spec = json.loads(payload)
    cfg = TrainConfig(**spec["cfg"])
    result = time_training_steps(cfg, spec["steps"], spec["warmup"])
    print(json.dumps(result))
