"""Me-LoRA: `W0 + s B C A` with `C ~ N(M, (H*H)^2)`; the KL (paper eq. 8) depends on A, M and H."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from melora.methods.base import Method


if TYPE_CHECKING:
    from melora.adapters import MeLoraConfig
    from melora.train_config import TrainConfig


class MeLora(Method):
    name = "melora"
    bayesian = True

    def peft_config(self, cfg: TrainConfig) -> MeLoraConfig:
        from melora.adapters import MeLoraConfig

        extra = {"std_init": cfg.std_init} if cfg.std_init is not None else {}
        return MeLoraConfig(
            **self._lora_kwargs(cfg),
            prior_std=cfg.prior_std,
            prior_noise=cfg.prior_noise,
            kl_variance=cfg.kl_variance,
            **extra,
        )

    def kl_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        keys = (".lora_A.", ".lora_melora_M.", ".lora_melora_H.")
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in keys)]
