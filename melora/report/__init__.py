"""`melora report`: tables, reliability diagrams and published-number comparisons from lm-eval output directories.

```py
from melora.report import write_report

result = write_report(["runs/"], "report", compare="paper-13b")
print(result.markdown)
```

One concept per module: `loading` (find and parse runs), `aggregate` (metrics from the samples, pooled groups, seeds,
bootstrap), `tables` (Markdown, CSV, LaTeX), `plots` (figures), `published` (the paper's tables), `style` (metric
directions, labels, units, colours) and `writer` (everything into one directory). Names are imported lazily, so
`melora --help` imports neither numpy nor matplotlib.
"""

from __future__ import annotations

from melora.lazy import lazy_exports


_LAZY: dict[str, str] = {
    "COMPARE_CHOICES": "melora.report.published",
    "POOLED_GROUPS": "melora.report.aggregate",
    "Method": "melora.report.loading",
    "Predictions": "melora.report.aggregate",
    "ReportError": "melora.report.loading",
    "ReportResult": "melora.report.writer",
    "RunInfo": "melora.report.loading",
    "Summary": "melora.report.aggregate",
    "Table": "melora.report.aggregate",
    "TaskRecord": "melora.report.loading",
    "build_tables": "melora.report.aggregate",
    "load_records": "melora.report.loading",
    "load_run": "melora.report.loading",
    "published_tables": "melora.report.published",
    "write_report": "melora.report.writer",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
