"""Benchmark Me-LoRA's cost against plain PEFT LoRA (training) and lm-eval's `hf` model (evaluation), in one run.

Examples:
    python scripts/bench.py --json bench.json                     # embedded model, CPU-sized defaults
    python scripts/bench.py --json bench.json --model meta-llama/Llama-2-7b-hf --batch-size 4 --max-length 300

Prints a table and writes every measurement to --json. Step times come from one process that holds every compared
method's model (four copies of the base: 54 GB for Llama-2-7B in bf16) and interleaves their steps; memory from one
fresh process per method. On a GPU the base model runs in bf16 at the paper's batch size (4) and sequence budget
(300); on CPU the embedded model in fp32. Targets: Me-LoRA step <= 1.05x LoRA, BLoB <= 1.15x, peak memory <= 1.01x;
Me-LoRA adapter file <= 1.01x; melora eval at samples=1 <= 1.05x hf, at samples=S <= 1.05 x S x hf.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="write all measurements to this JSON file")
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--task", default="obqa", help="training task whose batches are timed (default obqa)")
    parser.add_argument(
        "--answer-format",
        default="letters",
        choices=("letters", "cloze", "cloze_norm"),
        help="answer format of the compared methods (LoRA is also timed in the other one)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (paper: 4)")
    parser.add_argument("--max-length", type=int, default=300, help="prompt token budget (paper: 300)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps whose peak memory is measured, per method")
    parser.add_argument("--eval-tasks", default="melora_obqa", help="comma-separated lm-eval tasks for the eval part")
    parser.add_argument("--eval-limit", type=int, default=24, help="documents per eval task")
    parser.add_argument("--eval-samples", type=int, default=10, help="S of the samples=S evaluation")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="lm-eval --batch_size")
    parser.add_argument("--skip-eval", action="store_true", help="only the training part")
    args = parser.parse_args(argv)

    import torch

    from melora.bench import bench_eval, bench_training, format_table, write_bench_adapter
    from melora.embedded_model import resolve_model
    from melora.train_config import TrainConfig

    model = resolve_model(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = TrainConfig(
        task=args.task,
        model=model,
        answer_format=args.answer_format,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.warmup + max(args.steps, args.memory_steps),
        eval_every=10**9,
        train_limit=None,
    )
    result = {
        "model": model,
        "device": device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "train": bench_training(base, args.steps, args.warmup, args.memory_steps),
    }
    if not args.skip_eval:
        with tempfile.TemporaryDirectory() as tmp:
            adapter = str(write_bench_adapter(model, Path(tmp) / "adapter"))
            tasks = [t.strip() for t in args.eval_tasks.split(",") if t.strip()]
            result["eval"] = bench_eval(
                model, adapter, tasks, args.eval_limit, args.eval_samples, args.eval_batch_size, device
            )
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
