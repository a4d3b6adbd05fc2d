"""The project's PEP 517 build backend: setuptools, plus one `.pth` file at the root of every wheel it builds.

`pyproject.toml` names this module as `build-backend` (with `backend-path = ["."]`). It re-exports
`setuptools.build_meta` unchanged and only post-processes the wheels of `build_wheel` and `build_editable`: it adds
`melora_lm_eval.pth` (one line that calls `melora.lm_eval_plugin.install()` at interpreter start, see that module)
to the wheel's root, which pip installs into site-packages, and lists it in the wheel's `RECORD`, so
`pip uninstall melora` removes it. Setuptools itself cannot place a file at the root of site-packages (its
`data-files` are relative to the environment prefix), and `pip install -e .` builds an editable wheel, so doing it
here covers both install modes with nothing to run afterwards.

Only the standard library and setuptools are imported: this runs in pip's isolated build environment.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks this backend does not change)


PTH_NAME = "melora_lm_eval.pth"
# One line; `.pth` lines that start with "import" are executed by `site` at start-up. The spec check keeps a stale
# `.pth` (package removed by hand) silent instead of printing a traceback at every start.
PTH_LINE = (
    "import importlib.util as _u; _u.find_spec('melora') is not None and "
    "__import__('melora.lm_eval_plugin').lm_eval_plugin.install()\n"
)


def build_wheel(
    wheel_directory: str, config_settings: dict | None = None, metadata_directory: str | None = None
) -> str:
    """setuptools' `build_wheel`, with the `.pth` file added."""
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    add_pth(os.path.join(wheel_directory, name))
    return name


def build_editable(
    wheel_directory: str, config_settings: dict | None = None, metadata_directory: str | None = None
) -> str:
    """setuptools' `build_editable` (PEP 660), with the `.pth` file added."""
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    add_pth(os.path.join(wheel_directory, name))
    return name


def add_pth(wheel_path: str) -> None:
    """Rewrite the wheel at `wheel_path` with `PTH_NAME` at its root and a matching `RECORD` entry."""
    data = PTH_LINE.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel_path + ".tmp"
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dst.writestr(zipfile.ZipInfo(PTH_NAME, date_time=(1980, 1, 1, 0, 0, 0)), data)  # dist-info stays last
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == PTH_NAME:
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in content.decode().splitlines() if not line.startswith(PTH_NAME + ",")]
                lines.insert(0, f"{PTH_NAME},sha256={digest},{len(data)}")
                content = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, content)
    os.replace(tmp, wheel_path)
