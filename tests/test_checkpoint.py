from __future__ import annotations

import pytest

from melora.checkpoint import atomic_directory, recover


def test_block_failure_keeps_the_old_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "f").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "f").write_text("half")
        raise RuntimeError("killed")
    assert (target / "f").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "f").write_text("v1")
    target.rename(tmp_path / ".ckpt.old")  # what a kill after the first rename leaves
    recover(target)
    assert (target / "f").read_text() == "v1"
