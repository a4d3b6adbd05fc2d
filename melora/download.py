"""Write a local copy (the `MELORA_DATA_DIR` layout) of the hub splits the protocol reads."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from melora.data import HUB_IDS, write_split
from melora.errors import DataNotFoundError
from melora.protocol import TASKS, get_task


Fetch = Callable[[str, str | None, str], list[dict]]


def source_splits(tasks: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(hub id, config, hub split) of every source split the given tasks (default: all) read."""
    out = []
    for name in tasks or TASKS:
        spec = get_task(name)
        hub_splits = {"winogrande": ("train", "validation"), "boolq": ("train", "validation")}.get(
            spec.kind, ("train", "validation", "test") if spec.has_train else ("validation", "test")
        )
        out += [(spec.dataset, spec.config, s) for s in hub_splits if (spec.dataset, spec.config, s) not in out]
    return out


def _hub_fetch(dataset: str, config: str | None, split: str) -> list[dict]:
    import datasets

    hub_config = None if config in (None, "default") else config
    try:
        return datasets.load_dataset(dataset, hub_config, split=split).to_list()
    except Exception as e:  # any hub failure means the copy cannot be made
        raise DataNotFoundError(f"Could not download {dataset} ({config}) split {split!r} from the hub: {e}") from e


def download_all(
    root: str | os.PathLike, tasks: Sequence[str] | None = None, fetch: Fetch = _hub_fetch
) -> Iterator[Path]:
    """Fetch each source split and write it under `root`; yields the written files.

    Args:
        root: the directory to fill (later used as `MELORA_DATA_DIR`).
        tasks: task names (default: all).
        fetch: `(hub id, config, split) -> rows`; the hub by default (tests pass an in-memory source).
    """
    for dataset, config, split in tqdm(source_splits(tasks), desc="downloading", leave=False):
        if dataset.rsplit("/", 1)[-1] not in HUB_IDS:
            raise DataNotFoundError(f"Unknown dataset {dataset!r}.")
        yield write_split(fetch(dataset, config, split), root, dataset, config, split)
