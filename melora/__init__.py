"""Me-LoRA: memory-efficient Bayesian LoRA, its baselines, and the protocol they are trained and evaluated on.

Public names are imported lazily (`melora.MeLoraConfig` imports PEFT on first use), so `import melora`
and the `melora` console script start fast.
"""

from __future__ import annotations

from melora.lazy import lazy_exports


__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access.
_LAZY: dict[str, str] = {
    "load_split": "melora.data",
    "TASKS": "melora.protocol",
    "get_task": "melora.protocol",
    "default_model_path": "melora.embedded_model",
    "prepare_model": "melora.embedded_model",
    "MeLoraConfig": "melora.adapters.melora_config",
    "BlobConfig": "melora.adapters.blob_config",
    "load_adapter": "melora.adapters.loader",
    "adapter_kind": "melora.adapters.loader",
    "sampling": "melora.adapters.sampling",
    "set_sampling_mode": "melora.adapters.sampling",
    "sample_seeds": "melora.adapters.sampling",
    "expand_for_samples": "melora.adapters.sampling",
    "kl_divergence": "melora.adapters.kl",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
