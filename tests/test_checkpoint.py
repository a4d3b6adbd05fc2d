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


def test_written_files_get_the_umask_modes_not_safetensors_0600(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "adapter") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))  # safetensors writes 0600
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(umask)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "adapter" / "sub").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o755
