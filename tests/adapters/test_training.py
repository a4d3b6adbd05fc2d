"""Training dynamics: which parameters receive gradient from the standard init, and that every one of them moves."""

from __future__ import annotations

import peft
import pytest
import torch

from melora.adapters.kl import kl_divergence
from tests.adapters.conftest import adapter_config, tiny_base, tiny_peft


PARAMS = {
    "melora": ("lora_A", "lora_B", "lora_melora_M", "lora_melora_H"),
    "blob": ("lora_A", "lora_B", "lora_blob_rho"),
}


def _kind_of(name: str) -> str:
    return next(part for part in name.split(".") if part.startswith("lora_"))


def _grad_table(model: torch.nn.Module) -> dict[str, bool]:
    """Per parameter kind: does any of its tensors have a non-zero gradient?"""
    table: dict[str, bool] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            nonzero = param.grad is not None and bool(param.grad.abs().sum() > 0)
            table[_kind_of(name)] = table.get(_kind_of(name), False) or nonzero
    return table


def _nll(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, labels=input_ids).loss


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_gradient_reach_at_step_0_and_1(kind: str, input_ids: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_base(), adapter_config(kind)).train()  # standard init: B = 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    _nll(model, input_ids).backward()
    step0 = _grad_table(model)
    optimizer.step()
    optimizer.zero_grad()
    _nll(model, input_ids).backward()
    step1 = _grad_table(model)
    print(f"\n{kind} NLL gradient, step 0: {step0}\n{kind} NLL gradient, step 1: {step1}")
    # step 0: B = 0 blocks every path but B's own; the KL alone reaches the rest (see test_kl)
    assert step0 == {name: name == "lora_B" for name in PARAMS[kind]}
    # step 1: B has moved, so every parameter is reachable through the NLL: no dead parameter
    assert step1 == dict.fromkeys(PARAMS[kind], True)


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_every_adapter_parameter_moves(kind: str, input_ids: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_base(), adapter_config(kind)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        loss = _nll(model, input_ids) + 1e-3 * kl_divergence(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {_kind_of(n) for n in trainable} == set(PARAMS[kind])
    assert moved == trainable  # every adapter parameter moved, and nothing else


@pytest.mark.parametrize("kind", ["melora", "blob"])
def test_gradient_checkpointing_recomputes_the_same_sample(kind: str, input_ids: torch.Tensor) -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_peft(kind).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(5)
        _nll(model, input_ids).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0)
