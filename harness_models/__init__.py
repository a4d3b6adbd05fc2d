"""Thin lm-eval model adapters over `melora`: the `melora` lm-eval model (`harness_models.melora_lm.MeloraLM`).

lm-eval finds the model by name (`lm_eval --model melora`), through the `lm_eval.models` entry point or, with lm-eval
0.4.13, `melora/lm_eval_plugin.py`. Names here are imported lazily: `import harness_models` imports neither lm-eval
nor torch.
"""

from __future__ import annotations

from melora.lazy import lazy_exports


_LAZY: dict[str, str] = {
    "AdapterSet": "harness_models.adapter_set",
    "MeloraLM": "harness_models.melora_lm",
    "doc_seed": "harness_models.melora_lm",
    "resolve_adapter": "harness_models.adapter_set",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
