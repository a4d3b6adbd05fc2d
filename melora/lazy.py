"""Lazy re-exports for package `__init__` files: names resolve to their defining module on first access.

A package lists `name -> module` and gets its module-level `__getattr__` and `__dir__` from `lazy_exports`, so
importing the package (and starting the `melora` console script) imports nothing heavy (torch, PEFT, lm-eval).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: Mapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module `__getattr__` and `__dir__` functions serving `names` (`name -> defining module`) of `package`.

    Example:
        >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"}, {})
        >>> getattr_("sqrt")(4.0)
        2.0
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
