"""Atomic directories: a checkpoint or adapter is written aside and swapped into place, never edited in place.

`atomic_directory(target)` yields a temporary sibling; when the block succeeds the old `target` is moved to
`.<name>.old`, the new one renamed to `target`, and the old one deleted. A kill at any moment leaves either the
previous complete directory or the new complete one (`recover` puts `.old` back when the kill fell between the two
renames); a partial directory is only ever the temporary one.

Files written inside get the modes the user's umask gives new files (`safetensors` creates its files 0600, which
would hide adapters and checkpoints from the rest of a lab's group).
"""

from __future__ import annotations

import os
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
    _apply_umask(tmp)
    old = _old(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    """Give `root` and everything under it the modes of a fresh file (0666) or directory (0777) under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
