"""How the reporter names, scales, orders and colours things: one place for metric directions, labels and arrows.

Units follow the paper's tables: ACC and ECE in percent, NLL (natural log) and Brier raw. Every number is computed
and stored unscaled (fractions); `MetricStyle.format` scales it for display only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricStyle:
    """Display and ranking rules of one metric.

    Attributes:
        key (`str`): the metric's key in `melora.metrics.summarize` and in lm-eval results (`acc`, `ece`, ...).
        label (`str`): the name printed in tables (`ACC`).
        higher_is_better (`bool`): ranking direction (as lm-eval's and torchmetrics' `higher_is_better`).
        scale (`float`): display factor (100 for percent).
        decimals (`int`): digits after the point in tables.
        unit (`str`): unit shown in captions (`%` or empty).
    """

    key: str
    label: str
    higher_is_better: bool
    scale: float
    decimals: int
    unit: str

    @property
    def arrow(self) -> str:
        """`↑` when higher is better, `↓` otherwise."""
        return "↑" if self.higher_is_better else "↓"

    @property
    def latex_arrow(self) -> str:
        """The arrow as LaTeX math."""
        return r"$\uparrow$" if self.higher_is_better else r"$\downarrow$"

    @property
    def heading(self) -> str:
        """`ACC (%) ↑`: label, unit and arrow."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit} {self.arrow}"

    def number(self, value: float | None) -> str:
        """One scaled value with this metric's decimals (`""` for None)."""
        return "" if value is None else f"{value * self.scale:.{self.decimals}f}"

    def is_better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b


METRICS: dict[str, MetricStyle] = {
    m.key: m
    for m in (
        MetricStyle("acc", "ACC", True, 100.0, 2, "%"),
        MetricStyle("ece", "ECE", False, 100.0, 2, "%"),
        MetricStyle("nll", "NLL", False, 1.0, 2, ""),
        MetricStyle("brier", "Brier", False, 1.0, 3, ""),
    )
}
"""The four metrics every `melora_*` task reports, in table order (the paper's ACC, ECE, NLL, then Brier)."""

UNITS_NOTE = (
    "ACC and ECE in percent, NLL (natural log) and Brier (sum over choices, range [0, 2]) raw; "
    "ECE: 15 equal-width bins, top-label."
)

METHOD_COLOURS: dict[str, str] = {
    "base": "#7f7f7f",
    "lora": "#1f77b4",
    "mcd": "#ff7f0e",
    "ensemble": "#2ca02c",
    "laplace": "#9467bd",
    "blob": "#8c564b",
    "melora": "#d62728",
}
"""Colour per method family (`Method.family`), shared by every figure."""

FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#393b79", "#637939", "#8c6d31")

METHOD_ORDER = ("base", "mle", "map", "lora", "mcd", "ensemble", "laplace", "blob", "melora")
"""Row order of method families: the paper's (MAP, MCD, ENS, LAP, BLoB, Ours), the zero-shot base model first."""


def method_colour(family: str, index: int = 0) -> str:
    """The colour of a method family; unknown families cycle through `FALLBACK_COLOURS` by `index`."""
    return METHOD_COLOURS.get(family, FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)])
