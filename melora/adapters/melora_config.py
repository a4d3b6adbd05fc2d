"""`MeLoraConfig`: the configuration of a Me-LoRA adapter, used exactly like `peft.LoraConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from melora.adapters.base import BayesianLoraConfig
from melora.adapters.kl import KL_VARIANCES


@dataclass
class MeLoraConfig(BayesianLoraConfig):
    """Configuration of a Me-LoRA adapter: `W = W0 + (lora_alpha / r) * B C A` with `C ~ N(M, (H*H)^2)` elementwise.

    Every `peft.LoraConfig` field keeps its meaning (`r`, `lora_alpha`, `target_modules`, `lora_dropout`, ...);
    `peft.get_peft_model(model, MeLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))` turns each
    targeted `nn.Linear` into a `MeLoraLinear`. A and B are deterministic and initialised as in LoRA (B = 0); `M` and
    `H` are `r x r` trainable matrices. Only `nn.Linear` targets are supported.

    Args:
        use_melora (`bool`):
            Marks the adapter as Me-LoRA (PEFT's LoRA-variant switch, and how `melora.adapter_kind` recognises a saved
            adapter). Must stay True.
        prior_std (`float`):
            `sigma_p`, the std of the Gaussian prior in the KL term (paper eq. 7-8). Default 0.2, the paper's value
            (Table 7, as BLoB's `--bayes-beta`). Larger values weaken the pull of `M A` towards 0.
        prior_noise (`bool`):
            Add `eps ~ U(0, 1)`, redrawn at every KL evaluation, to `sigma_p` (paper eq. 8, section 3.3). The paper
            reports this regularises against overfitting; False gives eq. 7, the "w/o noise" ablation (Appendix B.3).
        kl_variance (`str`):
            Variance term of the KL. `"paper"`: `||Omega |A| ||_F^2` as printed in eq. 7-8, an upper bound of the
            variance of `C A`. `"exact"`: `sum((Omega**2) @ (A**2))`, the exact total variance of `C A` under the
            elementwise-independent `C`. Default `"paper"`, to reproduce the paper.
        std_init (`float`):
            Initial scale of `Omega = H * H`, the std of `C`: `Omega ~ U(std_init / sqrt(2), std_init)` entrywise and
            `H = sqrt(Omega)` (positive). The paper does not give an init; this mirrors BLoB's `rho ~ U(eps/sqrt 2,
            eps)` range with `eps = 0.05`, but applied to the std itself, because `C` starts at `M = I` (entries of
            order 1) whereas BLoB's A has entries of order `1/sqrt(n)`. With `r = 8` the relative noise of the
            effective matrix `Q = C A` is then about `Omega sqrt(r) ~= 0.12`, between BLoB's initial relative noise
            on A for Llama-2-7B (`~0.2`, n = 4096) and SmolLM2-135M (`~0.08`, n = 576). Default 0.05.
    """

    kind: ClassVar[str] = "melora"
    variant_field: ClassVar[str] = "use_melora"

    use_melora: bool = field(
        default=True,
        metadata={
            "help": "Marks the adapter as Me-LoRA (the LoRA-variant switch). Must be True.",
            "is_lora_variant": True,
        },
    )
    prior_std: float = field(
        default=0.2, metadata={"help": "sigma_p, std of the Gaussian prior in the KL term (paper eq. 7-8, Table 7)."}
    )
    prior_noise: bool = field(
        default=True,
        metadata={"help": "Add eps ~ U(0, 1), redrawn per KL evaluation, to sigma_p (eq. 8); False gives eq. 7."},
    )
    kl_variance: str = field(
        default="paper",
        metadata={"help": "KL variance term: 'paper' (||Omega |A| ||_F^2, eq. 8) or 'exact' (sum(Omega^2 @ A^2))."},
    )
    std_init: float = field(
        default=0.05,
        metadata={"help": "Initial std of C: Omega = H*H ~ U(std_init / sqrt(2), std_init) entrywise."},
    )

    def _layer_class(self) -> type[nn.Module]:
        from melora.adapters.melora_layer import MeLoraLinear

        return MeLoraLinear

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prior_std > 0:
            raise ValueError(f"`prior_std` must be positive, got {self.prior_std}.")
        if self.kl_variance not in KL_VARIANCES:
            raise ValueError(f"`kl_variance` must be one of {KL_VARIANCES}, got {self.kl_variance!r}.")
        if not self.std_init > 0:
            raise ValueError(f"`std_init` must be positive, got {self.std_init}.")
