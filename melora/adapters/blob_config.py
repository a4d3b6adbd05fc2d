"""`BlobConfig`: the configuration of a BLoB adapter (the paper's main baseline), used like `peft.LoraConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from melora.adapters.base import BayesianLoraConfig


@dataclass
class BlobConfig(BayesianLoraConfig):
    """Configuration of a BLoB adapter (Wang et al., 2024): A is Bayesian, `A ~ N(mu, (rho^2)^2)` elementwise.

    The mean `mu` is the usual `lora_A` weight (LoRA's init); the std of A is `sigma = rho^2`, with `rho` an extra
    trainable matrix the size of A (`lora_blob_rho`); B is deterministic (LoRA's init, B = 0). Every
    `peft.LoraConfig` field keeps its meaning; only `nn.Linear` targets are supported.

    Sampling differs from BLoB's code on purpose: instead of Flipout with per-token sign flips around one shared noise
    matrix, each sequence gets an exact, independent sample of A (`batch * r * n` random numbers per layer), so that
    "one weight sample per sequence" holds for BLoB as for Me-LoRA and seeded samples are reproducible per row.

    Args:
        use_blob (`bool`):
            Marks the adapter as BLoB (PEFT's LoRA-variant switch, and how `melora.adapter_kind` recognises a saved
            adapter). Must stay True.
        prior_std (`float`):
            `beta`, the std of the Gaussian prior `N(0, beta^2)` on A in the KL term. Default 0.2 (BLoB's
            `--bayes-beta`, and the paper's sigma_p).
        rho_init (`float`):
            `eps` of BLoB's init: `rho ~ U(eps / sqrt(2), eps)`, so the std `rho^2` starts in `[eps^2 / 2, eps^2]`.
            Default 0.05 (BLoB's `--bayes-eps`); BLoB's softplus parametrisation (negative eps) is not offered.
    """

    kind: ClassVar[str] = "blob"
    variant_field: ClassVar[str] = "use_blob"

    use_blob: bool = field(
        default=True,
        metadata={
            "help": "Marks the adapter as BLoB (the LoRA-variant switch). Must be True.",
            "is_lora_variant": True,
        },
    )
    prior_std: float = field(
        default=0.2, metadata={"help": "beta, std of the Gaussian prior on A in the KL term (BLoB's --bayes-beta)."}
    )
    rho_init: float = field(
        default=0.05,
        metadata={"help": "eps of the init rho ~ U(eps / sqrt(2), eps); the std of A is rho^2 (BLoB's --bayes-eps)."},
    )

    def _layer_class(self) -> type[nn.Module]:
        from melora.adapters.blob_layer import BlobLinear

        return BlobLinear

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prior_std > 0:
            raise ValueError(f"`prior_std` must be positive, got {self.prior_std}.")
        if not self.rho_init > 0:
            raise ValueError(f"`rho_init` must be positive, got {self.rho_init}.")
