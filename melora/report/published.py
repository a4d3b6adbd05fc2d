"""The paper's published numbers (Tables 2, 3, 8 and 9), for `melora report --compare paper-13b|paper-7b`.

The numbers live once, in `paper_tables.json` beside this module, typed from the paper's text
(`../shared/paper/me-lora-paper.txt`) as printed: ACC and ECE in percent, NLL raw, mean with the std over seeds as
its subscript. The paper reports no Brier score. Its method "Ours" is called `Me-LoRA` here.

Where the text is cut or illegible the cell is left empty rather than guessed:

- Table 3 (13B, distribution shift): the Math column is cut at the page edge for every row (`35.`, `1.9`, ...): all
  its cells are empty. Me-LoRA's ARC-C NLL reads `0.680 00`: the mean 0.68 is kept, the std left empty.
- Table 9 (7B, distribution shift): the Math column is cut in its std for most rows (`36.46_{0.8`, `39.57_{0.`):
  the mean is kept and the std left empty where its digits are missing (ACC: ENS, LAP, BLoB, Me-LoRA; ECE: all
  rows; NLL: MCD). The Me-LoRA NLL row is missing from the text (cut at the page end): all its cells are empty.
  MAP's Phy. ECE std is printed `4,20` and is read as 4.20.
- Tables 2 and 8 are complete. Underline and bold marks (best, second best) leak into a few cells of the text as
  `\\overline{...}` or `\\frac{66.71_{0.17}}{10.17}` (Table 8, BLoB WG-S ACC); the number inside is the cell's.
  Table 2 prints MCD's BoolQ ACC std as `0.0`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

from melora.errors import MeloraError
from melora.report.style import METRICS


DATA_FILE = "paper_tables.json"
PUBLISHED_METHODS = ("MAP", "MCD", "ENS", "LAP", "BLoB", "Me-LoRA")
"""Row order of the published tables (the paper's)."""

COMPARE_CHOICES = ("paper-13b", "paper-7b")
_BASE_PATTERNS = {"paper-13b": r"llama[-_ ]?2.*13b", "paper-7b": r"llama[-_ ]?2.*7b"}
PAPER_PROTOCOL = "letter answers, zero-shot, full test splits, 15-bin ECE"


@dataclass(frozen=True)
class PublishedCell:
    """One published number as printed (ACC and ECE in percent).

    Attributes:
        mean (`float`): the printed mean.
        std (`float | None`): the printed std over seeds (None where the text lost it).
    """

    mean: float
    std: float | None

    def as_fraction(self, metric: str) -> tuple[float, float | None]:
        """`(mean, std)` in the report's raw units (ACC and ECE as fractions)."""
        scale = METRICS[metric].scale
        return self.mean / scale, None if self.std is None else self.std / scale


@dataclass(frozen=True)
class PublishedTable:
    """One of the paper's tables.

    Attributes:
        name (`str`): `paper-13b` or `paper-7b`.
        base_model (`str`): `Llama-2-13B` or `Llama-2-7B`.
        setting (`str`): `id` or `ood`.
        source (`str`): `Table 2`, ...
        columns (`tuple[str, ...]`): the protocol's task names, in the paper's column order.
        cells (`dict[tuple[str, str, str], PublishedCell]`): `(metric, method, task)` -> cell; absent when empty.
    """

    name: str
    base_model: str
    setting: str
    source: str
    columns: tuple[str, ...]
    cells: dict[tuple[str, str, str], PublishedCell]

    def get(self, metric: str, method: str, task: str) -> PublishedCell | None:
        """The cell, or None when the paper has no (legible) number there."""
        return self.cells.get((metric, method, task))


@functools.lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads(resources.files("melora.report").joinpath(DATA_FILE).read_text(encoding="utf-8"))


def published_tables(name: str) -> dict[str, PublishedTable]:
    """The published tables of `paper-13b` or `paper-7b`, keyed by setting (`id`, `ood`).

    Raises:
        MeloraError: an unknown name.
    """
    raw = _raw()
    if name not in COMPARE_CHOICES:
        raise MeloraError(f"Unknown published results {name!r}. Available: {', '.join(COMPARE_CHOICES)}.")
    entry = raw[name]
    out = {}
    for setting, table in entry["tables"].items():
        columns = tuple(table["columns"])
        cells = {}
        for metric in ("acc", "ece", "nll"):
            for method, row in table[metric].items():
                if len(row) != len(columns):
                    raise MeloraError(f"{DATA_FILE}: {name} {setting} {metric} {method} has {len(row)} cells.")
                for task, cell in zip(columns, row):
                    if cell is not None and cell[0] is not None:
                        cells[(metric, method, task)] = PublishedCell(float(cell[0]), _opt(cell[1]))
        out[setting] = PublishedTable(name, entry["base_model"], setting, table["source"], columns, cells)
    return out


def _opt(value: float | None) -> float | None:
    return None if value is None else float(value)


def matches_base_model(name: str, base_model: str) -> bool:
    """True when a base model's display name looks like the paper's (`Llama-2-13b-hf` for `paper-13b`)."""
    return re.search(_BASE_PATTERNS[name], base_model, flags=re.IGNORECASE) is not None
