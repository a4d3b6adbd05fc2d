"""`write_report`: read runs, build the tables and figures, and write them all into one directory.

Files written (`OUT` is the output directory):

- `OUT/report.md`: every table (Markdown), then the figures, then the runs read;
- `OUT/tables.csv`: every cell of every table, one line each; `OUT/tables.tex`: every table as LaTeX;
- `OUT/runs.csv`: the runs read (results file, base model, method, adapter, seed, setting, tasks);
- `OUT/figures/reliability_<base>_<setting>_<column>.png`: one per task (and pooled group), methods as small
  multiples; `OUT/figures/ece_vs_acc_<base>_<setting>.png`: one per table.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from melora.report.aggregate import Table, build_tables
from melora.report.loading import TaskRecord, load_records
from melora.report.published import published_tables
from melora.report.style import method_colour
from melora.report.tables import TableView, slugify, table_view, to_csv, to_latex, to_markdown


if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

FIGURE_DPI = 120


@dataclass
class ReportResult:
    """What `write_report` produced.

    Attributes:
        files (`list[Path]`): every file written, in writing order.
        views (`list[TableView]`): the rendered tables.
        markdown (`str`): the tables as Markdown (the body of `report.md` before the figures).
    """

    files: list[Path] = field(default_factory=list)
    views: list[TableView] = field(default_factory=list)
    markdown: str = ""


def write_report(
    paths: list[str | Path],
    out: str | Path,
    *,
    compare: str | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    figures: bool = True,
) -> ReportResult:
    """Read every lm-eval run under `paths` and write the report into `out` (created if needed).

    Args:
        paths: results directories (searched recursively) or `results_*.json` files.
        out: output directory.
        compare: `paper-13b` or `paper-7b` to put the published rows beside ours; None for none.
        bootstrap: bootstrap resamples for 95% intervals (0: none).
        seed: seed of the bootstrap.
        figures: write the PNG figures.

    Returns:
        `ReportResult`: the files written and the tables.

    Raises:
        ReportError: unreadable inputs (see `melora.report.loading`).
        MeloraError: an unknown `compare`.
    """
    published = published_tables(compare) if compare else {}
    records = load_records(paths)
    tables = build_tables(records, bootstrap=bootstrap, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult()
    result.views = [table_view(t, published.get(t.setting)) for t in tables]
    result.markdown = "\n".join(to_markdown(v) for v in result.views)

    figure_lines: list[str] = []
    if figures:
        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for table in tables:
            for path, caption in _write_figures(table, fig_dir):
                result.files.append(path)
                figure_lines.append(f"![{caption}](figures/{path.name})")

    n_runs = len({r.run.results_path for r in records})
    body = ["# melora report", "", f"{n_runs} lm-eval run(s); the runs read are listed in `runs.csv`.", ""]
    body += ["## Tables", "", result.markdown]
    if figure_lines:
        body += ["## Figures", "", *[line + "\n" for line in figure_lines]]
    _write(out / "report.md", "\n".join(body), result)
    _write(out / "tables.csv", to_csv(result.views), result)
    _write(out / "tables.tex", "\n".join(to_latex(v) for v in result.views), result)
    _write(out / "runs.csv", _runs_csv(records), result)
    result.files.sort(key=lambda p: (p.parent != out, str(p)))
    return result


def _write(path: Path, text: str, result: ReportResult) -> None:
    path.write_text(text, encoding="utf-8")
    result.files.append(path)


def _write_figures(table: Table, fig_dir: Path) -> list[tuple[Path, str]]:
    """The reliability diagrams (one per column) and the ECE-vs-accuracy figure of one table."""
    from melora.report.plots import ReliabilityPanel, SummaryPoint, ece_accuracy_figure, reliability_figure

    written = []
    colours = {m: method_colour(m.family, i) for i, m in enumerate(table.methods)}
    base = slugify(table.base_model)
    for key, title in table.columns:
        panels = []
        for method in table.methods:
            preds = table.predictions.get((method, key))
            if not preds:
                continue
            per_doc = [p.per_document() for p in preds]
            panels.append(
                ReliabilityPanel(
                    label=method.label + (f" ({len(preds)} seeds pooled)" if len(preds) > 1 else ""),
                    colour=colours[method],
                    confidences=np.concatenate([d["conf"] for d in per_doc]),
                    correct=np.concatenate([d["correct"] for d in per_doc]),
                )
            )
        caption = f"Reliability diagram: {title}, {table.title}"
        path = fig_dir / f"reliability_{base}_{table.setting}_{slugify(key)}.png"
        _save(reliability_figure(f"{title}\n{table.title}", panels), path)
        written.append((path, caption))
    points = []
    for method in table.methods:
        for key, title in table.columns:
            cell = table.cells.get((method, key))
            if cell:
                points.append(
                    SummaryPoint(
                        method.label,
                        colours[method],
                        title,
                        cell["acc"].mean,
                        cell["ece"].mean,
                        cell["acc"].std,
                        cell["ece"].std,
                    )
                )
    path = fig_dir / f"ece_vs_acc_{base}_{table.setting}.png"
    _save(ece_accuracy_figure(f"ECE vs accuracy ({table.title})", points), path)
    written.append((path, f"ECE vs accuracy per method, {table.title}"))
    return written


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=FIGURE_DPI)


def _runs_csv(records: list[TaskRecord]) -> str:
    fields = ("results_file", "model", "base_model", "method", "adapter", "seed", "limit", "setting", "tasks")
    rows: dict[tuple, dict[str, str]] = {}
    for rec in records:
        run = rec.run
        key = (str(run.results_path), rec.setting)
        row = rows.setdefault(
            key,
            {
                "results_file": str(run.results_path),
                "model": run.model,
                "base_model": run.base_model,
                "method": run.method.label,
                "adapter": run.adapter or "",
                "seed": "" if run.seed is None else str(run.seed),
                "limit": "" if run.limit is None else f"{run.limit:g}",
                "setting": rec.setting,
                "tasks": "",
            },
        )
        row["tasks"] = " ".join(filter(None, [row["tasks"], rec.task]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[k] for k in sorted(rows))
    return buffer.getvalue()
