"""Bayesian LoRA adapters as PEFT LoRA variants: Me-LoRA (the paper's method) and BLoB (its main baseline).

Use them like `peft.LoraConfig`:

```py
import peft
from melora import MeLoraConfig, kl_divergence, sampling

model = peft.get_peft_model(base, MeLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
loss = model(**batch).loss + kl_weight * kl_divergence(model)  # training: one posterior sample per sequence
with sampling(model, "sample", seeds=row_seeds):  # evaluation: reproducible per-row samples
    logits = model(**batch).logits
model.save_pretrained("adapter")
model = melora.load_adapter(fresh_base, "adapter")  # never `PeftModel.from_pretrained` (it drops C silently)
```

One concept per module: `melora_config`/`melora_layer` (Me-LoRA), `blob_config`/`blob_layer` (BLoB), `base` (the
shared variant interface), `sampling` (mode and seeds), `kl` (KL terms), `loader` (kinds, load with checks) and
`params` (parameter accounting). Names are imported lazily, so importing the package does not import PEFT.
"""

from __future__ import annotations

from melora.lazy import lazy_exports


_LAZY: dict[str, str] = {
    "ADAPTER_KINDS": "melora.adapters.loader",
    "BlobConfig": "melora.adapters.blob_config",
    "BlobLinear": "melora.adapters.blob_layer",
    "MeLoraConfig": "melora.adapters.melora_config",
    "MeLoraLinear": "melora.adapters.melora_layer",
    "SamplingState": "melora.adapters.sampling",
    "adapter_kind": "melora.adapters.loader",
    "blob_kl": "melora.adapters.kl",
    "count_adapter_params": "melora.adapters.params",
    "expand_for_samples": "melora.adapters.sampling",
    "kl_divergence": "melora.adapters.kl",
    "load_adapter": "melora.adapters.loader",
    "melora_kl": "melora.adapters.kl",
    "row_seed": "melora.adapters.sampling",
    "sample_seeds": "melora.adapters.sampling",
    "set_sampling_mode": "melora.adapters.sampling",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
