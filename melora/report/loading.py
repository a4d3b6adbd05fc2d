"""Find and read lm-eval output directories: `results_<ts>.json` plus the `samples_<task>_<ts>.jsonl` beside it.

Everything that identifies a run comes from what the results file records, never from folder names:

- base model: the model_args' `pretrained` (a local path is shown by its last component, a hub id as is), else the
  results' `model_name`, else the embedded default model (`--model melora` without `pretrained=`);
- method: the `melora` model's `get_model_info()` fields in `config` (`adapter_kind`, `ensemble_members`, `samples`,
  `average`, `mc_dropout`); a `--model hf` run has none of them and is the zero-shot base model (or, with `peft=`, a
  plain PEFT adapter);
- replicate: `(adapter, seed)`, the `melora` model's `seed` (lm-eval's `random_seed` for other models); two results
  files with the same base model, method, replicate and task are one re-run: the newer one is kept, with a warning;
- setting: `ood` for tasks run under a `melora_ood*` group (or alongside an MMLU task: the shifted sets exist only in
  that setting), `id` otherwise;
- per-document predictions: each samples line's `brier` item `[gold, probs]` (the `melora_*` tasks write the
  choice-normalised probabilities there), else the choices' log-likelihoods in `filtered_resps` (strings, softmaxed
  here) with the gold index from `doc["gold"]` or `target`.

A file that cannot be read, a results file that is not lm-eval's, or a task without its samples file is refused with
a `ReportError` naming the file.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from melora.errors import MeloraError, MeloraWarning
from melora.protocol import OOD_TASKS, TASKS


logger = logging.getLogger(__name__)

RESULTS_GLOB = "results_*.json"
_RESULTS_RE = re.compile(r"^results_(?P<ts>.+)\.json$")
METRIC_KEYS = ("acc", "ece", "nll", "brier")
OOD_GROUP_PREFIX = "melora_ood"
PROB_SUM_TOLERANCE = 1e-4


class ReportError(MeloraError, ValueError):
    """An input of `melora report` cannot be read or makes no sense (named in the message)."""


@dataclass(frozen=True)
class Method:
    """What was evaluated, as recorded by the `melora` lm-eval model (or its absence).

    Attributes:
        family (`str`): `base` (no adapter), `lora` (`map`, `mle` when the training recorded it), `mcd`, `ensemble`,
            `laplace`, `blob`, `melora`, or `peft` (an adapter loaded
            by `--model hf` with `peft=`, kind unknown).
        member_kind (`str`): the adapter kind of an ensemble's members (`lora`, `melora`, ...); else the kind itself.
        members (`int`): ensemble members (1 for a single adapter, 0 for none).
        samples (`int | None`): stochastic passes per document (0: posterior mean / deterministic; None: not recorded).
        average (`str | None`): `probs` or `logits` (None when not recorded or irrelevant).
    """

    family: str
    member_kind: str = ""
    members: int = 0
    samples: int | None = None
    average: str | None = None

    @property
    def label(self) -> str:
        """Row label in tables and legends, e.g. `Me-LoRA (S=10)`, `ENS (3×LoRA)`, `Base (zero-shot)`."""
        names = {"lora": "LoRA", "map": "MAP", "mle": "MLE", "laplace": "LAP", "melora": "Me-LoRA", "blob": "BLoB"}
        if self.family == "base":
            return "Base (zero-shot)"
        if self.family == "peft":
            return "PEFT adapter (hf)"
        details = []
        if self.family == "ensemble":
            name = "ENS"
            details.append(f"{self.members}×{names.get(self.member_kind, self.member_kind)}")
        elif self.family == "mcd":
            name = "MCD"
        else:
            name = names.get(self.family, self.family)
        bayesian = self.family in ("mcd", "blob", "melora", "laplace") or self.member_kind in ("melora", "blob")
        if bayesian and self.samples is not None:
            mean = "probit" if self.family == "laplace" else "mean"
            details.append(mean if self.samples == 0 else f"S={self.samples}")
        if bayesian and self.samples and self.average == "logits":
            details.append("logit avg")
        return f"{name} ({', '.join(details)})" if details else name

    def sort_key(self) -> tuple:
        """Order of rows: the paper's method order, then samples."""
        from melora.report.style import METHOD_ORDER

        rank = METHOD_ORDER.index(self.family) if self.family in METHOD_ORDER else len(METHOD_ORDER)
        return (rank, self.member_kind, self.members, -1 if self.samples is None else self.samples, self.label)


@dataclass(frozen=True)
class RunInfo:
    """One lm-eval invocation (one results file).

    Attributes:
        results_path (`Path`): the results file.
        timestamp (`str`): the `<ts>` of its name (shared with its samples files).
        model (`str`): lm-eval's model name (`melora`, `hf`, ...).
        base_model (`str`): display name of the base model (see the module docstring).
        method (`Method`): what was evaluated.
        adapter (`str | None`): the adapter path as recorded.
        seed (`int | None`): the run seed (see the module docstring).
        limit (`float | None`): lm-eval's `--limit`, when one was set (a subset of every task).
        num_fewshot (`dict[str, int]`): shots per task.
        date (`float`): lm-eval's `date` (seconds), to tell re-runs apart.
        reported (`dict[str, dict[str, float]]`): the metrics lm-eval wrote, per task (`{"acc": ..., ...}`).
    """

    results_path: Path
    timestamp: str
    model: str
    base_model: str
    method: Method
    adapter: str | None
    seed: int | None
    limit: float | None
    num_fewshot: dict[str, int] = field(default_factory=dict)
    date: float = 0.0
    reported: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def replicate(self) -> tuple[str | None, int | None]:
        """`(adapter, seed)`: what tells two runs of one method apart."""
        return (self.adapter, self.seed)


@dataclass(frozen=True)
class TaskRecord:
    """Per-document predictions of one task in one run.

    Attributes:
        run (`RunInfo`): the run.
        task (`str`): the lm-eval task name (`melora_arc_c`).
        setting (`str`): `id` or `ood`.
        probs (`tuple[np.ndarray, ...]`): choice-normalised probabilities, one vector per document.
        labels (`np.ndarray`): gold indices `(N,)`.
        doc_ids (`tuple`): lm-eval's `doc_id` per document.
        samples_path (`Path`): the samples file read.
    """

    run: RunInfo
    task: str
    setting: str
    probs: tuple[np.ndarray, ...]
    labels: np.ndarray
    doc_ids: tuple
    samples_path: Path


def task_key(task: str) -> str:
    """The protocol's short name of an lm-eval task (`melora_arc_c_cloze` -> `arc_c`), or the task itself."""
    short = task.removeprefix("melora_").removesuffix("_cloze_norm").removesuffix("_cloze")
    return short if task.startswith("melora_") and short in TASKS else task


def task_title(task: str) -> str:
    """The paper's column title of a task (`ARC-C`; `ARC-C (cloze)`); other tasks keep their lm-eval name."""
    key = task_key(task)
    if key not in TASKS:
        return task
    if task.endswith("_cloze_norm"):
        return TASKS[key].title + " (cloze, per char)"
    return TASKS[key].title + (" (cloze)" if task.endswith("_cloze") else "")


# ----------------------------------------------------------------------------------------------------------
# Discovery


def find_results_files(paths: list[str | Path]) -> list[Path]:
    """Every `results_*.json` under the given files or directories (recursively), sorted, without duplicates.

    Raises:
        ReportError: a path that does not exist, or no results file anywhere under the paths.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ReportError(f"Results path '{raw}' does not exist.")
        if path.is_file():
            if not _RESULTS_RE.match(path.name):
                raise ReportError(f"Expected a directory or a results_*.json file, but got '{raw}'.")
            found.add(path.resolve())
        else:
            found.update(p.resolve() for p in path.rglob(RESULTS_GLOB) if p.is_file())
    if not found:
        raise ReportError(
            f"No lm-eval results file (results_*.json) under {', '.join(map(str, paths))}. "
            "Point at the --output_path of an `lm_eval ... --log_samples` run."
        )
    return sorted(found)


def load_records(paths: list[str | Path]) -> list[TaskRecord]:
    """Read every run under `paths` and return one `TaskRecord` per (run, task), re-runs resolved.

    Raises:
        ReportError: see the module docstring.
    """
    files = find_results_files(paths)
    records: list[TaskRecord] = []
    for path in files:
        records.extend(load_run(path))
    _warn_orphan_samples(files)
    return _drop_reruns(records)


def load_run(results_path: str | Path) -> list[TaskRecord]:
    """The task records of one results file and its samples files.

    Raises:
        ReportError: unreadable or foreign results file, missing or unreadable samples file.
    """
    path = Path(results_path)
    match = _RESULTS_RE.match(path.name)
    if match is None:
        raise ReportError(f"Expected a file named results_<timestamp>.json, but got '{path}'.")
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "config" not in data:
        raise ReportError(f"'{path}' is not an lm-eval results file (no `results` and `config` entries).")
    run = parse_run_info(data, path, match.group("ts"))
    groups = {g: list(ts) for g, ts in (data.get("group_subtasks") or {}).items()}
    tasks = [t for t in data["results"] if t not in groups]
    samples = _samples_files(path.parent, match.group("ts"))
    missing = [t for t in tasks if t not in samples]
    if missing:
        raise ReportError(
            f"'{path}' has no samples file for task(s) {', '.join(missing)} beside it: run lm_eval with "
            "--log_samples (the report computes every metric from the per-document samples)."
        )
    ood_tasks = {t for g, members in groups.items() if g.startswith(OOD_GROUP_PREFIX) for t in members}
    shifted = any(task_key(t).startswith("mmlu_") for t in tasks)
    records = []
    for task in tasks:
        setting = "ood" if task in ood_tasks or (shifted and task_key(task) in OOD_TASKS) else "id"
        probs, labels, doc_ids = read_samples(samples[task])
        records.append(
            TaskRecord(run, task, setting, probs, labels, doc_ids, samples_path=samples[task]),
        )
    return records


def parse_run_info(data: dict[str, Any], path: Path, timestamp: str) -> RunInfo:
    """A `RunInfo` from a parsed results file (see the module docstring for each field)."""
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ReportError(f"'{path}': expected `config` to be an object, but got {type(config).__name__}.")
    model = str(config.get("model") or "")
    args = parse_model_args(config.get("model_args"))
    method = _method(config, args)
    seed = config.get("seed", config.get("random_seed"))
    reported = {}
    for task, values in data["results"].items():
        if isinstance(values, dict):
            reported[task] = {
                m: float(values[f"{m},none"])
                for m in METRIC_KEYS
                if isinstance(values.get(f"{m},none"), (int, float)) and not isinstance(values[f"{m},none"], bool)
            }
    return RunInfo(
        results_path=path,
        timestamp=timestamp,
        model=model,
        base_model=_base_model(model, args, data),
        method=method,
        adapter=str(config["adapter"]) if config.get("adapter") else (str(args["peft"]) if args.get("peft") else None),
        seed=int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None,
        limit=float(config["limit"]) if isinstance(config.get("limit"), (int, float)) else None,
        num_fewshot={k: v for k, v in (data.get("n-shot") or {}).items() if isinstance(v, int)},
        date=float(data["date"]) if isinstance(data.get("date"), (int, float)) else 0.0,
        reported=reported,
    )


def parse_model_args(model_args: Any) -> dict[str, Any]:
    """lm-eval's recorded model_args as a dict (it records a dict, or the `k=v,k2=v2` string in older versions)."""
    if isinstance(model_args, dict):
        return dict(model_args)
    if isinstance(model_args, str) and model_args.strip():
        text = model_args.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        return dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    return {}


def _method(config: dict[str, Any], args: dict[str, Any]) -> Method:
    kind = config.get("adapter_kind")
    samples = config.get("samples")
    samples = int(samples) if isinstance(samples, int) and not isinstance(samples, bool) else None
    average = config.get("average") if isinstance(config.get("average"), str) else None
    if kind is None:  # not the melora model: `--model hf` and friends
        return Method("peft", member_kind="unknown", members=1) if args.get("peft") else Method("base")
    kind = str(kind)
    if kind in ("none", ""):
        return Method("base")
    members = int(config.get("ensemble_members") or 1)
    if kind.startswith("ensemble:"):
        member_kind = kind.split(":", 1)[1]
        return Method("ensemble", member_kind=member_kind, members=members, samples=samples, average=average)
    if config.get("mc_dropout") and samples:
        return Method("mcd", member_kind=kind, members=1, samples=samples, average=average)
    if kind == "lora" and config.get("training_method") in ("map", "mle"):  # recorded by scripts/train.py
        kind = str(config["training_method"])
    return Method(kind, member_kind=kind, members=1, samples=samples, average=average)


def _base_model(model: str, args: dict[str, Any], data: dict[str, Any]) -> str:
    name = str(args.get("pretrained") or data.get("model_name") or "")
    if not name:
        if model == "melora":
            from melora.embedded_model import MODEL_DIRNAME

            return MODEL_DIRNAME
        return model or "unknown model"
    looks_local = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or Path(name).exists()
    if looks_local:
        pure = PureWindowsPath(name) if "\\" in name else PurePosixPath(name)
        return pure.name or name
    return name


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"Cannot read '{path}': {e}") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"'{path}' is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e


def _samples_files(directory: Path, timestamp: str) -> dict[str, Path]:
    suffix = f"_{timestamp}.jsonl"
    return {p.name[len("samples_") : -len(suffix)]: p for p in directory.glob(f"samples_*{suffix}") if p.is_file()}


def read_samples(path: str | Path) -> tuple[tuple[np.ndarray, ...], np.ndarray, tuple]:
    """Choice-normalised probabilities, gold indices and doc ids from one `samples_<task>_<ts>.jsonl` file.

    Raises:
        ReportError: unreadable file, invalid JSON line, or a line without usable predictions.
    """
    from melora.metrics import normalise_log_likelihoods

    path = Path(path)
    probs, labels, doc_ids = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"Cannot read '{path}': {e}") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"'{path}' line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{where} is not valid JSON ({e.msg}, column {e.colno}).") from e
        if not isinstance(item, dict):
            raise ReportError(f"{where}: expected a JSON object per line, but got {type(item).__name__}.")
        if item.get("filter", "none") != "none":
            continue
        try:
            if isinstance(item.get("brier"), list) and len(item["brier"]) == 2:
                gold, p = int(item["brier"][0]), np.asarray(item["brier"][1], dtype=np.float64)
            else:
                lls = [float(r[0]) for r in item["filtered_resps"]]  # resps are strings in samples files
                p = normalise_log_likelihoods(lls)
                doc = item.get("doc") or {}
                gold = int(doc["gold"]) if isinstance(doc.get("gold"), int) else int(item["target"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ReportError(
                f"{where}: expected a `brier` item [gold, probs] or `filtered_resps` log-likelihoods with an integer "
                f"gold index, but could not read them ({type(e).__name__}: {e})."
            ) from e
        if p.ndim != 1 or not 0 <= gold < p.size or abs(p.sum() - 1.0) > PROB_SUM_TOLERANCE or (p < 0).any():
            raise ReportError(f"{where}: expected probabilities over the choices and a gold index among them.")
        probs.append(p)
        labels.append(gold)
        doc_ids.append(item.get("doc_id", len(doc_ids)))
    if not probs:
        raise ReportError(f"'{path}' holds no documents.")
    return tuple(probs), np.asarray(labels, dtype=np.int64), tuple(doc_ids)


def _warn_orphan_samples(results_files: list[Path]) -> None:
    """Warn about samples files with no results file of the same timestamp beside them (an interrupted run)."""
    for directory in sorted({p.parent for p in results_files}):
        stamps = {m.group("ts") for p in directory.glob(RESULTS_GLOB) if (m := _RESULTS_RE.match(p.name))}
        for sample in sorted(directory.glob("samples_*.jsonl")):
            if not any(sample.name.endswith(f"_{ts}.jsonl") for ts in stamps):
                warnings.warn(
                    f"Ignoring '{sample}': no results file of the same run beside it.", MeloraWarning, stacklevel=3
                )


def _drop_reruns(records: list[TaskRecord]) -> list[TaskRecord]:
    """Keep the newest of records that share base model, method, replicate, setting and task (warn about others)."""
    kept: dict[tuple, TaskRecord] = {}
    for rec in sorted(records, key=lambda r: (r.run.date, r.run.timestamp)):
        key = (rec.run.base_model, rec.run.method, rec.run.replicate, rec.setting, rec.task)
        if key in kept:
            warnings.warn(
                f"Two runs of {rec.run.method.label} on {rec.task} with the same adapter and seed: keeping "
                f"'{rec.run.results_path}', ignoring '{kept[key].run.results_path}'.",
                MeloraWarning,
                stacklevel=3,
            )
        kept[key] = rec
    return sorted(kept.values(), key=lambda r: (str(r.run.results_path), r.task))
