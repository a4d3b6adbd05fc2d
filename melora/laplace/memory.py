"""Sizes of the Kronecker factors of a LAP posterior from a model config alone (like `melora params`).

Per adapted linear `W0: m x n` at rank `r`, LoRA's `A` (`r x n`) gets factors `G_A` (`r x r`) and `A_A` (`n x n`),
and `B` (`m x r`) gets `G_B` (`m x m`) and `A_B` (`r x r`): `n^2 + m^2 + 2 r^2` floats, as many again as eigenvectors
(the accumulators are replaced by their eigendecomposition). Linears of one block that read the same input share
`A_A` (`q_proj`, `k_proj`, `v_proj` of an attention block; `gate_proj`, `up_proj` of an MLP), which
`melora.laplace.kfac` exploits. Eigenvalues add `n + m + 2r` floats per linear.

Llama-2-7B, r = 8, q and v (64 linears): 1,610,620,928 floats = 6.44 GB in float32 (8.59 GB without sharing),
against 4,194,304 LoRA weights.

Example:
    >>> from melora.adapters.params import AdaptedLinear
    >>> qv = [AdaptedLinear(f"layers.{i}.self_attn.{p}", 4096, 4096) for i in range(32) for p in ("q_proj", "v_proj")]
    >>> kfac_factor_floats(qv, rank=8)["factors"]
    1610620928
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from melora.adapters.params import AdaptedLinear


SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _input_key(linear: AdaptedLinear) -> tuple[str, ...]:
    parent, _, leaf = linear.name.rpartition(".")
    for i, group in enumerate(SHARED_INPUT_GROUPS):
        if leaf in group:
            return (parent, f"group{i}", str(linear.in_features))
    return (linear.name,)


def kfac_factor_floats(linears: Sequence[AdaptedLinear], rank: int, share_inputs: bool = True) -> dict[str, Any]:
    """Floats of the LAP factors for `linears` at `rank` (see the module docstring).

    Returns:
        `{"lora_params", "factors", "eigvals", "factors_fp32_bytes", "adapted_linears"}`; `factors` counts the
        accumulated factors, which is also the size of their eigenvectors and of `laplace_posterior.safetensors`.
    """
    if rank < 1:
        raise ValueError(f"Expected `rank` to be a positive int, but got {rank!r}.")
    factors = eigvals = lora = 0
    seen: set[tuple[str, ...]] = set()
    for lin in linears:
        n, m = lin.in_features, lin.out_features
        lora += rank * (n + m)
        factors += m * m + 2 * rank * rank
        eigvals += m + 2 * rank
        key = _input_key(lin) if share_inputs else (lin.name,)
        if key not in seen:
            seen.add(key)
            factors += n * n
            eigvals += n
    return {
        "adapted_linears": len(linears),
        "lora_params": lora,
        "factors": factors,
        "eigvals": eigvals,
        "factors_fp32_bytes": 4 * factors,
    }
