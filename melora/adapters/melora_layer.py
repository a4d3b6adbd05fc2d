"""The Me-LoRA layer: `W0 + s * B C A` with a random `r x r` matrix `C ~ N(M, Omega^2)`, `Omega = H * H`.

Forward of one batch `x` of shape `(batch, ..., n)`:

```
h = A(dropout(x))                  # (batch, ..., r)
sample: C_b = M + Omega * eps_b    # (batch, r, r), eps_b ~ N(0, I): one C per sequence, shared by its tokens
        h = h @ C_b^T  per row     # (batch, ..., r)
mean:   h = h @ M^T
out = W0 x + s * B(h)
```

A per-sequence sample costs only `batch * r^2` random numbers per layer, so no Flipout-style trick is needed. The
noise comes from `melora.adapters.sampling` (global RNG, or per-row seeds). Merging folds the posterior mean
`s * B M A` into `W0` (`merge_and_unload()` gives a plain transformers model equal to the `mean` mode).

Init: `M = I`, so with LoRA's `B = 0` the adapter starts as a no-op exactly like LoRA, and as soon as B moves, M and H
receive gradient (with `M = 0` neither B nor M would ever get one). `H = sqrt(Omega)`, `Omega ~ U(std_init/sqrt 2,
std_init)` (see `MeLoraConfig.std_init`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose

from melora.adapters.base import CONFIG_ATTR, BayesianLinearVariant, add_adapter_parameter, remember_config
from melora.adapters.kl import melora_kl, melora_kl_and_grads
from melora.adapters.sampling import draw_noise


if TYPE_CHECKING:
    from melora.adapters.melora_config import MeLoraConfig

MEAN_NAME = "lora_melora_M"
STD_FACTOR_NAME = "lora_melora_H"


def melora_sample_c(mean: torch.Tensor, std_factor: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Posterior samples of C by reparametrisation: `C = M + (H * H) * eps`.

    Args:
        mean (`torch.Tensor`): `M`, `(r, r)`.
        std_factor (`torch.Tensor`): `H`, `(r, r)`.
        noise (`torch.Tensor`): `eps ~ N(0, 1)`, `(batch, r, r)`.

    Returns:
        `(batch, r, r)`, one C per row.
    """
    return mean + (std_factor * std_factor) * noise


def melora_apply_c(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Multiply the rank-r activations by `C^T`: `h @ C^T`, with one `C` per batch row when `c` is 3-D.

    Args:
        h (`torch.Tensor`): `A x`, `(batch, ..., r)`.
        c (`torch.Tensor`): `(r, r)` (shared) or `(batch, r, r)` (per row).

    Returns:
        `(batch, ..., r)`.
    """
    if c.dim() == 2:
        return h @ c.T
    rows = h.reshape(h.shape[0], -1, h.shape[-1])  # (batch, L, r)
    return torch.bmm(rows, c.transpose(1, 2)).reshape(h.shape)  # (batch, ..., r)


def melora_delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, mean: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Posterior-mean weight update `s * B M A`, `(m, n)`."""
    return (lora_b @ mean @ lora_a) * scaling


class MeLoraLinearVariant(BayesianLinearVariant):
    """Me-LoRA as a PEFT LoRA variant of `nn.Linear` (parameters `lora_melora_M`, `lora_melora_H`)."""

    @staticmethod
    def init(module: LoraLinear, adapter_name: str, config: MeLoraConfig, **kwargs: Any) -> None:
        """Create `M = I` and `H = sqrt(U(std_init/sqrt 2, std_init))` for `adapter_name` (meta device allowed)."""
        weight = module.lora_A[adapter_name].weight
        r = module.r[adapter_name]
        mean = torch.eye(r, device=weight.device, dtype=weight.dtype)
        omega = torch.empty(r, r, device=weight.device, dtype=weight.dtype)
        if weight.device.type != "meta":
            omega.uniform_(config.std_init / math.sqrt(2.0), config.std_init)
        add_adapter_parameter(module, MEAN_NAME, adapter_name, mean)
        add_adapter_parameter(module, STD_FACTOR_NAME, adapter_name, omega.sqrt())
        remember_config(module, adapter_name, config)

    @staticmethod
    def delta_weight(module: LoraLinear, adapter_name: str) -> torch.Tensor:
        """`s * B M A`, transposed for `fan_in_fan_out` layers, in float32 or wider."""
        dtype = torch.promote_types(module.lora_A[adapter_name].weight.dtype, torch.float32)
        delta = melora_delta_weight(
            module.lora_A[adapter_name].weight.to(dtype),
            module.lora_B[adapter_name].weight.to(dtype),
            getattr(module, MEAN_NAME)[adapter_name].to(dtype),
            module.scaling[adapter_name],
        )
        return transpose(delta, module.fan_in_fan_out)

    @staticmethod
    def noise_shape(module: LoraLinear, adapter_name: str) -> tuple[int, ...]:
        """One `r x r` standard-normal matrix per sequence."""
        r = module.r[adapter_name]
        return (r, r)

    @staticmethod
    def kl(module: LoraLinear, adapter_name: str, noise: float) -> torch.Tensor:
        """Paper eq. 8 (eq. 7 if the adapter's `prior_noise` is off) for this layer, see `melora_kl`."""
        config = getattr(module, CONFIG_ATTR)[adapter_name]
        return melora_kl(
            getattr(module, MEAN_NAME)[adapter_name],
            getattr(module, STD_FACTOR_NAME)[adapter_name],
            module.lora_A[adapter_name].weight,
            prior_std=config.prior_std,
            noise=noise if config.prior_noise else 0.0,
            variance=config.kl_variance,
        )

    @staticmethod
    def kl_tensors(module: LoraLinear, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """`(M, H, A)`."""
        return (
            getattr(module, MEAN_NAME)[adapter_name],
            getattr(module, STD_FACTOR_NAME)[adapter_name],
            module.lora_A[adapter_name].weight,
        )

    @staticmethod
    def kl_and_grads(
        stacked: list[torch.Tensor], config: MeLoraConfig, noise: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`melora_kl_and_grads` over stacked `(M, H, A)`."""
        return melora_kl_and_grads(
            *stacked,
            prior_std=config.prior_std,
            noise=noise if config.prior_noise else 0.0,
            variance=config.kl_variance,
        )

    @staticmethod
    def forward(
        module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """`result + s * B(A(dropout(x)) @ C^T)`, C sampled per row or `C = M` (see the module docstring)."""
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))  # (batch, ..., r)
        mean = getattr(module, MEAN_NAME)[active_adapter]  # (r, r)
        noise = draw_noise(module, active_adapter, h.shape[0], tuple(mean.shape), mean)  # (batch, r, r) or None
        if noise is None:
            h = h @ mean.T
        else:
            c = melora_sample_c(mean, getattr(module, STD_FACTOR_NAME)[active_adapter], noise)  # (batch, r, r)
            h = melora_apply_c(h, c)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]


class MeLoraLinear(LoraLinear):
    """A PEFT `lora.Linear` that also knows the Me-LoRA variant (built for `MeLoraConfig` targets)."""

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type | None]:
        variants = dict(super().lora_variants)
        variants[("use_melora",)] = MeLoraLinearVariant
        return variants
