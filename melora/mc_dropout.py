"""Seeded MC dropout: LoRA dropout masks that depend on a row's seed, the layer and the element's position only.

torch's dropout draws from the global RNG, so a mask depends on everything drawn before it: an MC-dropout evaluation
then changes with the batch size, the order of the documents and the device. Here the keep/drop decision of element
`i` (flat index over the row's `(tokens, features)`) of batch row `b` in the `l`-th LoRA dropout layer of the model is
a 16-bit word of a splitmix64 stream keyed by `(seeds[b], l)` (see `keep_mask`), computed in int64 tensor arithmetic
(the same bits on CPU and CUDA) and compared with `p`; kept elements are scaled by `1 / (1 - p)` like `nn.Dropout`.
Rows are right-padded everywhere in this project and in lm-eval, so a token's position, hence its mask, is the same
in any batch.

Row `b`'s seed is the same per-(document, sample) seed the Bayesian adapters use (`melora.adapters.sampling`), so MC
dropout, Me-LoRA and BLoB evaluations are reproducible in the same way.

Example:
    >>> with seeded_lora_dropout(model, sample_seeds(doc_seeds, n_samples=10)):  # doctest: +SKIP
    ...     logits = model(expand_for_samples(input_ids, 10)).logits
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


# splitmix64's constants as two's-complement int64 (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB).
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64
_WORDS = 4  # 16-bit words per 64-bit output: four keep decisions per hash


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on an int64 tensor (multiplications wrap modulo 2^64)."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def keep_mask(row_seeds: torch.Tensor, layer: int, shape: Sequence[int], p: float) -> torch.Tensor:
    """Boolean keep mask `(len(row_seeds), *shape)` of the rows keyed by `(row_seeds[b], layer)`.

    Output `k` (from 1) of the splitmix64 stream keyed by `(row_seeds[b], layer)` decides elements `4k-4 .. 4k-1` of
    row `b`: element `i` is kept iff 16-bit word `i % 4` of output `i // 4 + 1` (least significant first) is at least
    `round(p * 2^16)`, i.e. `p` to within 2^-17. Four decisions per hash keep the cost near torch's own dropout.

    Args:
        row_seeds (`torch.Tensor`): int64 `(B,)`, on the device the mask is wanted on.
        layer (`int`): the dropout layer's index in the model.
        shape (`Sequence[int]`): the shape of one row (`(tokens, features)`).
        p (`float`): the drop probability, in `[0, 1)`.
    """
    numel = 1
    for d in shape:
        numel *= d
    n_outputs = -(-numel // _WORDS)
    keys = _mix(_mix(row_seeds * _GOLDEN + layer) + _GOLDEN)  # (B,)
    index = torch.arange(1, n_outputs + 1, dtype=torch.int64, device=row_seeds.device)  # stream positions
    outputs = _mix(keys[:, None] + index[None, :] * _GOLDEN)  # (B, ceil(N / 4)) int64
    # the four 16-bit words of each output, least significant first, as unsigned values
    words = torch.stack([_shift_right(outputs, 16 * w) & 0xFFFF for w in range(_WORDS)], dim=-1)  # (B, ceil(N/4), 4)
    words = words.view(len(row_seeds), -1)[:, :numel]  # (B, N)
    return (words >= round(p * 2**16)).view(len(row_seeds), *shape)


def _seeded_dropout_hook(
    module: nn.Dropout, args: tuple[torch.Tensor, ...], output: torch.Tensor, *, layer: int, seeds: list[int]
) -> torch.Tensor:
    x = args[0]  # (B, ..., n); the module is in eval mode, so `output` is `x` itself
    if x.shape[0] != len(seeds):
        raise ValueError(
            f"Expected a batch of {len(seeds)} rows (one per seed) at LoRA dropout layer {layer}, got {x.shape[0]}."
        )
    row_seeds = torch.tensor(seeds, dtype=torch.int64, device=x.device)
    keep = keep_mask(row_seeds, layer, x.shape[1:], module.p)
    return x * keep.to(x.dtype) / (1.0 - module.p)


def lora_dropouts(model: nn.Module) -> list[nn.Module]:
    """Every LoRA dropout module of `model` (`nn.Dropout`, or `nn.Identity` where p = 0), in module order."""
    return [d for module in model.modules() if hasattr(module, "lora_dropout") for d in module.lora_dropout.values()]


@contextmanager
def seeded_lora_dropout(model: nn.Module, seeds: Sequence[int]) -> Iterator[None]:
    """MC dropout in every LoRA dropout layer of `model` for the block, row `b`'s masks keyed by `seeds[b]`.

    Works in eval mode (the dropout modules stay in it: a forward hook applies the seeded mask), and restores the
    model on exit. Every forward inside must have `len(seeds)` rows.
    """
    seeds = [int(s) for s in seeds]
    switched = []  # (module, hook handle, was training)
    try:
        for layer, dropout in enumerate(lora_dropouts(model)):
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                hook = functools.partial(_seeded_dropout_hook, layer=layer, seeds=seeds)
                switched.append((dropout, dropout.register_forward_hook(hook), dropout.training))
                dropout.eval()  # identity underneath the hook, even if the model is in training mode
        yield
    finally:
        for dropout, handle, was_training in switched:
            handle.remove()
            dropout.train(was_training)
