"""Per-run metrics from the samples, pooled shift groups, mean ± std over seeds and bootstrap intervals.

Every number is recomputed from the per-document predictions with `melora.metrics` (the same code the tasks run), and
checked against the value lm-eval wrote into the results file (a mismatch is warned about: it means the samples and
the results disagree, e.g. files from different runs).

Pooled groups (distribution-shift setting only, as the paper's Table 3 headers): the documents of ARC-C and ARC-E
("smaller shift") and of the three MMLU sets ("larger shift") are put together and every metric is computed once over
the union. For ECE this is not the average of the tasks' ECEs (the ECE of a union is not a mean); a run that lacks one
of a group's tasks has no pooled value.

Seeds: a table cell reduces the replicates of one method (runs that differ in adapter or seed, see
`melora.report.loading`) to their mean and sample standard deviation (`ddof=1`, none for a single replicate).
Bootstrap (on request): documents are resampled with replacement within each replicate, the metric is recomputed and
averaged over replicates, and the 2.5 and 97.5 percentiles of that mean form the 95% interval.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from melora.errors import MeloraWarning
from melora.metrics import NLL_FLOOR, calibration_error_from_top_label, summarize, top_label
from melora.protocol import ID_TASKS, OOD_TASKS
from melora.report.loading import Method, RunInfo, TaskRecord, task_key, task_title
from melora.report.style import METRICS


REPORTED_TOLERANCE = 1e-6
"""Largest absolute difference between a recomputed metric and lm-eval's reported one before a warning."""

POOLED_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pooled_smaller_shift": ("Smaller shift", ("arc_c", "arc_e")),
    "pooled_larger_shift": ("Larger shift", ("mmlu_chem", "mmlu_phys", "mmlu_math")),
}
"""Pooled columns of the `ood` setting: key -> (title, member tasks), the paper's Table 3 shift groups."""

SETTINGS = {"id": "in-distribution", "ood": "distribution shift (trained on OBQA)"}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Predictions:
    """Per-document predictions of one replicate on one column (a task, or a pooled group).

    Attributes:
        probs (`tuple[np.ndarray, ...]`): choice-normalised probabilities per document.
        labels (`np.ndarray`): gold indices `(N,)`.
    """

    probs: tuple[np.ndarray, ...]
    labels: np.ndarray

    def metrics(self) -> dict[str, float]:
        """`acc`, `ece`, `nll`, `brier` (fractions, raw) via `melora.metrics.summarize`."""
        return summarize(self.probs, self.labels)

    def per_document(self) -> dict[str, np.ndarray]:
        """Per-document confidence, correctness, NLL and Brier terms `(N,)` each (for bootstrap and diagrams)."""
        conf, correct = top_label(self.probs, self.labels)
        gold_p = np.array([p[int(y)] for p, y in zip(self.probs, self.labels)], dtype=np.float64)
        brier = np.array(
            [((p - np.eye(len(p))[int(y)]) ** 2).sum() for p, y in zip(self.probs, self.labels)], dtype=np.float64
        )
        return {"conf": conf, "correct": correct, "nll": -np.log(np.maximum(gold_p, NLL_FLOOR)), "brier": brier}


@dataclass(frozen=True)
class Summary:
    """One metric of one table cell over its replicates.

    Attributes:
        values (`tuple[float, ...]`): the metric per replicate (fractions, raw).
        ci (`tuple[float, float] | None`): the 95% bootstrap interval of the mean, when requested.
    """

    values: tuple[float, ...]
    ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        """Number of replicates."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over replicates."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation over replicates (`ddof=1`); None for one replicate."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


@dataclass
class Table:
    """Everything one results table shows: one base model in one setting.

    Attributes:
        base_model (`str`): display name of the base model.
        setting (`str`): `id` or `ood`.
        columns (`list[tuple[str, str]]`): `(key, title)` per column: lm-eval task names, then pooled groups.
        methods (`list[Method]`): rows per metric, in the paper's order.
        cells (`dict[tuple[Method, str], dict[str, Summary]]`): per (method, column key), per metric.
        predictions (`dict[tuple[Method, str], list[Predictions]]`): per (method, column key), one per replicate.
        runs (`dict[Method, list[RunInfo]]`): the runs behind each method's rows.
    """

    base_model: str
    setting: str
    columns: list[tuple[str, str]] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)
    cells: dict[tuple[Method, str], dict[str, Summary]] = field(default_factory=dict)
    predictions: dict[tuple[Method, str], list[Predictions]] = field(default_factory=dict)
    runs: dict[Method, list[RunInfo]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """`SmolLM2-135M-Instruct, in-distribution`."""
        return f"{self.base_model}, {SETTINGS.get(self.setting, self.setting)}"

    def replicates(self, method: Method) -> int:
        """Number of replicates of a method (its largest count over columns)."""
        counts = [len(self.predictions[(method, c)]) for c, _ in self.columns if (method, c) in self.predictions]
        return max(counts, default=0)


def check_reported(record: TaskRecord, recomputed: dict[str, float]) -> None:
    """Warn when lm-eval's reported value of a metric differs from the one recomputed from the samples."""
    reported = record.run.reported.get(record.task, {})
    for metric, value in recomputed.items():
        if metric in reported and not math.isclose(reported[metric], value, rel_tol=0, abs_tol=REPORTED_TOLERANCE):
            warnings.warn(
                f"{record.task} in '{record.run.results_path}': {metric} recomputed from the samples is {value:.6f}, "
                f"the results file says {reported[metric]:.6f}; the report uses the recomputed value.",
                MeloraWarning,
                stacklevel=2,
            )


def build_tables(records: list[TaskRecord], bootstrap: int = 0, seed: int = 0) -> list[Table]:
    """Reduce task records to one `Table` per (base model, setting), ordered by base model then `id`, `ood`.

    Args:
        records (`list[TaskRecord]`): from `melora.report.loading.load_records`.
        bootstrap (`int`): bootstrap resamples for the 95% intervals; 0 for none.
        seed (`int`): seed of the bootstrap's generator.
    """
    if bootstrap < 0:
        raise ValueError(f"Expected `bootstrap` to be a non-negative int, but got {bootstrap}.")
    grouped: dict[tuple[str, str], list[TaskRecord]] = defaultdict(list)
    for rec in records:
        check_reported(rec, Predictions(rec.probs, rec.labels).metrics())
        grouped[(rec.run.base_model, rec.setting)].append(rec)
    rng = np.random.default_rng(seed)
    tables = []
    for (base, setting), recs in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] != "id")):
        tables.append(_build_table(base, setting, recs, bootstrap, rng))
    return tables


def _build_table(
    base: str, setting: str, records: list[TaskRecord], bootstrap: int, rng: np.random.Generator
) -> Table:
    table = Table(base_model=base, setting=setting)
    by_replicate: dict[tuple[Method, tuple], dict[str, Predictions]] = defaultdict(dict)
    for rec in records:
        by_replicate[(rec.run.method, rec.run.replicate)][rec.task] = Predictions(rec.probs, rec.labels)
        runs = table.runs.setdefault(rec.run.method, [])
        if rec.run not in runs:
            runs.append(rec.run)
    tasks = sorted({rec.task for rec in records}, key=lambda t: _task_order(t, setting))
    table.columns = [(t, task_title(t)) for t in tasks]
    if setting == "ood":
        for (method, replicate), preds in by_replicate.items():
            preds.update(_pooled(preds, method, replicate))
        present = {c for preds in by_replicate.values() for c in preds}
        table.columns += [(key, title) for key, (title, _) in POOLED_GROUPS.items() if key in present]
    for (method, _), preds in sorted(by_replicate.items(), key=lambda kv: (kv[0][0].sort_key(), str(kv[0][1]))):
        for column, pred in preds.items():
            table.predictions.setdefault((method, column), []).append(pred)
    table.methods = sorted({m for m, _ in by_replicate}, key=Method.sort_key)
    for key, preds in table.predictions.items():
        per_metric = [p.metrics() for p in preds]
        intervals = bootstrap_intervals(preds, bootstrap, rng) if bootstrap else {}
        table.cells[key] = {
            m: Summary(tuple(v[m] for v in per_metric), ci=intervals.get(m)) for m in METRICS if m in per_metric[0]
        }
    return table


def _task_order(task: str, setting: str) -> tuple:
    order = OOD_TASKS if setting == "ood" else ID_TASKS
    key = task_key(task)
    return (order.index(key) if key in order else len(order), key, task.endswith(("_cloze", "_cloze_norm")), task)


def _pooled(preds: dict[str, Predictions], method: Method, replicate: tuple) -> dict[str, Predictions]:
    """The pooled groups' predictions of one replicate (only groups whose every member task is present once)."""
    out = {}
    for key, (title, members) in POOLED_GROUPS.items():
        parts = {m: [t for t in preds if task_key(t) == m] for m in members}
        if not any(parts.values()):
            continue
        if any(len(v) != 1 for v in parts.values()):
            absent = [m for m, v in parts.items() if len(v) != 1]
            warnings.warn(
                f"No pooled '{title}' value for {method.label} (adapter, seed {replicate}): "
                f"expected exactly one run of each of {', '.join(members)}; problem with {', '.join(absent)}.",
                MeloraWarning,
                stacklevel=3,
            )
            continue
        tasks = [v[0] for v in parts.values()]
        out[key] = Predictions(
            probs=tuple(p for t in tasks for p in preds[t].probs),
            labels=np.concatenate([preds[t].labels for t in tasks]),
        )
    return out


def bootstrap_intervals(
    replicates: list[Predictions], iterations: int, rng: np.random.Generator
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the replicate-mean of every metric, resampling documents within each replicate.

    Args:
        replicates (`list[Predictions]`): one per replicate.
        iterations (`int`): number of bootstrap resamples.
        rng (`np.random.Generator`): the generator (seeded by the caller).

    Returns:
        `dict[str, tuple[float, float]]`: `(low, high)` per metric, in raw units.
    """
    docs = [r.per_document() for r in replicates]
    draws = {m: np.empty(iterations) for m in METRICS}
    for i in range(iterations):
        values = defaultdict(list)
        for d in docs:
            idx = rng.integers(0, d["conf"].size, d["conf"].size)  # (N,) resampled documents
            values["acc"].append(d["correct"][idx].mean())
            values["ece"].append(calibration_error_from_top_label(d["conf"][idx], d["correct"][idx]))
            values["nll"].append(d["nll"][idx].mean())
            values["brier"].append(d["brier"][idx].mean())
        for m in METRICS:
            draws[m][i] = np.mean(values[m])
    tail = (1.0 - CONFIDENCE) / 2 * 100
    return {m: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for m, v in draws.items()}
