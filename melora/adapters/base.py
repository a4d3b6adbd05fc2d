"""What Me-LoRA and BLoB layers share: the Bayesian LoRA-variant interface and the config plumbing.

Both methods plug into PEFT 0.21.2 through its LoRA-variant hooks (`peft.tuners.lora.layer.LoraVariant`): a
`LoraConfig` subclass carries a field tagged `"is_lora_variant": True` (`use_melora`, `use_blob`), a `lora.Linear`
subclass lists that field in its `lora_variants` map, and the config registers the subclass for `nn.Linear` targets
with `LoraConfig._register_custom_module`. `peft.get_peft_model(model, MeLoraConfig(...))` then builds our layers, and
PEFT's own save, load, merge, adapter switching and `requires_grad` handling keep working, because every new parameter
sits in a per-adapter `ParameterDict` whose name starts with `lora_` and is listed in `adapter_layer_names`.

`BayesianLinearVariant` is the contract the rest of the package relies on:

- `noise_shape` tells `melora.adapters.sampling` how many standard-normal numbers one posterior sample of the adapter
  needs (per sequence), so seeded samples can be drawn for the whole model at once;
- `kl` returns the adapter's KL term (summed by `melora.adapters.kl.kl_divergence`); `kl_tensors` and
  `kl_and_grads` give the same term with its gradients in closed form, over stacked layers (what training uses);
- `delta_weight` is the posterior-mean weight update, which `merge`/`merge_and_unload` fold into `W0`.

Merging a stochastic adapter means merging its posterior mean: the merged model is deterministic and equals the
adapter's `mean` sampling mode, never a posterior sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraVariant


if TYPE_CHECKING:
    from peft.tuners.lora.layer import Linear as LoraLinear
    from torch import nn


# Attribute on each layer mapping adapter name -> the config it was built from (prior, KL form).
CONFIG_ATTR = "melora_adapter_config"


class BayesianLinearVariant(LoraVariant):
    """A LoRA variant with a posterior over (part of) its weights.

    Subclasses implement the static methods `init`, `forward`, `delta_weight`, `noise_shape` and `kl`; merging is
    shared and always uses the posterior mean (`delta_weight`).
    """

    def supports_lora_conversion(self) -> bool:
        """A Bayesian adapter is not a plain LoRA: converting it would drop its posterior."""
        return False

    @staticmethod
    def delta_weight(module: LoraLinear, adapter_name: str) -> torch.Tensor:
        """Posterior-mean weight update of `adapter_name`, shaped like the base weight."""
        raise NotImplementedError

    @staticmethod
    def noise_shape(module: LoraLinear, adapter_name: str) -> tuple[int, ...]:
        """Shape of the standard-normal noise that one posterior sample (one sequence) of the adapter needs."""
        raise NotImplementedError

    @staticmethod
    def kl(module: LoraLinear, adapter_name: str, noise: float) -> torch.Tensor:
        """KL term of `adapter_name` in this layer (float32 or wider); `noise` is the prior-std noise of this call."""
        raise NotImplementedError

    @staticmethod
    def kl_tensors(module: LoraLinear, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """The parameters this layer's KL depends on, in the order `kl_and_grads` takes them."""
        raise NotImplementedError

    @staticmethod
    def kl_and_grads(
        stacked: list[torch.Tensor], config: LoraConfig, noise: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Sum of `kl` over layers whose `kl_tensors` are stacked along dim 0, and its gradient for each stack."""
        raise NotImplementedError

    @classmethod
    def merge_safe(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        """Return `orig_weight` plus the posterior-mean update, as a new tensor."""
        return orig_weight + cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        """Add the posterior-mean update to `orig_weight` in place."""
        orig_weight.data += cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module: LoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        """Return `orig_weight` minus the posterior-mean update."""
        return orig_weight - cls.delta_weight(module, active_adapter).to(orig_weight.dtype)


def add_adapter_parameter(module: nn.Module, dict_name: str, adapter_name: str, value: torch.Tensor) -> None:
    """Store `value` as trainable parameter `module.<dict_name>[adapter_name]`, creating the dict on first use.

    The dict's name is appended to the instance's `adapter_layer_names`, so PEFT saves, loads, casts, moves and sets
    `requires_grad` on it like on `lora_A`/`lora_B`. Names must start with `lora_` (PEFT's trainable prefix) and be
    flat (`lora_melora_M`, not a nested module), as PEFT re-inserts the adapter name after the last `lora_`.
    """
    if not hasattr(module, dict_name):
        module.adapter_layer_names = tuple(module.adapter_layer_names) + (dict_name,)
        setattr(module, dict_name, torch.nn.ParameterDict())
    getattr(module, dict_name)[adapter_name] = torch.nn.Parameter(value)


def remember_config(module: nn.Module, adapter_name: str, config: LoraConfig) -> None:
    """Keep the adapter's config on the layer, for its KL term (prior std, KL form)."""
    if not hasattr(module, CONFIG_ATTR):
        setattr(module, CONFIG_ATTR, {})
    getattr(module, CONFIG_ATTR)[adapter_name] = config


@dataclass
class BayesianLoraConfig(LoraConfig):
    """Shared behaviour of the Bayesian configs (no fields of its own).

    - registers the method's `lora.Linear` subclass for `nn.Linear` targets after every construction (PEFT does not
      serialise that registration, so it is redone when a config is loaded);
    - `from_peft_type` builds this class instead of `LoraConfig` (the saved `peft_type` is `"LORA"`, which PEFT would
      map back to a plain `LoraConfig`, dropping the Bayesian fields with only a warning).
    """

    kind: ClassVar[str] = ""
    variant_field: ClassVar[str] = ""

    def _layer_class(self) -> type[nn.Module]:
        raise NotImplementedError

    def __post_init__(self) -> None:
        super().__post_init__()
        if not getattr(self, self.variant_field):
            raise ValueError(
                f"`{self.variant_field}` must be True for {type(self).__name__}, got "
                f"{getattr(self, self.variant_field)!r}; use `peft.LoraConfig` for a plain LoRA adapter."
            )
        if self.use_dora:
            raise ValueError(f"`use_dora` cannot be combined with {type(self).__name__}, got use_dora=True.")
        self._register_custom_module({torch.nn.Linear: self._layer_class()})

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> BayesianLoraConfig:
        """Build this config class from saved keyword arguments (`peft_type` must be LORA)."""
        peft_type = str(kwargs.pop("peft_type", "LORA"))
        if peft_type.rsplit(".", 1)[-1].upper() != "LORA":
            raise ValueError(f"`peft_type` must be 'LORA' for {cls.__name__}, got {peft_type!r}.")
        return cls(**kwargs)
