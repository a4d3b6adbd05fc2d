"""`melora download-data DIR`: write a local copy of every split the protocol reads, from the hub."""

from __future__ import annotations

import argparse

from melora.commands.base import Subcommand


class DownloadDataCommand(Subcommand):
    name = "download-data"
    help = "Download every benchmark split the tasks use from the hub into DIR (for offline machines)."
    epilog = (
        "Example (on a machine with hub access):\n"
        "  melora download-data ./melora-data\n"
        "then, on the offline machine:\n"
        "  export MELORA_DATA_DIR=./melora-data"
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dir", help="directory to write <dataset>/<config>/<split>.jsonl into")
        parser.add_argument("--tasks", default="all", help="comma-separated task names (default: all)")

    def execute(self, args: argparse.Namespace) -> int:
        from melora.download import download_all

        tasks = None if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
        for path in download_all(args.dir, tasks=tasks):
            print(f"wrote {path}")
        return 0
