"""Base class of a `melora` subcommand."""

from __future__ import annotations

import argparse


class Subcommand:
    """One subcommand: a name, a help line, its arguments and what it does.

    Subclasses set `name`, `help` and (optionally) `epilog`, add their flags in `add_args` and do the work in
    `execute`, importing heavy modules (torch, transformers) inside `execute` so `melora --help` stays fast.
    """

    name: str = ""
    help: str = ""
    epilog: str = ""

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Add this subcommand's flags to its parser."""

    def execute(self, args: argparse.Namespace) -> int:
        """Run the subcommand; return the process exit code."""
        raise NotImplementedError
