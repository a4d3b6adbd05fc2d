"""What a training method is: the adapter it builds and the parts of the objective it adds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn


if TYPE_CHECKING:
    from peft import LoraConfig

    from melora.train_config import TrainConfig


class Method:
    """A training method. Subclasses set the class attributes and build their PEFT config.

    Attributes:
        name: the `--method` value.
        bayesian: the adapter has a posterior (Me-LoRA, BLoB): a KL term trained by the second optimiser, and
            posterior samples at validation.
        weight_decay: default AdamW weight decay (`--weight-decay` overrides it).
        mc_dropout: evaluated with LoRA dropout kept active (`--eval-samples` passes).
        ensemble: trains `--ensemble-size` independent members.
    """

    name: str = ""
    bayesian: bool = False
    weight_decay: float = 0.0
    mc_dropout: bool = False
    ensemble: bool = False

    def peft_config(self, cfg: TrainConfig) -> LoraConfig:
        """The adapter config for this run (LoRA by default)."""
        from peft import LoraConfig

        return LoraConfig(**self._lora_kwargs(cfg))

    @staticmethod
    def _lora_kwargs(cfg: TrainConfig) -> dict:
        return {
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout,
            "target_modules": list(cfg.target_modules),
            "task_type": "CAUSAL_LM",
        }

    def kl_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the KL term depends on: what the KL optimiser (SGD) updates. None by default."""
        return []
