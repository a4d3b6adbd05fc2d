"""Training methods: Me-LoRA and the paper's baselines, one small module each plus an entry here.

A method says which adapter to build, whether it has a KL term (and over which parameters), its weight decay, and
how it is evaluated (posterior samples, MC dropout, ensemble members). The training loop (`melora.training`) is the
same for all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from melora.errors import MeloraError


if TYPE_CHECKING:
    from melora.methods.base import Method

METHODS: dict[str, str] = {
    "melora": "melora.methods.melora:MeLora",
    "blob": "melora.methods.blob:Blob",
    "map": "melora.methods.map:Map",
    "mle": "melora.methods.mle:Mle",
    "mcd": "melora.methods.mcd:McDropout",
    "ens": "melora.methods.ens:Ensemble",
}


def get_method(name: str) -> Method:
    """The method registered under `name`.

    Raises:
        MeloraError: unknown method, naming the available ones.
    """
    if name not in METHODS:
        raise MeloraError(f"Unknown method {name!r}. Available: {', '.join(METHODS)}.")
    module_name, _, class_name = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
