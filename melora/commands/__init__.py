"""Subcommands of the `melora` console script, one module each.

`SUBCOMMANDS` maps a subcommand name to `"module:Class"`, so `melora --help` imports nothing heavy:
each class is imported only when its subcommand runs (lm-eval's lazy `MODEL_MAPPING` does the same).
"""

from __future__ import annotations


SUBCOMMANDS: dict[str, str] = {
    "prepare-model": "melora.commands.prepare_model:PrepareModelCommand",
    "download-data": "melora.commands.download_data:DownloadDataCommand",
    "params": "melora.commands.params:ParamsCommand",
    "zero-shot": "melora.commands.zero_shot:ZeroShotCommand",
    "report": "melora.commands.report:ReportCommand",
}
