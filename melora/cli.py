"""The `melora` console script: one entry point with a subcommand per task.

Example:
    melora prepare-model
    melora params --model-config meta-llama/Llama-2-7b-hf/config.json --rank 8 --target-modules q_proj,v_proj
"""

from __future__ import annotations

import argparse
import importlib
import sys

from melora.commands import SUBCOMMANDS
from melora.commands.base import Subcommand
from melora.errors import MeloraError


def _load(spec: str) -> Subcommand:
    module_name, _, class_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered in `melora.commands.SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="melora",
        description="Me-LoRA (memory-efficient Bayesian LoRA): train, evaluate and account for Bayesian adapters.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in SUBCOMMANDS.items():
        command = _load(spec)
        sub = subparsers.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_args(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; project errors become one clear line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args._command.execute(args) or 0)
    except MeloraError as e:
        print(f"melora {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
