"""Make the plain `lm_eval` command know `--model melora` and the `melora_*` tasks, with no flags and no wrapper.

The convention lm-eval is adopting (on its development line, not in the 0.4.13 release this project pins) is that a
package declares two entry points, which `pyproject.toml` does:

```toml
[project.entry-points."lm_eval.models"]
melora = "harness_models.melora_lm:MeloraLM"
[project.entry-points."lm_eval.tasks"]
melora = "lm_eval_tasks"
```

Until the installed lm-eval reads them, this module gives the same discovery. The install puts a one-line file,
`melora_lm_eval.pth`, into site-packages (written by the project's build backend, `melora/_build_backend.py`, for
regular and editable installs alike). At interpreter start it imports this module (standard library only, well
under a millisecond) and calls `install()`, which adds an import hook and nothing else. The hook waits for two lm-eval
modules and acts right after each has run:

- `lm_eval.models` (the module that registers lm-eval's own models): registers `melora` in lm-eval's model registry
  as a lazy `"module:Class"` placeholder, exactly like lm-eval's built-in models, so `harness_models` (and torch,
  PEFT, ...) are imported only when `--model melora` is used;
- `lm_eval.tasks.manager`: makes `TaskManager` scan the `lm_eval_tasks` directory after lm-eval's own tasks and
  before any `--include_path` (the precedence lm-eval's plugins will have: built-in < plugin < `--include_path`).
  Only when `include_defaults` is true: a `TaskManager(include_defaults=False)` sees exactly what it is given.

It switches itself off, per kind, when the installed lm-eval discovers the entry points itself (its own code names
the entry-point group and calls `entry_points`), and entirely when the environment variable
`MELORA_LM_EVAL_PLUGIN=0`. It never raises: a failure is logged at debug level and lm-eval runs as installed
(`lm_eval --model melora` then fails with lm-eval's own "no model for this name" error).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# Runs at every interpreter start: only `os`, `sys` and `typing` (already loaded by `site`) at import time. Not
# even `logging` or `importlib.abc` (5 ms each): the finder and loader below follow their protocols by duck typing.

MODEL_NAME = "melora"
MODEL_TARGET = "harness_models.melora_lm:MeloraLM"
TASKS_PACKAGE = "lm_eval_tasks"
ENTRY_POINT_GROUPS = {"models": "lm_eval.models", "tasks": "lm_eval.tasks"}
SWITCH_ENV = "MELORA_LM_EVAL_PLUGIN"
PATCH_MARKER = "__melora_plugin__"
# lm-eval modules (relative to the package) where a native entry-point scan would live.
_NATIVE_SCAN_FILES = (
    "__init__.py",
    "__main__.py",
    "evaluator.py",
    "utils.py",
    "api/registry.py",
    "models/__init__.py",
    "tasks/__init__.py",
    "tasks/manager.py",
    "tasks/_index.py",
    "_cli/run.py",
    "_cli/utils.py",
)


def _debug(message: str) -> None:
    import logging

    logging.getLogger(__name__).debug("melora lm-eval plugin: %s", message, exc_info=True)


def enabled() -> bool:
    """False when switched off with `MELORA_LM_EVAL_PLUGIN=0` (or `false`, `no`, `off`)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def native_support(kind: str) -> bool:
    """True when the installed lm-eval discovers `lm_eval.<kind>` entry points itself (`kind`: models, tasks).

    Decided from lm-eval's own source: one of its core modules both names the entry-point group and calls
    `entry_points`. lm-eval 0.4.13 has neither.
    """
    import importlib.util

    group = ENTRY_POINT_GROUPS[kind]
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    for relative in _NATIVE_SCAN_FILES:
        try:
            with open(os.path.join(root, relative), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        if "entry_points" in text and (f'"{group}"' in text or f"'{group}'" in text):
            return True
    return False


def tasks_dir() -> str | None:
    """The directory of the `melora_*` task YAMLs (the `lm_eval_tasks` package), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(TASKS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def register_model(models_module: ModuleType | None = None) -> None:
    """Register `melora` in lm-eval's model registry as a lazy placeholder (no-op if already there)."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def patch_task_manager(manager_module: ModuleType) -> None:
    """Make `TaskManager` index the `melora_*` tasks between lm-eval's own and any `include_path`."""
    import functools
    import inspect

    cls = manager_module.TaskManager
    original = cls.__init__
    if getattr(original, PATCH_MARKER, False):
        return
    signature = inspect.signature(original)
    if "include_path" not in signature.parameters:
        _debug("TaskManager.__init__ has no include_path; the melora tasks are not added")
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        ours = tasks_dir()
        if ours and bound.arguments.get("include_defaults", True):
            bound.arguments["include_path"] = _prepend(ours, bound.arguments.get("include_path"))
        original(*bound.args, **bound.kwargs)

    setattr(__init__, PATCH_MARKER, True)
    cls.__init__ = __init__


def _prepend(path: str, include_path: str | os.PathLike | Sequence | None) -> list:
    if include_path is None:
        rest: list = []
    elif isinstance(include_path, (list, tuple)):
        rest = list(include_path)
    else:
        rest = [include_path]
    return [path] + [p for p in rest if os.path.abspath(os.fspath(p)) != os.path.abspath(path)]


class _AfterLoader:
    """Runs a module with its own loader, then calls `callback(module)`; otherwise behaves as that loader."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # the module keeps its real loader (source, resources)
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception:  # discovery must never break lm-eval itself
            _debug(f"hook for {module.__name__} failed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Hook:
    """A `sys.meta_path` finder that only watches for a few module names; removes itself once all have loaded."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self._callbacks = dict(callbacks)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        callback = self._callbacks.get(fullname)
        if callback is None:
            return None
        del self._callbacks[fullname]
        if not self._callbacks and self in sys.meta_path:  # all seen: stop looking at imports
            sys.meta_path.remove(self)
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterLoader(spec.loader, callback)
                return spec
        return None


def _when_loaded(callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
    pending = {}
    for name, callback in callbacks.items():
        if name in sys.modules:  # already imported (e.g. install() called late): act now
            try:
                callback(sys.modules[name])
            except Exception:
                _debug(f"hook for {name} failed")
        else:
            pending[name] = callback
    if pending and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook(pending))


def _on_models(module: ModuleType) -> None:
    if not native_support("models"):
        register_model(module)


def _on_task_manager(module: ModuleType) -> None:
    if not native_support("tasks"):
        patch_task_manager(module)


def install() -> None:
    """Arrange discovery of the `melora` model and tasks for when lm-eval is imported (called by the `.pth` file)."""
    try:
        if enabled():
            _when_loaded({"lm_eval.models": _on_models, "lm_eval.tasks.manager": _on_task_manager})
    except Exception:  # never break interpreter start
        _debug("install failed")
