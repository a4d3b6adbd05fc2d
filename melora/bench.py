"""Cost of Me-LoRA and BLoB against plain PEFT LoRA, and of the `melora` lm-eval model against lm-eval's `hf`.

Everything is measured in one run, on the same batches and base model, and reported as ratios:

- training time: one optimiser step of `melora.training` (read-out forward, NLL backward, AdamW, and for Bayesian
  methods the seeded posterior sample and the KL's SGD step). All methods are built in one process and their steps
  interleaved, step `i` of every method on the same batch, in an order that rotates every step; the ratio to LoRA is
  the median over steps of `time(method, i) / time(LoRA, i)`. Paired and interleaved, because on a shared CPU the
  machine's speed drifts by more than the effect measured (running the methods one after another gave Me-LoRA
  anything from 1.03x to 1.10x on unchanged code);
- training memory: each method in a fresh subprocess. CUDA: `max_memory_allocated`. CPU: peak tensor bytes, i.e.
  the bytes held between steps (parameters, buffers, optimiser states) plus the peak of what a step allocates on top,
  from the profiler's allocation events (torch keeps no CPU allocator statistics); the peak RSS is reported beside
  it, but it moves by a few percent between identical runs (allocator caching and page reuse);
- adapters: trainable parameters and `adapter_model.safetensors` bytes, on the benchmarked model and on Llama-2-7B's
  shapes (`adapter_file_bytes_at_shape`: the adapters of 32 layers of 4096 x 4096 q and v, materialised alone);
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
# Llama-2-7B's adapted matrices in the paper's setting: q_proj and v_proj, 4096 x 4096, in 32 layers.
LLAMA2_7B_SHAPE = {"layers": 32, "hidden": 4096, "rank": 8}


def _train_cfg(base: TrainConfig, method: str, out: Path, answer_format: str | None = None) -> TrainConfig:
    fmt = answer_format or base.answer_format
    return replace(base, method=method, output_dir=str(out), overwrite=True, dropout=0.0, answer_format=fmt)


def time_training_steps(cfgs: dict[str, TrainConfig], steps: int, warmup: int) -> dict[str, list[float]]:
    """Wall time (s) of `steps` training steps of every config, interleaved, after `warmup` untimed ones each.

    Step `i` of every config runs on the same batch (the batch depends on the step and seed only); the order of the
    configs rotates by one every step, so none is always first after another's work.
    """
    import torch

    from melora.training import Trainer

    trainers = {}
    for name, cfg in cfgs.items():
        trainers[name] = Trainer(cfg)
        trainers[name]._setup()
    cuda = next(iter(trainers.values())).accelerator.device.type == "cuda"
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + steps):
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainers[name]._step(step)
            if cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def measure_training_memory(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, Any]:
    """Peak memory of `steps` training steps after `warmup` (run it in a fresh process), parameters, adapter bytes."""
    import torch

    from melora.training import Trainer

    trainer = Trainer(cfg)
    trainer._setup()
    cuda = trainer.accelerator.device.type == "cuda"
    for step in range(warmup):
        trainer._step(step)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for step in range(warmup, warmup + steps):
            trainer._step(step)
        torch.cuda.synchronize()
        peak, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        try:
            peak = max(_cpu_step_peak_bytes(trainer, step) for step in range(warmup, warmup + steps))
            kind = "peak CPU tensor bytes (held between steps + profiled peak of a step)"
        except (ImportError, AttributeError):  # a torch whose profiler lacks the event tree: fall back to RSS
            for step in range(warmup, warmup + steps):
                trainer._step(step)
            peak, kind = _peak_rss_bytes(), "peak RSS of the process (this torch's profiler has no event tree)"
    with tempfile.TemporaryDirectory() as tmp:
        trainer.unwrapped.save_pretrained(tmp)
        adapter_bytes = (Path(tmp) / "adapter_model.safetensors").stat().st_size
    return {
        "peak_memory_bytes": peak,
        "memory_kind": kind,
        "peak_rss_bytes": _peak_rss_bytes(),
        "trainable_params": sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad),
        "adapter_file_bytes": adapter_bytes,
        "device": str(trainer.accelerator.device),
    }


def _held_tensor_bytes(trainer: Any) -> int:
    """Bytes of the distinct storages the trainer holds between steps: model, gradients, optimiser states."""
    import torch

    tensors = [*trainer.unwrapped.parameters(), *trainer.unwrapped.buffers()]
    tensors += [p.grad for p in trainer.unwrapped.parameters() if p.grad is not None]
    for optimizer in (trainer.optimizer, trainer.kl_optimizer):
        if optimizer is not None:
            for state in optimizer.state_dict()["state"].values():
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values())


def _cpu_step_peak_bytes(trainer: Any, step: int) -> int:
    """Held tensor bytes plus the peak of what one profiled training step allocates on top of them (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    held = _held_tensor_bytes(trainer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer._step(step)
    return held + _peak_allocated(prof)


def _peak_allocated(prof: Any) -> int:
    """Peak of the CPU allocator's running total over a profile (it counts from the profile's start)."""
    from torch._C._profiler import _EventType  # the event tree is where torch's own memory profiler reads this

    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            peak = max(peak, node.extra_fields.total_allocated)
        stack.extend(node.children)
    return peak


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def adapter_file_bytes_at_shape(kind: str, layers: int, hidden: int, rank: int) -> int:
    """`adapter_model.safetensors` bytes of a `kind` adapter on q and v of `layers` layers of `hidden x hidden`.

    The base weights stay on the meta device and only the adapter is materialised (uninitialised: the file's size
    depends on shapes, not values), so Llama-2-7B's adapter files are written without its 13 GB of weights.
    """
    import peft
    import torch
    from torch import nn

    from melora.adapters import BlobConfig, MeLoraConfig

    stack = nn.ModuleDict(
        {
            f"layer{i}": nn.ModuleDict(
                {name: nn.Linear(hidden, hidden, bias=False, device="meta") for name in ("q_proj", "v_proj")}
            )
            for i in range(layers)
        }
    )
    config_class = {"lora": peft.LoraConfig, "melora": MeLoraConfig, "blob": BlobConfig}[kind]
    model = peft.get_peft_model(
        stack, config_class(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    for module in model.modules():
        for name in getattr(module, "adapter_layer_names", ()):
            getattr(module, name).to_empty(device="cpu")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def _run_child(kind: str, payload: dict[str, Any]) -> Any:
    """Run `_child` in a fresh interpreter and return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, melora.bench as b; b._child(sys.argv[1])", json.dumps(payload)],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark ({kind}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(payload: str) -> None:
    """Entry of a benchmark subprocess: run one measurement, print its result as the last stdout line."""
    spec = json.loads(payload)
    if spec["kind"] == "time":
        cfgs = {name: TrainConfig(**cfg) for name, cfg in spec["cfgs"].items()}
        result: Any = time_training_steps(cfgs, spec["steps"], spec["warmup"])
    else:
        result = measure_training_memory(TrainConfig(**spec["cfg"]), spec["steps"], spec["warmup"])
    print(json.dumps(result))


def bench_training(base: TrainConfig, steps: int = 10, warmup: int = 2, memory_steps: int = 2) -> dict[str, Any]:
    """Train-step time, peak memory, parameters and adapter bytes of LoRA, Me-LoRA and BLoB, with ratios to LoRA.

    Times come from one subprocess that interleaves the methods (`time_training_steps`); memory, parameters and the
    adapter file from one fresh subprocess per method (`measure_training_memory`), so each peak is the method's own.
    """
    other = "cloze" if base.answer_format == "letters" else "letters"
    methods = {**TRAIN_METHODS, f"lora_{other}": ("mle", other)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {name: _train_cfg(base, method, Path(tmp) / name, fmt) for name, (method, fmt) in methods.items()}
        spec = {"kind": "time", "cfgs": {n: c.to_dict() for n, c in cfgs.items()}, "steps": steps, "warmup": warmup}
        times = _run_child("time", spec)
        for name, cfg in cfgs.items():
            memory = _run_child(
                f"memory of {name}",
                {"kind": "memory", "cfg": cfg.to_dict(), "steps": memory_steps, "warmup": warmup},
            )
            results[name] = {
                "step_s": times[name],
                "step_s_median": statistics.median(times[name]),
                **memory,
                "answer_format": cfg.answer_format,
            }
    lora = results["lora"]
    for name, r in results.items():
        if name == "lora":
            continue
        r["step_time_ratio_to_lora"] = statistics.median(t / t0 for t, t0 in zip(r["step_s"], lora["step_s"]))
        r["step_time_ratio_of_medians"] = r["step_s_median"] / lora["step_s_median"]
        if name.startswith("lora_"):  # LoRA in the other answer format: only its step time against the base format's
            continue
        r["peak_memory_ratio_to_lora"] = r["peak_memory_bytes"] / lora["peak_memory_bytes"]
        r["peak_rss_ratio_to_lora"] = r["peak_rss_bytes"] / lora["peak_rss_bytes"]
        r["adapter_file_ratio_to_lora"] = r["adapter_file_bytes"] / lora["adapter_file_bytes"]
        r["trainable_params_ratio_to_lora"] = r["trainable_params"] / lora["trainable_params"]
    shape = dict(LLAMA2_7B_SHAPE)
    files = {kind: adapter_file_bytes_at_shape(kind, **shape) for kind in TRAIN_METHODS}
    results["adapter_file_llama2_7b"] = {
        **shape,
        "bytes": files,
        "ratio_to_lora": {kind: files[kind] / files["lora"] for kind in ("melora", "blob")},
    }
    return results


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
        f"model {result['model']} on {result['device']} ({result['threads']} threads); step x LoRA: median of paired "
        "per-step ratios; memory: " + train["lora"]["memory_kind"],
        "",
        "| method (answer format) | step (s, median) | x LoRA | peak memory (MiB) | x LoRA | peak RSS (MiB) | x LoRA "
        "| trainable params | adapter bytes | x LoRA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in train.items():
        if name == "adapter_file_llama2_7b":
            continue

        def ratio(key: str, r: dict = r, name: str = name) -> str:
            return "1" if name == "lora" else f"{r[key]:.3f}" if key in r else ""

        lines.append(
            f"| {name} ({r['answer_format']}) | {r['step_s_median']:.3f} | {ratio('step_time_ratio_to_lora')} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} | {ratio('peak_memory_ratio_to_lora')} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {ratio('peak_rss_ratio_to_lora')} | "
            f"{r['trainable_params']:,} | {r['adapter_file_bytes']:,} | {ratio('adapter_file_ratio_to_lora')} |"
        )
    files = train["adapter_file_llama2_7b"]
    lines += [
        "",
        f"adapter files at Llama-2-7B shapes ({files['layers']} layers, q/v {files['hidden']}x{files['hidden']}, "
        f"r={files['rank']}): LoRA {files['bytes']['lora']:,} bytes; Me-LoRA {files['bytes']['melora']:,} "
        f"({files['ratio_to_lora']['melora']:.4f}x); BLoB {files['bytes']['blob']:,} "
        f"({files['ratio_to_lora']['blob']:.3f}x)",
    ]
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
