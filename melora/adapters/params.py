"""Parameter accounting for LoRA, BLoB and Me-LoRA from a model config alone (the model is built on `meta`).

For each adapted linear `W0: m x n` (out x in) at rank r:

| method  | trainable parameters      | what                                      |
|---------|---------------------------|-------------------------------------------|
| LoRA    | `r (m + n)`               | A `r x n`, B `m x r`                      |
| BLoB    | `r (m + 2n)`              | LoRA + rho, the std factor of A, `r x n`  |
| Me-LoRA | `r (m + n) + 2 r^2`       | LoRA + M and H, both `r x r`              |

Bytes are parameters times 4 (fp32) or 2 (bf16); "MiB" is 2**20 bytes.

Exact counts next to the paper's Table 1 (q and v of every block, Llama-2-7B: 32 layers, d = 4096; Llama-2-13B:
40 layers, d = 5120; the caption says "query and key", which has the same shapes in these models):

| model, r    | LoRA                   | BLoB                    | Me-LoRA                 |
|-------------|------------------------|-------------------------|-------------------------|
| 7B, r = 8   | 4,194,304 (4.19M)      | 6,291,456 (6.29M)       | 4,202,496 (4.20M)       |
| 7B, r = 64  | 33,554,432 (33.55M)    | 50,331,648 (50.33M)     | 34,078,720 (34.08M)     |
| 13B, r = 8  | 6,553,600 (6.55M)      | 9,830,400 (9.83M)       | 6,563,840 (6.56M)       |
| 13B, r = 64 | 52,428,800 (52.43M)    | 78,643,200 (78.64M)     | 53,084,160 (53.08M)     |

Where the paper's printed figures disagree with the exact count (they are not bent here):

- 13B BLoB: the paper prints 9.84M (r = 8) and 78.97M (r = 64); the exact counts are 9.83M and 78.64M.
- The paper's "MB" are MiB computed from the *rounded* parameter counts (e.g. 4.19M x 4 / 2**20 = 15.98): exact fp32
  sizes are 16.00 / 24.00 / 16.03 MiB (7B, r = 8), 128.00 / 192.00 / 130.00 (7B, r = 64), 25.00 / 37.50 / 25.04
  (13B, r = 8) and 200.00 / 300.00 / 202.50 (13B, r = 64) for LoRA / BLoB / Me-LoRA; the paper prints 15.98 / 23.99 /
  16.02, 127.79 (from 33.50M, not its own 33.55M) / 191.99 / 130.00, 24.99 / 37.54 / 25.02 and 200.00 / 301.25 /
  202.48.
- Section 3.4's formula `L (2 d + r) r` counts one `r x r` matrix per layer; Me-LoRA has two (M and H), and the
  paper's own Table 1 numbers (e.g. 34.08M at r = 64) use `L (2 d + 2 r) r`, as here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from melora.errors import MeloraError


METHODS = ("lora", "blob", "melora")
METHOD_LABELS = {"lora": "LoRA", "blob": "BLoB", "melora": "Me-LoRA"}


class ModelConfigError(MeloraError, ValueError):
    """A model config cannot be read or built, or names no module to adapt."""


@dataclass(frozen=True)
class AdaptedLinear:
    """One targeted linear: its module name and shape (`in_features` = n, `out_features` = m)."""

    name: str
    in_features: int
    out_features: int


def trainable_params(method: str, in_features: int, out_features: int, r: int) -> int:
    """Trainable adapter parameters of one `out_features x in_features` linear at rank `r` (see the module table)."""
    if method == "lora":
        return r * (in_features + out_features)
    if method == "blob":
        return r * (2 * in_features + out_features)
    if method == "melora":
        return r * (in_features + out_features) + 2 * r * r
    raise ValueError(f"Expected `method` to be one of {METHODS}, but got {method!r}.")


def load_meta_model(model_config: str | os.PathLike) -> tuple[nn.Module, Any]:
    """Build the causal LM described by a `config.json` (or a local model directory) on the meta device.

    Returns:
        `(model, config)`; the model has shapes but no weights.

    Raises:
        ModelConfigError: the config is missing, unreadable or not a causal LM.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.fspath(model_config)
    if not os.path.exists(path):
        raise ModelConfigError(
            f"Model config '{path}' does not exist (give a config.json or a local model directory)."
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises OSError, ValueError or KeyError for bad configs
        raise ModelConfigError(f"Cannot read the model config '{path}': {e}") from e
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ModelConfigError(
            f"Cannot build a causal LM from '{path}' (model_type {config.model_type!r}): {e}"
        ) from e
    return model, config


def find_target_linears(model: nn.Module, target_modules: Sequence[str]) -> list[AdaptedLinear]:
    """The `nn.Linear` modules PEFT would adapt for `target_modules` (a name equal to, or ending in `.` + a target).

    Raises:
        ModelConfigError: a target matches no linear (the message lists the available linear names).
    """
    found, matched = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for target in target_modules:
            if name == target or name.endswith("." + target):
                found.append(AdaptedLinear(name, module.in_features, module.out_features))
                matched.add(target)
                break
    missing = [t for t in target_modules if t not in matched]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ModelConfigError(f"Target modules {missing} match no linear layer. Available: {', '.join(available)}.")
    return found


def params_table(linears: Sequence[AdaptedLinear], rank: int) -> dict[str, Any]:
    """Trainable parameters and bytes of each method for `linears` at rank `rank`.

    Returns:
        `{"rank", "methods": {method: {"params", "bytes_fp32", "bytes_bf16"}}, "melora_over_blob",
        "melora_over_lora"}` (ratios of parameter counts).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ModelConfigError(f"Expected `rank` to be a positive int, but got {rank!r}.")
    methods = {}
    for method in METHODS:
        n = sum(trainable_params(method, lin.in_features, lin.out_features, rank) for lin in linears)
        methods[method] = {"params": n, "bytes_fp32": 4 * n, "bytes_bf16": 2 * n}
    melora = methods["melora"]["params"]
    return {
        "rank": rank,
        "methods": methods,
        "melora_over_blob": melora / methods["blob"]["params"] if linears else None,
        "melora_over_lora": melora / methods["lora"]["params"] if linears else None,
    }


def count_adapter_params(
    model_config: str | os.PathLike, ranks: Sequence[int], target_modules: Sequence[str]
) -> dict[str, Any]:
    """The full report of `melora params`: model summary, adapted linears and one table per rank.

    Args:
        model_config (`str` or `os.PathLike`): a `config.json` or a local model directory.
        ranks (`Sequence[int]`): LoRA ranks.
        target_modules (`Sequence[str]`): module names to adapt, as in `LoraConfig.target_modules`.

    Returns:
        A JSON-ready dict.
    """
    model, config = load_meta_model(model_config)
    linears = find_target_linears(model, target_modules)
    return {
        "model_config": os.fspath(model_config),
        "model_type": config.model_type,
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "target_modules": list(target_modules),
        "adapted_linears": len(linears),
        "rows": [params_table(linears, r) for r in ranks],
    }
