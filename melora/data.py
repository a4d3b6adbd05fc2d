"""One way to read any split of the benchmark datasets: the hub, or a local copy named by `MELORA_DATA_DIR`.

The local layout is the hub's row schema as JSON Lines, `<dataset>/<config>/<split>.jsonl`, where `<dataset>`
is the last part of the hub id (`ai2_arc`, `openbookqa`, `winogrande`, `boolq`, `mmlu`) and `<config>` the hub
config (`default` where the hub has none). `melora download-data DIR` writes such a copy from the hub.

When `MELORA_DATA_DIR` is set, only the local copy is read: a missing file is an error, never a silent
fallback to the hub (or to anything else).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from melora.errors import DataNotFoundError


DATA_DIR_ENV = "MELORA_DATA_DIR"

# Local directory name -> hub dataset id.
HUB_IDS: dict[str, str] = {
    "ai2_arc": "allenai/ai2_arc",
    "openbookqa": "allenai/openbookqa",
    "winogrande": "allenai/winogrande",
    "boolq": "google/boolq",
    "mmlu": "cais/mmlu",
}

Row = dict[str, Any]


def _local_name(dataset: str) -> str:
    name = dataset.rsplit("/", 1)[-1]
    if name not in HUB_IDS:
        raise DataNotFoundError(f"Unknown dataset {dataset!r}. Available: {', '.join(sorted(HUB_IDS.values()))}.")
    return name


def data_dir() -> Path | None:
    """The local data copy named by `MELORA_DATA_DIR`, or None to read the hub."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def local_split_path(root: Path, dataset: str, config: str | None, split: str) -> Path:
    """Path of one split in the local layout."""
    return root / _local_name(dataset) / (config or "default") / f"{split}.jsonl"


def load_split(dataset: str, config: str | None, split: str) -> list[Row]:
    """Load one split of a benchmark dataset as a list of rows in the hub's schema.

    Args:
        dataset (`str`): hub id (`allenai/ai2_arc`) or its local name (`ai2_arc`).
        config (`str` or `None`): hub config (`ARC-Challenge`, `main`, `winogrande_s`, `college_physics`);
            `None` or `"default"` where the hub has none (BoolQ).
        split (`str`): `train`, `validation`, `test` (MMLU also `dev`).

    Returns:
        `list[dict]`: the rows, in the split's order.

    Raises:
        DataNotFoundError: the split is in neither place; the message names the dataset, the split and both
            ways to provide it.
    """
    name = _local_name(dataset)
    root = data_dir()
    if root is not None:
        path = local_split_path(root, name, config, split)
        if not path.is_file():
            raise DataNotFoundError(_missing_message(name, config, split, f"{DATA_DIR_ENV} has no {path}"))
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    return _load_from_hub(name, config, split)


def _load_from_hub(name: str, config: str | None, split: str) -> list[Row]:
    import datasets

    hub_config = None if config in (None, "default") else config
    try:
        ds = datasets.load_dataset(HUB_IDS[name], hub_config, split=split)
    except Exception as e:  # the hub raises many types (offline, connection, missing split); all mean "not here"
        raise DataNotFoundError(
            _missing_message(name, config, split, f"the hub failed: {type(e).__name__}: {e}")
        ) from e
    return ds.to_list()


def _missing_message(name: str, config: str | None, split: str, why: str) -> str:
    where = f"{HUB_IDS[name]}" + (f" ({config})" if config and config != "default" else "")
    return (
        f"Dataset {where}, split {split!r} is not available: {why}. Provide it either way: "
        f"(1) from the hub (online, {DATA_DIR_ENV} unset), or "
        f"(2) a local copy: set {DATA_DIR_ENV}=DIR with DIR/{name}/{config or 'default'}/{split}.jsonl "
        f"(`melora download-data DIR` writes one on a machine with hub access)."
    )


def write_split(
    rows: Iterable[Mapping[str, Any]], root: str | os.PathLike, dataset: str, config: str | None, split: str
) -> Path:
    """Write rows as one split of the local layout, atomically (a temporary file renamed into place).

    Returns:
        `Path`: the written `.jsonl` file.
    """
    path = local_split_path(Path(root), dataset, config, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{split}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
