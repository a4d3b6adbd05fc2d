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


class BlobSampledProduct(torch.autograd.Function):
    """`x @ A_b^T` per row with `A_b = mu + rho^2 * eps_b`, without keeping the sampled `A_b` for the backward.

    Autograd would keep every layer's `(batch, r, n)` sample until the backward reaches it; here the backward
    recomputes it from `mu`, `rho` and the noise (which the sampling state holds anyway), so BLoB's extra activation
    memory is the noise alone. Same numbers as `blob_apply_a(x, blob_sample_a(mu, rho, eps))`.

    Backward, with `G = dL/dy` per row: `dL/dx = G A_b`, `dL/dA_b = G_b^T x_b`, `dL/dmu = sum_b dL/dA_b`,
    `dL/drho = 2 rho * sum_b (dL/dA_b * eps_b)`.
    """

    @staticmethod
    def forward(x: torch.Tensor, mean: torch.Tensor, rho: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`x` `(batch, ..., n)`, `mean`/`rho` `(r, n)`, `noise` `(batch, r, n)` -> `(batch, ..., r)`."""
        return blob_apply_a(x, blob_sample_a(mean, rho, noise))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, rho, noise = ctx.saved_tensors
        need_x, need_mean, need_rho = ctx.needs_input_grad[:3]
        rows = grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1])  # (batch, L, r)
        grad_x = grad_mean = grad_rho = None
        if need_x:
            grad_x = torch.bmm(rows, blob_sample_a(mean, rho, noise)).reshape(x.shape)  # (batch, ..., n)
        if need_mean or need_rho:
            grad_a = torch.bmm(rows.transpose(1, 2), x.reshape(x.shape[0], -1, x.shape[-1]))  # (batch, r, n)
            if need_mean:
                grad_mean = grad_a.sum(0)
            if need_rho:
                grad_rho = 2.0 * rho * (grad_a * noise).sum(0)
        return grad_x, grad_mean, grad_rho, None


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
            h = BlobSampledProduct.apply(x, lora_a.weight, getattr(module, RHO_NAME)[active_adapter], noise)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]


class BlobLinear(LoraLinear):
    """A PEFT `lora.Linear` that also knows the BLoB variant (built for `BlobConfig` targets)."""

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type | None]:
        variants = dict(super().lora_variants)
        variants[("use_blob",)] = BlobLinearVariant
        return variants
