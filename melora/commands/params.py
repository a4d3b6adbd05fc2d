"""`melora params`: trainable parameters and adapter bytes of LoRA, BLoB and Me-LoRA from a model config alone."""

from __future__ import annotations

import argparse
import json

from melora.commands.base import Subcommand
from melora.errors import MeloraError


class ParamsCommand(Subcommand):
    """Print the parameter and memory table of the paper's Table 1 for any model config (no weights loaded)."""

    name = "params"
    help = "Trainable parameters and adapter bytes (fp32, bf16) of LoRA, BLoB and Me-LoRA for a model config."
    epilog = """examples:
  melora params --model-config llama-2-7b/config.json --rank 8 --target-modules q_proj,v_proj
  melora params --model-config ~/models/smollm2 --rank 8,64 --target-modules q_proj,v_proj --json

The model is built on the meta device from its config (no weights, no download); see
melora/adapters/params.py for the formulas and how they compare with the paper's Table 1."""

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model-config",
            required=True,
            metavar="CONFIG",
            help="A model's config.json, or a local model directory holding one.",
        )
        parser.add_argument(
            "--rank",
            default="8",
            metavar="R",
            help="LoRA rank r, or several separated by commas (e.g. 8,64). Default: 8 (the paper's).",
        )
        parser.add_argument(
            "--target-modules",
            default="q_proj,v_proj",
            metavar="NAMES",
            help="Comma-separated module names to adapt, as in LoraConfig.target_modules. Default: q_proj,v_proj.",
        )
        parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of a table.")

    def execute(self, args: argparse.Namespace) -> int:
        from melora.adapters.params import count_adapter_params

        ranks = _parse_ranks(args.rank)
        targets = [t.strip() for t in args.target_modules.split(",") if t.strip()]
        if not targets:
            raise MeloraError(
                f"Expected `--target-modules` to name at least one module, but got {args.target_modules!r}."
            )
        report = count_adapter_params(args.model_config, ranks, targets)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0


def format_report(report: dict) -> str:
    """The human-readable table of a `count_adapter_params` report."""
    from melora.adapters.params import METHOD_LABELS

    lines = [
        f"model: {report['model_type']} ({report['num_hidden_layers']} layers, hidden {report['hidden_size']}), "
        f"targets {','.join(report['target_modules'])}: {report['adapted_linears']} adapted linears",
        "",
        f"{'rank':>4}  {'method':<8} {'trainable params':>17} {'fp32 bytes':>14} {'fp32 MiB':>9} "
        f"{'bf16 bytes':>14} {'bf16 MiB':>9}",
    ]
    for row in report["rows"]:
        for method, counts in row["methods"].items():
            fp32, bf16 = counts["bytes_fp32"], counts["bytes_bf16"]
            lines.append(
                f"{row['rank']:>4}  {METHOD_LABELS[method]:<8} {counts['params']:>17,} {fp32:>14,} "
                f"{fp32 / 2**20:>9.2f} {bf16:>14,} {bf16 / 2**20:>9.2f}"
            )
        if row["melora_over_blob"] is not None:
            ratios = f"Me-LoRA / BLoB = {row['melora_over_blob']:.4f}, Me-LoRA / LoRA = {row['melora_over_lora']:.4f}"
            lines.append(f"{'':>4}  {ratios}")
    return "\n".join(lines)


def _parse_ranks(text: str) -> list[int]:
    ranks = []
    for part in str(text).split(","):
        try:
            rank = int(part)
        except ValueError:
            rank = 0
        if rank < 1:
            raise MeloraError(f"Expected `--rank` to be positive ints separated by commas, but got {text!r}.")
        ranks.append(rank)
    return ranks
