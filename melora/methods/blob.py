"""BLoB: A Bayesian (`N(mean, (rho^2)^2)`), B deterministic; its KL depends on A's mean and rho."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from melora.methods.base import Method


if TYPE_CHECKING:
    from melora.adapters import BlobConfig
    from melora.train_config import TrainConfig


class Blob(Method):
    name = "blob"
    bayesian = True

    def peft_config(self, cfg: TrainConfig) -> BlobConfig:
        from melora.adapters import BlobConfig

        # --std-init sets BLoB's rho range (its --bayes-eps): rho ~ U(eps / sqrt 2, eps), std = rho^2
        extra = {"rho_init": cfg.std_init} if cfg.std_init is not None else {}
        return BlobConfig(**self._lora_kwargs(cfg), prior_std=cfg.prior_std, **extra)

    def kl_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        keys = (".lora_A.", ".lora_blob_rho.")
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in keys)]
