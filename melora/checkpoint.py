"""Atomic directories: a checkpoint or adapter is written aside and swapped into place, never edited in place.

`atomic_directory(target)` yields a temporary sibling; when the block succeeds the old `target` is moved to
`.<name>.old`, the new one renamed to `target`, and the old one deleted. A kill at any moment leaves either the
previous complete directory or the new complete one (`recover` puts `.old` back when the kill fell between the two
renames); a partial directory is only ever the temporary one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _tmp(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp")


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover(target: Path) -> None:
    """Undo the effect of a kill during a swap: restore `.old` when `target` is missing; drop a stale temp dir."""
    if not target.exists() and _old(target).exists():
        _old(target).rename(target)
    shutil.rmtree(_tmp(target), ignore_errors=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Write into the yielded temporary directory; it replaces `target` only if the block completes."""
    target = Path(target)
    recover(target)
    tmp = _tmp(target)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
