"""K-FAC GGN factors against the exact GGN of the answer read-out, on a tiny LoRA model."""

from __future__ import annotations

import torch

from melora.laplace.capture import capture_lora, lora_linears
from melora.laplace.kfac import accumulate_kron_factors, answer_logits, ggn_sqrt, masked_log_softmax
from tests.laplace.conftest import make_batch


def exact_ggn_blocks(model, batches) -> dict[str, torch.Tensor]:
    """`sum_n J_n^T (diag p - p p^T) J_n` per LoRA factor (row-major vec(W)), by autograd, in float64."""
    linears = lora_linears(model)
    blocks = {lin.name: 0 for lin in linears}
    for batch in batches:
        with torch.enable_grad():
            z = answer_logits(model, batch)  # (B, K)
            for n in range(len(batch)):
                k = int(batch.choice_mask[n].sum())
                p = masked_log_softmax(z[n : n + 1], batch.choice_mask[n : n + 1])[0, :k].exp().detach().double()
                lam = torch.diag(p) - torch.outer(p, p)  # (k, k)
                rows = []
                for c in range(k):
                    grads = torch.autograd.grad(z[n, c], [lin.module.weight for lin in linears], retain_graph=True)
                    rows.append([g.flatten().double() for g in grads])
                for i, lin in enumerate(linears):
                    jac = torch.stack([rows[c][i] for c in range(k)])  # (k, out * in)
                    blocks[lin.name] = blocks[lin.name] + jac.T @ lam @ jac
    return blocks


def test_ggn_sqrt_reproduces_the_softmax_hessian():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0]])
    m = ggn_sqrt(p)
    expected = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(m @ m.transpose(1, 2), expected)


def test_kfac_is_exact_for_one_single_token_question(tiny_lora):
    batch = make_batch([[7]], [[10, 11, 12, 13]], [1])
    for lin in lora_linears(tiny_lora):
        lin.module.weight.requires_grad_(True)
    exact = exact_ggn_blocks(tiny_lora, [batch])
    factors = accumulate_kron_factors(tiny_lora, [batch])
    assert factors.n_examples == 1 and factors.n_tokens == 1
    scale = max(float(block.abs().max()) for block in exact.values())
    for name, block in exact.items():
        kron = torch.kron(factors.grad[name].double(), factors.act[name].double())
        if "v_proj" in name:  # with one token, attention weights are 1: q (and its LoRA) has no effect
            assert block.abs().max() > 1e-3 * scale, name
        torch.testing.assert_close(kron, block, rtol=1e-4, atol=1e-6 * scale)


def test_kfac_factors_are_symmetric_psd_and_count_prompt_tokens(tiny_lora, batches):
    factors = accumulate_kron_factors(tiny_lora, batches)
    assert factors.n_examples == 4 and factors.n_tokens == 4 + 3 + 5 + 2
    assert set(factors.grad) == {lin.name for lin in lora_linears(tiny_lora)}
    for name in factors.grad:
        for f in (factors.act[name], factors.grad[name]):
            torch.testing.assert_close(f, f.T)
            assert torch.linalg.eigvalsh(f.double()).min() > -1e-6 * f.abs().max()
    assert factors.log_likelihood < 0


def test_kfac_trace_matches_the_exact_ggn_trace_for_single_token_prompts(tiny_lora):
    """Several one-token questions: K-FAC is no longer exact, but both factors see every example."""
    batch = make_batch([[7], [8], [30]], [[10, 11, 12], [10, 11, 12], [10, 11, 12]], [0, 1, 2])
    factors = accumulate_kron_factors(tiny_lora, [batch])
    exact = exact_ggn_blocks(tiny_lora, [batch])
    for name, block in exact.items():
        kron = torch.kron(factors.grad[name].double(), factors.act[name].double())
        assert torch.trace(kron) > 0 and torch.trace(block) > 0


def test_capture_restores_requires_grad_and_removes_hooks(tiny_lora):
    linears = lora_linears(tiny_lora)
    flags = [lin.module.weight.requires_grad for lin in linears]
    with capture_lora(tiny_lora, linears):
        assert all(lin.module.weight.requires_grad for lin in linears)
    assert [lin.module.weight.requires_grad for lin in linears] == flags
    assert all(not lin.module._forward_hooks for lin in linears)


def test_q_and_v_lora_a_share_one_input_factor(tiny_lora, batches):
    factors = accumulate_kron_factors(tiny_lora, batches)
    for layer in (0, 1):
        prefix = f"base_model.model.model.layers.{layer}.self_attn"
        assert factors.act[f"{prefix}.q_proj.lora_A"] is factors.act[f"{prefix}.v_proj.lora_A"]
        assert factors.grad[f"{prefix}.q_proj.lora_A"] is not factors.grad[f"{prefix}.v_proj.lora_A"]
    assert len({id(a) for a in factors.act.values()}) == 6  # 8 factors, 2 shared inputs
