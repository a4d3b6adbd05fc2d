"""Kronecker-factored GGN of the answer read-out with respect to the LoRA weights (K-FAC, as Laplace-LoRA).

The model's output for one question is `z`, the `K` answer-token logits at the answer position (the last prompt
token), and the likelihood is `softmax(z)[y]`: exactly `melora.readout.choice_log_probs`, the read-out training
and evaluation use. Restricting the output to the `K` answer tokens (instead of the vocabulary) is what makes a
Laplace posterior over an LLM's adapter tractable (Yang et al., 2024, Laplace-LoRA).

GGN. With `J = dz/dtheta` and `Lambda = diag(p) - p p^T` (the Hessian of the cross-entropy in `z`), the GGN is
`sum_n J_n^T Lambda_n J_n`. `Lambda = M M^T` with `M = diag(sqrt p) - p sqrt(p)^T` (`ggn_sqrt`), so the GGN is
`sum_n sum_c (J_n^T M_n[:, c]) (J_n^T M_n[:, c])^T`: one backward pass per choice `c` of the vector `M[:, c]` gives
the exact (not Monte-Carlo-sampled) GGN, `K` passes per batch.

K-FAC over a sequence (K-FAC-expand, Eschenhagen et al., 2023). A LoRA factor `W` (out x in) is used at every
token `t`, so `dz_c/dW = sum_t g_{t,c} a_t^T`, which is not a Kronecker product. Like Laplace-LoRA's ASDL backend
we treat every token as its own example:

    GGN_W ~= G (x) A,   G = sum_{n,t,c} g g^T  (out x out),   A = (1/N_tok) sum_{n,t} a a^T  (in x in)

with `N_tok` the number of prompt tokens seen (padding excluded) and the Kronecker product over the row-major
`vec(W)` (index `o * in + i`). It is exact for a single question whose prompt is a single token (then
`J_c = g_c a^T` and `sum_c vec(J_c) vec(J_c)^T = (sum_c g_c g_c^T) (x) a a^T`); for longer prompts it is the usual
K-FAC approximation that also ignores the correlation between positions. Blocks of different factors (across
layers, and `A` vs `B` of one layer) are dropped (block-diagonal). Curvature accumulates in float32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from melora.laplace.capture import LoraLinear, capture_lora, lora_linears
from melora.readout import ChoiceBatch


logger = logging.getLogger(__name__)


@dataclass
class KronFactors:
    """Summed Kronecker factors of the GGN, one pair per LoRA factor: `GGN_W ~= grad[W] (x) act[W]`.

    Attributes:
        act (`dict[str, torch.Tensor]`): `(in, in)` mean input outer product over tokens, `A` above; factors that
            read the same input (`shared_inputs`) hold the same tensor object.
        grad (`dict[str, torch.Tensor]`): `(out, out)` summed output-gradient outer product, `G` above.
        n_examples (`int`): questions seen.
        n_tokens (`int`): prompt tokens seen (the normaliser of `act`).
        log_likelihood (`float`): `sum_n log p(y_n | x_n, theta_MAP)` over the questions seen.
    """

    act: dict[str, torch.Tensor]
    grad: dict[str, torch.Tensor]
    n_examples: int
    n_tokens: int
    log_likelihood: float


def answer_logits(model: nn.Module, batch: ChoiceBatch) -> torch.Tensor:
    """Raw answer-token logits `(B, K)` in float32 at each row's answer position (0.0 on padded choices).

    `log_softmax` of these over a row's real choices equals `melora.readout.choice_log_probs`: gathering the
    vocabulary log-softmax and renormalising over the choices is the softmax of the gathered logits.
    """
    width = batch.input_ids.shape[1]
    keep = int(width - batch.last_index.min().item())  # positions from the shortest prompt's end
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep)
    rows = torch.arange(len(batch), device=batch.input_ids.device)
    logits = out.logits[rows, batch.last_index - (width - keep)].float()  # (B, V)
    z = logits.gather(1, batch.choice_ids)  # (B, K)
    return z.masked_fill(~batch.choice_mask, 0.0)


def masked_log_softmax(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`log_softmax` of `z` `(..., K)` over the entries where `mask` is True (`-inf` elsewhere)."""
    return torch.log_softmax(z.masked_fill(~mask, -math.inf), dim=-1)


def ggn_sqrt(probs: torch.Tensor) -> torch.Tensor:
    """`M` `(B, K, K)` with `M M^T = diag(p) - p p^T` (the softmax cross-entropy Hessian in the logits).

    `M = diag(sqrt p) - p sqrt(p)^T`; then `M M^T = diag(p) - 2 p p^T + p (sum p) p^T = diag(p) - p p^T` because
    `sum p = 1`. Zero-probability (padded) choices give zero rows and columns.

    Example:
        >>> p = torch.tensor([[0.2, 0.3, 0.5]])
        >>> m = ggn_sqrt(p)
        >>> torch.allclose(m @ m.transpose(1, 2), torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
        True
    """
    root = probs.clamp_min(0).sqrt()  # (B, K)
    return torch.diag_embed(root) - probs[:, :, None] * root[:, None, :]  # (B, K, K)


def token_mask(batch: ChoiceBatch) -> torch.Tensor:
    """`(B, T)` True on each row's prompt tokens (positions up to its answer position)."""
    positions = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
    return (positions[None, :] <= batch.last_index[:, None]) & batch.attention_mask.bool()  # (B, T)


def shared_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map each factor to the first factor (in order) that received the very same input tensor in the forward.

    In a Llama attention block `q_proj` and `v_proj` read the same hidden states, so their `lora_A`s share one
    input, hence one `A` factor (exactly, not as an approximation): it is accumulated and stored once.
    """
    seen: dict[tuple, str] = {}
    return {
        name: seen.setdefault((a.data_ptr(), tuple(a.shape), tuple(a.stride()), a.dtype), name)
        for name, a in inputs.items()
    }


def accumulate_kron_factors(
    model: nn.Module, batches: Iterable[ChoiceBatch], linears: list[LoraLinear] | None = None
) -> KronFactors:
    """K-FAC GGN factors of the answer read-out over `batches` (see the module docstring for the approximation).

    Args:
        model (`nn.Module`): a PEFT model with a plain LoRA adapter, in eval mode (LoRA dropout off).
        batches (`Iterable[ChoiceBatch]`): letter-format batches (`melora.readout.collate`), already on the
            model's device.
        linears (`list[LoraLinear]`, *optional*): the factors to cover; default every active LoRA factor.

    Returns:
        The summed factors, the counts and the log-likelihood of the gold answers at the MAP weights.

    Raises:
        ValueError: the model is in training mode (dropout would enter the curvature) or `batches` is empty.
    """
    if model.training:
        raise ValueError("Expected the model in eval mode (LoRA dropout off) to fit the Laplace posterior.")
    linears = linears if linears is not None else lora_linears(model)
    act: dict[str, torch.Tensor] = {}
    grad: dict[str, torch.Tensor] = {}
    n_examples, n_tokens, log_lik = 0, 0, 0.0
    sources: dict[str, str] | None = None
    with capture_lora(model, linears) as cap, torch.enable_grad():
        for batch in batches:
            z = answer_logits(model, batch)  # (B, K)
            log_p = masked_log_softmax(z, batch.choice_mask)  # (B, K)
            log_lik += float(log_p.detach().gather(1, batch.labels[:, None]).sum())
            m = ggn_sqrt(log_p.detach().exp())  # (B, K, K)
            mask = token_mask(batch)  # (B, T)
            groups = shared_inputs(cap.inputs)
            if sources is not None and groups != sources:
                raise RuntimeError("The LoRA factors that share an input changed between batches.")
            sources = groups
            for name, a in cap.inputs.items():
                if sources[name] == name:  # one A factor per distinct input (q and v of a layer share theirs)
                    a = a[mask].float()  # (N_tok, in)
                    act[name] = act.get(name, 0) + a.T @ a  # (in, in)
            n_choices = batch.choice_ids.shape[1]
            for c in range(n_choices):
                grads = cap.output_grads((z * m[:, :, c]).sum(), retain_graph=c < n_choices - 1)
                for name, g in grads.items():
                    g = g[mask].float()  # (N_tok, out)
                    grad[name] = grad.get(name, 0) + g.T @ g  # (out, out)
            n_examples += len(batch)
            n_tokens += int(mask.sum())
            cap.clear()
    if n_examples == 0:
        raise ValueError("Expected at least one batch to fit the Kronecker factors, but got none.")
    act = {name: a / n_tokens for name, a in act.items()}
    act = {name: act[source] for name, source in sources.items()}  # shared inputs: the same tensor object
    logger.info("K-FAC over %d questions (%d prompt tokens), %d LoRA factors", n_examples, n_tokens, len(act))
    return KronFactors(act=act, grad=grad, n_examples=n_examples, n_tokens=n_tokens, log_likelihood=log_lik)
