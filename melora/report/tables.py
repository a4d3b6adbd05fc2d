"""Results tables as the paper prints them, written as Markdown, CSV and LaTeX.

A table has the tasks as columns (then the pooled shift groups, in the distribution-shift setting) and, per metric
(ACC, ECE, NLL, Brier), one row per method: `mean ± std` over seeds, the std left out for a single seed, a task a
method was not run on left blank, and the best mean of our rows per column in bold (when at least two rows have a
value). With a comparison, the paper's rows follow ours in each metric block, marked `[paper]`, and notes under the
table say where the base model or the protocol differ.

All three formats are rendered from one `TableView`, so they always hold the same numbers. CSV is long (one line per
cell), in the displayed units (see its `unit` column).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from melora.protocol import TASKS
from melora.report.aggregate import POOLED_GROUPS, SETTINGS, Table
from melora.report.loading import task_key
from melora.report.published import PAPER_PROTOCOL, PUBLISHED_METHODS, PublishedTable, matches_base_model
from melora.report.style import METRICS, UNITS_NOTE


@dataclass(frozen=True)
class CellView:
    """One displayed cell, in raw units (fractions for ACC and ECE).

    Attributes:
        mean (`float`): mean over seeds.
        std (`float | None`): std over seeds (`ddof=1`), None for one seed or when not printed.
        n (`int | None`): number of seeds (None for published cells).
        ci (`tuple[float, float] | None`): 95% bootstrap interval.
        best (`bool`): the best of our rows in its column.
    """

    mean: float
    std: float | None = None
    n: int | None = None
    ci: tuple[float, float] | None = None
    best: bool = False


@dataclass(frozen=True)
class RowView:
    """One row of a metric block: a label, where it comes from (`ours` or e.g. `paper-13b Table 2`) and its cells."""

    label: str
    source: str
    cells: dict[str, CellView]


@dataclass
class TableView:
    """A table ready to render.

    Attributes:
        title (`str`): heading (base model and setting).
        slug (`str`): file-name-safe identifier.
        base_model (`str`): base model of our rows.
        setting (`str`): `id` or `ood`.
        columns (`list[tuple[str, str]]`): `(key, title)` per column.
        blocks (`dict[str, list[RowView]]`): rows per metric key, in `METRICS` order.
        notes (`list[str]`): caption lines (units, seeds, comparison caveats).
    """

    title: str
    slug: str
    base_model: str
    setting: str
    columns: list[tuple[str, str]]
    blocks: dict[str, list[RowView]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def slugify(text: str) -> str:
    """A file-name-safe version of `text` (`SmolLM2-135M-Instruct` stays, `/` and spaces become `-`)."""
    out = "".join(c if c.isalnum() or c in "-._" else "-" for c in text)
    return "-".join(part for part in out.split("-") if part) or "model"


def table_view(table: Table, published: PublishedTable | None = None) -> TableView:
    """The view of one results table, with the published rows of the same setting when given."""
    columns = list(table.columns)
    if published is not None:
        present = {task_key(key) for key, _ in columns if not key.endswith(("_cloze", "_cloze_norm"))}
        extra = [(f"melora_{t}", TASKS[t].title) for t in published.columns if t not in present]
        tasks = [c for c in columns if c[0] not in POOLED_GROUPS] + extra
        order = {t: i for i, t in enumerate(published.columns)}
        tasks.sort(key=lambda c: order.get(task_key(c[0]), len(order)))
        columns = tasks + [c for c in columns if c[0] in POOLED_GROUPS]
    view = TableView(
        title=table.title,
        slug=f"{slugify(table.base_model)}_{table.setting}",
        base_model=table.base_model,
        setting=table.setting,
        columns=columns,
    )
    for metric in METRICS:
        rows = []
        for method in table.methods:
            cells = {}
            for key, _ in columns:
                summary = table.cells.get((method, key), {}).get(metric)
                if summary is not None:
                    cells[key] = CellView(summary.mean, summary.std, summary.n, summary.ci)
            rows.append(RowView(method.label, "ours", cells))
        _mark_best(rows, metric, [k for k, _ in columns])
        if published is not None:
            for method in PUBLISHED_METHODS:
                cells = {}
                for key, _ in columns:
                    cell = (
                        published.get(metric, method, task_key(key))
                        if not key.endswith(("_cloze", "_cloze_norm"))
                        else None
                    )
                    if cell is not None:
                        mean, std = cell.as_fraction(metric)
                        cells[key] = CellView(mean, std)
                if cells:
                    rows.append(RowView(f"{method} [paper]", f"{published.name} {published.source}", cells))
        view.blocks[metric] = rows
    view.notes = _notes(table, published)
    return view


def _mark_best(rows: list[RowView], metric: str, columns: list[str]) -> None:
    style = METRICS[metric]
    for key in columns:
        holders = [r for r in rows if key in r.cells]
        if len(holders) < 2:
            continue
        best = holders[0]
        for row in holders[1:]:
            if style.is_better(row.cells[key].mean, best.cells[key].mean):
                best = row
        cell = best.cells[key]
        best.cells[key] = CellView(cell.mean, cell.std, cell.n, cell.ci, best=True)


def _notes(table: Table, published: PublishedTable | None) -> list[str]:
    notes = [f"Mean ± std over seeds (std with ddof=1, left out for a single seed); {UNITS_NOTE}"]
    if len(table.methods) > 1:
        notes.append("Bold: the best of our rows in each column.")
    runs = []
    for method in table.methods:
        seeds = sorted({str(r.seed) for r in table.runs.get(method, [])})
        n = table.replicates(method)
        runs.append(f"{method.label}: {n} run{'s' if n != 1 else ''} (seed {', '.join(seeds)})")
    notes.append("Runs: " + "; ".join(runs) + ".")
    docs = []
    for key, title in table.columns:
        counts = sorted({len(p.labels) for (m, c), preds in table.predictions.items() if c == key for p in preds})
        docs.append(f"{title} {'/'.join(map(str, counts))}")
    notes.append("Documents per column: " + ", ".join(docs) + ".")
    if any(key in POOLED_GROUPS for key, _ in table.columns):
        notes.append(
            "Smaller shift pools the documents of ARC-C and ARC-E, larger shift those of the three MMLU sets; "
            "every metric is computed once over the pooled documents (not averaged over tasks)."
        )
    if any(c.ci for cells in table.cells.values() for c in cells.values()):
        notes.append(
            "[low, high]: 95% percentile bootstrap interval of the mean (documents resampled within each run); "
            "resampling duplicates documents, which biases ECE upward on small sets, so its interval can lie above "
            "the point value."
        )
    limits = sorted({r.limit for runs in table.runs.values() for r in runs if r.limit is not None})
    if limits:
        notes.append(
            f"Evaluated with lm-eval --limit {', '.join(f'{x:g}' for x in limits)}: a subset of each test set."
        )
    if published is None:
        return notes
    notes.append(
        f"Rows marked [paper]: {published.source} of the Me-LoRA paper ({published.base_model}), as printed; empty "
        "where the paper's text is cut (see melora/report/published.py). The paper reports no Brier score."
    )
    if not matches_base_model(published.name, table.base_model):
        notes.append(
            f"**Different base model**: our rows use {table.base_model}, the paper's {published.base_model}; "
            "compare trends, not numbers."
        )
    protocol = []
    if limits:
        protocol.append(
            f"our runs used lm-eval --limit {', '.join(f'{x:g}' for x in limits)} (a subset of each test set)"
        )
    if any(key.endswith(("_cloze", "_cloze_norm")) for key, _ in table.columns):
        protocol.append("cloze answers (the paper reads one letter after 'Answer:'; no published value is shown)")
    shots = sorted({v for runs in table.runs.values() for r in runs for v in r.num_fewshot.values() if v})
    if shots:
        protocol.append(f"{', '.join(map(str, shots))}-shot prompts (the paper is zero-shot)")
    if protocol:
        notes.append(f"**Protocol differs** from the paper's ({PAPER_PROTOCOL}): " + "; ".join(protocol) + ".")
    return notes


# ----------------------------------------------------------------------------------------------------------
# Renderers


def _text(metric: str, cell: CellView, *, latex: bool = False) -> str:
    style = METRICS[metric]
    mean = style.number(cell.mean)
    if latex:
        mean = rf"\textbf{{{mean}}}" if cell.best else mean
        std = rf"$_{{\pm {style.number(cell.std)}}}$" if cell.std is not None else ""
        ci = f" [{style.number(cell.ci[0])}, {style.number(cell.ci[1])}]" if cell.ci else ""
        return mean + std + ci
    text = mean + (f" ± {style.number(cell.std)}" if cell.std is not None else "")
    text = f"**{text}**" if cell.best else text
    return text + (f" [{style.number(cell.ci[0])}, {style.number(cell.ci[1])}]" if cell.ci else "")


def to_markdown(view: TableView) -> str:
    """The table as GitHub Markdown: a heading, the table, then its notes as a list."""
    header = ["Metric", "Method", *[title for _, title in view.columns]]
    lines = [f"### {view.title}", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(view.columns)]
    for metric, rows in view.blocks.items():
        for i, row in enumerate(rows):
            label = METRICS[metric].heading if i == 0 else ""
            cells = [_text(metric, row.cells[k]) if k in row.cells else "" for k, _ in view.columns]
            lines.append("| " + " | ".join([label, row.label, *cells]) + " |")
    lines.append("")
    lines += [f"- {note}" for note in view.notes]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "×": r"$\times$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def to_latex(view: TableView) -> str:
    """The table as a LaTeX `table` with `booktabs` rules (needs `\\usepackage{booktabs}`)."""
    spec = "ll" + "c" * len(view.columns)
    head = " & ".join(["Metric", "Method", *[_latex_escape(t) for _, t in view.columns]])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines += [head + r" \\", r"\midrule"]
    blocks = list(view.blocks.items())
    for b, (metric, rows) in enumerate(blocks):
        style = METRICS[metric]
        for i, row in enumerate(rows):
            label = f"{style.label}{' (' + _latex_escape(style.unit) + ')' if style.unit else ''} {style.latex_arrow}"
            cells = [_text(metric, row.cells[k], latex=True) if k in row.cells else "" for k, _ in view.columns]
            lines.append(" & ".join([label if i == 0 else "", _latex_escape(row.label), *cells]) + r" \\")
        if b < len(blocks) - 1:
            lines.append(r"\midrule")
    caption = _latex_escape(view.title + ". " + " ".join(n.replace("**", "") for n in view.notes))
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{view.slug}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "base_model",
    "setting",
    "source",
    "metric",
    "unit",
    "method",
    "column",
    "column_title",
    "mean",
    "std",
    "n",
    "ci_low",
    "ci_high",
    "best",
)


def csv_rows(view: TableView) -> list[dict[str, str]]:
    """One dict per non-empty cell, in displayed units (percent for ACC and ECE; see `unit`)."""
    titles = dict(view.columns)
    out = []
    for metric, rows in view.blocks.items():
        style = METRICS[metric]
        for row in rows:
            for key, cell in row.cells.items():
                out.append(
                    {
                        "base_model": view.base_model,
                        "setting": SETTINGS.get(view.setting, view.setting),
                        "source": row.source,
                        "metric": style.label,
                        "unit": style.unit,
                        "method": row.label,
                        "column": key,
                        "column_title": titles[key],
                        "mean": style.number(cell.mean),
                        "std": style.number(cell.std),
                        "n": "" if cell.n is None else str(cell.n),
                        "ci_low": style.number(cell.ci[0]) if cell.ci else "",
                        "ci_high": style.number(cell.ci[1]) if cell.ci else "",
                        "best": "true" if cell.best else "",
                    }
                )
    return out


def to_csv(views: list[TableView]) -> str:
    """All tables as one long CSV (header `CSV_FIELDS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for view in views:
        writer.writerows(csv_rows(view))
    return buffer.getvalue()
