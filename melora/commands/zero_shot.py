"""`melora zero-shot`: evaluate a model (default: the embedded one) through the protocol, no adapter."""

from __future__ import annotations

import argparse
import time

from melora.commands.base import Subcommand


class ZeroShotCommand(Subcommand):
    name = "zero-shot"
    help = "Zero-shot ACC / ECE / NLL / Brier of a base model on the first documents of each task."
    epilog = (
        "Examples:\n"
        "  melora zero-shot --limit 20                      # embedded model, every task, 20 test questions each\n"
        "  melora zero-shot --tasks obqa,arc_e --split validation --limit 100\n"
        "  melora zero-shot --tasks arc_e --answer-format cloze   # each choice's text scored as the continuation"
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=None, help="model path or hub id (default: the embedded SmolLM2-135M)")
        parser.add_argument("--tasks", default="all", help="comma-separated task names, or 'all' (default)")
        parser.add_argument("--split", default="test", choices=("validation", "test"), help="split to score")
        parser.add_argument("--limit", type=int, default=20, help="questions per task (default 20; 0 = all)")
        parser.add_argument("--batch-size", type=int, default=8, help="questions per forward (default 8)")
        parser.add_argument("--max-length", type=int, default=300, help="prompt token budget (paper: 300)")
        parser.add_argument(
            "--answer-format",
            default="letters",
            choices=("letters", "cloze", "cloze_norm"),
            help="letters (the paper's, default): one answer token after 'Answer:'; cloze: each choice's text scored "
            "as the continuation (summed log-likelihood, normalised over the choices)",
        )

    def execute(self, args: argparse.Namespace) -> int:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from melora.embedded_model import resolve_model
        from melora.evaluation import evaluate_examples
        from melora.protocol import TASKS, check_tokenizer, get_task, load_examples

        names = list(TASKS) if args.tasks == "all" else [get_task(t).name for t in args.tasks.split(",") if t]
        if args.limit < 0:
            raise ValueError(f"Expected --limit to be >= 0, but got {args.limit}.")
        model_path = resolve_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        check_tokenizer(tokenizer, names, answer_format=args.answer_format)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        print(
            f"model: {model_path}\nsplit: {args.split}, first {args.limit or 'all'} questions per task, "
            f"answer format: {args.answer_format}\n"
        )
        print(f"| {'task':<10} | {'n':>5} | {'acc':>6} | {'ece':>6} | {'nll':>6} | {'brier':>6} | {'time':>6} |")
        print(f"|{'-' * 12}|{'-' * 7}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
        for name in names:
            start = time.perf_counter()
            examples = load_examples(
                name,
                args.split,
                tokenizer=tokenizer,
                max_length=args.max_length,
                limit=args.limit or None,
                answer_format=args.answer_format,
            )
            m = evaluate_examples(model, tokenizer, examples, batch_size=args.batch_size, progress=name)
            print(
                f"| {name:<10} | {m['n']:>5} | {m['acc']:>6.3f} | {m['ece']:>6.3f} | {m['nll']:>6.3f} | "
                f"{m['brier']:>6.3f} | {time.perf_counter() - start:>5.1f}s |",
                flush=True,
            )
        return 0
