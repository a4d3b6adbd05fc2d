"""The BLoB layer: `W0 + s * B A` with a Bayesian `A ~ N(mu, sigma^2)`, `sigma = rho^2`, sampled exactly per sequence.

Forward of one batch `x` of shape `(batch, ..., n)`:

```
x = dropout(x)
sample: A_b = mu + sigma * eps_b   # (batch, r, n), eps_b ~ N(0, I): one A per sequence, shared by its tokens
        h = x @ A_b^T  per row     # (batch, ..., r)
mean:   h = x @ mu^T               # LoRA's path
out = W0 x + s * B(h)
```

This is an exact sample of A per sequence, not BLoB's Flipout (one noise matrix shared by the batch, decorrelated per
token by random sign flips): it costs `batch * r * n` random numbers and one batched matmul of the same size as the
mean path, and gives every sequence, hence every seeded row, its own weight sample. Merging folds the mean `s * B mu`
into `W0`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from melora.adapters.base import CONFIG_ATTR, BayesianLinearVariant, add_adapter_parameter, remember_config
from melora.adapters.kl import blob_kl, blob_kl_and_grads
from melora.adapters.sampling import draw_noise


if TYPE_CHECKING:
    from melora.adapters.blob_config import BlobConfig

RHO_NAME = "lora_blob_rho"


def blob_sample_a(mean: torch.Tensor, rho: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Posterior samples of A by reparametrisation: `A = mu + rho^2 * eps`.

    Args:
        mean (`torch.Tensor`): `mu`, `(r, n)`.
        rho (`torch.Tensor`): `rho`, `(r, n)`; the std is `rho^2`.
        noise (`torch.Tensor`): `eps ~ N(0, 1)`, `(batch, r, n)`.

    Returns:
        `(batch, r, n)`, one A per row.
    """
    return mean + rho.square() * noise


def blob_apply_a(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """`x @ A_b^T` with one `A_b` per batch row: `x` `(batch, ..., n)`, `a` `(batch, r, n)` -> `(batch, ..., r)`."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, L, n)
    return torch.bmm(rows, a.transpose(1, 2)).reshape(*x.shape[:-1], a.shape[1])  # (batch, ..., r)


class BlobLinearVariant(BayesianLinearVariant):
    """BLoB as a PEFT LoRA variant of `nn.Linear` (extra parameter `lora_blob_rho`; the mean of A is `lora_A`)."""

    @staticmethod
    def init(module: LoraLinear, adapter_name: str, config: BlobConfig, **kwargs: Any) -> None:
        """Create `rho ~ U(rho_init / sqrt 2, rho_init)`, shaped like A, for `adapter_name` (meta device allowed)."""
        weight = module.lora_A[adapter_name].weight
        rho = torch.empty_like(weight)
        if weight.device.type != "meta":
            rho.uniform_(config.rho_init / math.sqrt(2.0), config.rho_init)
        add_adapter_parameter(module, RHO_NAME, adapter_name, rho)
        remember_config(module, adapter_name, config)

    @staticmethod
    def delta_weight(module: LoraLinear, adapter_name: str) -> torch.Tensor:
        """`s * B mu`: the LoRA update at the mean of A."""
        return module.get_delta_weight(adapter_name)

    @staticmethod
    def noise_shape(module: LoraLinear, adapter_name: str) -> tuple[int, ...]:
        """One `r x n` standard-normal matrix per sequence."""
        return tuple(module.lora_A[adapter_name].weight.shape)

    @staticmethod
    def kl(module: LoraLinear, adapter_name: str, noise: float) -> torch.Tensor:
        """BLoB's KL of A for this layer (float64), see `blob_kl`; BLoB has no prior noise."""
        config = getattr(module, CONFIG_ATTR)[adapter_name]
        rho = getattr(module, RHO_NAME)[adapter_name]
        return blob_kl(module.lora_A[adapter_name].weight, rho.square(), prior_std=config.prior_std)

    @staticmethod
    def kl_tensors(module: LoraLinear, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """`(mu, rho)`: the mean of A (`lora_A`) and its std factor."""
        return module.lora_A[adapter_name].weight, getattr(module, RHO_NAME)[adapter_name]

    @staticmethod
    def kl_and_grads(
        stacked: list[torch.Tensor], config: BlobConfig, noise: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`blob_kl_and_grads` over stacked `(mu, rho)`; BLoB has no prior noise."""
        return blob_kl_and_grads(*stacked, prior_std=config.prior_std)

    @staticmethod
    def forward(
        module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """`result + s * B(x @ A^T)`, A sampled per row or `A = mu` (see the module docstring)."""
        lora_a = module.lora_A[active_adapter]
        x = module.lora_dropout[active_adapter](x)
        noise = draw_noise(module, active_adapter, x.shape[0], tuple(lora_a.weight.shape), lora_a.weight)
        if noise is None:
            h = lora_a(x)  # (batch, ..., r)
        else:
            a = blob_sample_a(lora_a.weight, getattr(module, RHO_NAME)[active_adapter], noise)  # (batch, r, n)
            h = blob_apply_a(x, a)  # (batch, ..., r)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]


class BlobLinear(LoraLinear):
    """A PEFT `lora.Linear` that also knows the BLoB variant (built for `BlobConfig` targets)."""

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type | None]:
        variants = dict(super().lora_variants)
        variants[("use_blob",)] = BlobLinearVariant
        return variants
