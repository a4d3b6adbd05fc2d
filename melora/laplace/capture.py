"""Hooks on the LoRA linears of a PEFT model: their inputs and the gradients at their outputs.

A LoRA layer computes `h = W0 x + s * B(A(dropout(x)))` with `A = lora_A[name]` (`nn.Linear(n, r)`) and
`B = lora_B[name]` (`nn.Linear(r, m)`). Kronecker-factored curvature and the linearised predictive both treat `A`
and `B` as two linear layers: each needs its input activations `a` (per token) and the gradient `g` of some scalar
with respect to its output (per token). For a weight `W` (out x in) used at every position `t` of a sequence, the
gradient is `sum_t g_t a_t^T` (weight sharing over positions).

`LoraCapture` registers a forward hook on every active `lora_A` / `lora_B` linear that keeps the input and the
output tensor of the last forward; gradients with respect to the outputs are then taken with `torch.autograd.grad`
(no `.grad` is accumulated on any parameter). While the context is open the LoRA weights require gradients (so the
outputs join the autograd graph); the previous flags are restored on exit.

Names are the PEFT module paths with the adapter name dropped, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A`, so a posterior fitted under one adapter name applies
under another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from melora.errors import AdapterError


@dataclass
class LoraLinear:
    """One LoRA factor seen as a linear layer.

    Attributes:
        name (`str`): PEFT module path without the adapter name (`...q_proj.lora_A`).
        module (`nn.Linear`): the factor (`lora_A[adapter]` or `lora_B[adapter]`).
    """

    name: str
    module: nn.Linear

    @property
    def shape(self) -> tuple[int, int]:
        """`(out_features, in_features)` of the factor's weight."""
        return tuple(self.module.weight.shape)


def lora_linears(model: nn.Module) -> list[LoraLinear]:
    """The `lora_A` and `lora_B` linears of the active adapter of every LoRA layer of `model`, in module order.

    Raises:
        AdapterError: no LoRA layer, several active adapters, or a LoRA variant the Laplace posterior does not cover
            (DoRA, LoRA biases, Me-LoRA / BLoB layers: those have their own posterior).
    """
    from peft.tuners.lora import LoraLayer

    found: list[LoraLinear] = []
    for path, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        active = [a for a in module.active_adapters if a in module.lora_A]
        if len(active) != 1:
            raise AdapterError(f"Expected one active LoRA adapter at '{path}', but got {active}.")
        name = active[0]
        if module.merged:
            raise AdapterError(f"'{path}' has its adapter merged into the base weight; unmerge it first.")
        if module.use_dora.get(name, False):
            raise AdapterError(f"The Laplace posterior covers plain LoRA only, but '{path}' uses DoRA.")
        if getattr(module, "lora_variant", {}).get(name) is not None:
            raise AdapterError(
                f"The Laplace posterior covers plain LoRA only, but '{path}' is a "
                f"{type(module.lora_variant[name]).__name__} layer."
            )
        for part in ("lora_A", "lora_B"):
            linear = getattr(module, part)[name]
            if not isinstance(linear, nn.Linear) or linear.bias is not None:
                raise AdapterError(f"Expected '{path}.{part}' to be a bias-free nn.Linear, but got {linear}.")
            found.append(LoraLinear(name=f"{path}.{part}", module=linear))
    if not found:
        raise AdapterError("The model has no LoRA layer: load a LoRA adapter before fitting a Laplace posterior.")
    return found


@dataclass
class LoraCapture:
    """Inputs and outputs of the LoRA linears during the last forward (see the module docstring).

    Attributes:
        linears (`list[LoraLinear]`): the captured factors.
        inputs (`dict[str, torch.Tensor]`): `(B, T, in)` detached input of each factor.
        outputs (`dict[str, torch.Tensor]`): `(B, T, out)` output of each factor, still in the graph.
    """

    linears: list[LoraLinear]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget the tensors of the last forward."""
        self.inputs.clear()
        self.outputs.clear()

    def output_grads(self, scalar: torch.Tensor, retain_graph: bool) -> dict[str, torch.Tensor]:
        """`d scalar / d output` `(B, T, out)` for every factor (zeros where the scalar does not depend on it)."""
        names = list(self.outputs)
        grads = torch.autograd.grad(
            scalar, [self.outputs[n] for n in names], retain_graph=retain_graph, allow_unused=True
        )
        return {n: (torch.zeros_like(self.outputs[n]) if g is None else g).detach() for n, g in zip(names, grads)}


@contextmanager
def capture_lora(model: nn.Module, linears: Sequence[LoraLinear] | None = None) -> Iterator[LoraCapture]:
    """Record the LoRA linears' inputs and outputs for the block (see `LoraCapture`); restore everything after.

    Example:
        >>> with capture_lora(peft_model) as cap:  # doctest: +SKIP
        ...     z = answer_logits(peft_model, batch)  # (B, K)
        ...     grads = cap.output_grads(z[:, 0].sum(), retain_graph=False)  # name -> (B, T, out)
    """
    linears = list(linears) if linears is not None else lora_linears(model)
    cap = LoraCapture(linears=linears)
    handles, flags = [], []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            cap.inputs[name] = args[0].detach()
            cap.outputs[name] = output

        return hook

    try:
        for lin in linears:
            flags.append((lin.module.weight, lin.module.weight.requires_grad))
            lin.module.weight.requires_grad_(True)
            handles.append(lin.module.register_forward_hook(make_hook(lin.name)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for weight, flag in flags:
            weight.requires_grad_(flag)
        cap.clear()
