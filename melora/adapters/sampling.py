"""Posterior sampling control: one switch for the whole model, and reproducible per-sequence samples.

A Bayesian adapter (Me-LoRA, BLoB) has two sampling modes, independent of `model.training` (which only drives
dropout):

- `"sample"`: every forward uses posterior samples, one independent weight sample per sequence (per batch row); the
  same sample serves every token of that sequence;
- `"mean"`: the posterior mean (Me-LoRA: `C = M`; BLoB: `A = mean`), deterministic, equal to the merged model.

The default, with no call to this module, is `"sample"` with noise from torch's global RNG (what training wants).
`sampling(model, mode, seeds=...)` switches the whole model for a block and restores the previous state in `finally`;
`set_sampling_mode` switches it until the next call.

Seeds. With `seeds` (one int per batch row), row `i`'s noise comes from a CPU `torch.Generator` seeded with
`seeds[i]`, which draws the standard-normal noise of that row for every Bayesian adapter of the model in one go, in
`named_modules()` order (adapters of a layer in their creation order). The numbers are therefore the same on every
device and for every batch composition, order or size: a row's result depends on its seed only. The noise is drawn
once, when the mode is set, moved to each device in one copy on first use, and reused by every forward in the block
(so all generation steps of a sequence share its sample); a forward whose batch size differs from `len(seeds)`
raises. Memory: `len(seeds)` x (noise per sequence) floats, i.e. `L r^2` per row for Me-LoRA and `L r n` for BLoB.
Without seeds every forward call draws fresh noise, so a multi-step `generate` should pass seeds; gradient
checkpointing is safe either way (torch's checkpoint restores the global RNG state for the recompute).

Monte-Carlo evaluation of `S` samples of `B` documents in one forward: repeat each row `S` times with
`expand_for_samples` and pass `sample_seeds(doc_seeds, S)`; sample `s` of document `d` uses seed `row_seed(d, s)`,
so the batched forward equals `S` separate forwards with those seeds.

Example:
    >>> with sampling(model, "sample", seeds=sample_seeds([11, 12], n_samples=4)):  # doctest: +SKIP
    ...     logits = model(expand_for_samples(input_ids, 4)).logits  # (2 * 4, T, V), rows doc-major
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from melora.adapters.base import BayesianLinearVariant
from melora.errors import MeloraWarning


SAMPLING_MODES = ("sample", "mean")
# Attribute holding the shared `SamplingState` on every Bayesian layer (absent: default state).
STATE_ATTR = "_melora_sampling_state"
_MAX_SEED = 2**63


@dataclass(eq=False)
class SamplingState:
    """The sampling mode of a model, shared by all its Bayesian layers.

    Attributes:
        mode (`str`): `"sample"` or `"mean"`.
        seeds (`tuple[int, ...]` or `None`): one seed per batch row, or `None` for torch's global RNG.
    """

    mode: str = "sample"
    seeds: tuple[int, ...] | None = None
    # (n_rows, total) float32 on CPU: every row's noise for every adapter, and its per-device copies.
    _noise: torch.Tensor | None = field(default=None, repr=False)
    _on_device: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)
    # (id(layer), adapter name) -> (layer name, offset into a row, noise shape)
    _slots: dict[tuple[int, str], tuple[str, int, tuple[int, ...]]] = field(default_factory=dict, repr=False)

    def noise(
        self, module: nn.Module, adapter_name: str, n_rows: int, shape: tuple[int, ...], like: torch.Tensor
    ) -> torch.Tensor | None:
        """Standard-normal noise `(n_rows, *shape)` for one forward of `adapter_name`, or `None` in mean mode."""
        if self.mode == "mean":
            return None
        if self._noise is None:  # no seeds: fresh noise from the global RNG, on the layer's device
            return torch.randn((n_rows, *shape), device=like.device, dtype=like.dtype)
        slot = self._slots.get((id(module), adapter_name))
        if slot is None:
            raise RuntimeError(
                f"Adapter '{adapter_name}' of a layer was added after the sampling mode was set; set it again."
            )
        name, offset, slot_shape = slot
        if n_rows != self._noise.shape[0]:
            raise ValueError(
                f"Expected a batch of {self._noise.shape[0]} rows (one per seed) at layer '{name}', but got "
                f"{n_rows}; pass one seed per batch row."
            )
        rows = self._on_device.get(like.device)
        if rows is None:
            rows = self._on_device[like.device] = self._noise.to(like.device)
        numel = _numel(slot_shape)
        return rows[:, offset : offset + numel].view(n_rows, *slot_shape).to(like.dtype)  # (n_rows, *shape)


_DEFAULT_STATE = SamplingState()


def draw_noise(
    module: nn.Module, adapter_name: str, n_rows: int, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor | None:
    """Noise for one forward of a Bayesian layer under the model's current sampling state (`None`: use the mean).

    Args:
        module (`nn.Module`): the Bayesian layer.
        adapter_name (`str`): the adapter being evaluated.
        n_rows (`int`): batch size of the input (one sample per row).
        shape (`tuple[int, ...]`): noise shape of one sample (the variant's `noise_shape`).
        like (`torch.Tensor`): a tensor whose device and dtype the noise takes.

    Returns:
        `(n_rows, *shape)` standard-normal noise, or `None` in mean mode.
    """
    state = module.__dict__.get(STATE_ATTR, _DEFAULT_STATE)
    return state.noise(module, adapter_name, n_rows, shape, like)


def bayesian_adapters(model: nn.Module) -> list[tuple[str, nn.Module, str, tuple[int, ...]]]:
    """Every Bayesian adapter of `model` as `(layer name, layer, adapter name, noise shape)`, in module order."""
    found = []
    for name, module in model.named_modules():
        for adapter_name, variant in getattr(module, "lora_variant", {}).items():
            if isinstance(variant, BayesianLinearVariant):
                found.append((name, module, adapter_name, tuple(variant.noise_shape(module, adapter_name))))
    return found


def set_sampling_mode(
    model: nn.Module,
    mode: str = "sample",
    seeds: Sequence[int] | None = None,
    adapters: list[tuple[str, nn.Module, str, tuple[int, ...]]] | None = None,
) -> SamplingState:
    """Set how every Bayesian layer of `model` samples, until the next call.

    Args:
        model (`nn.Module`): a model with Me-LoRA or BLoB layers (a model without any is left as it is).
        mode (`str`): `"sample"` (posterior samples, one per batch row) or `"mean"` (posterior mean).
        seeds (`Sequence[int]`, *optional*): one non-negative seed (< 2**63) per batch row; the noise of row `i` then
            depends on `seeds[i]` only. `None` draws noise from torch's global RNG at every forward.
        adapters (`list`, *optional*): `bayesian_adapters(model)`, when the caller keeps it (a training loop sets the
            mode every step; walking a 7B model's modules each time is wasted work).

    Returns:
        The new `SamplingState`, shared by all Bayesian layers.

    Raises:
        ValueError: unknown `mode`, or invalid `seeds`.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"Expected `mode` to be one of {SAMPLING_MODES}, but got {mode!r}.")
    if seeds is not None and mode == "mean":
        warnings.warn("`seeds` are ignored in mode 'mean' (it draws no noise).", MeloraWarning, stacklevel=2)
        seeds = None
    adapters = bayesian_adapters(model) if adapters is None else adapters
    state = SamplingState(mode=mode)
    if seeds is not None:
        state.seeds = _check_seeds(seeds)
        offset = 0
        for name, module, adapter_name, shape in adapters:
            state._slots[(id(module), adapter_name)] = (name, offset, shape)
            offset += _numel(shape)
        state._noise = _seeded_noise(state.seeds, offset)  # (n_rows, offset)
    for _, module, _, _ in adapters:
        module.__dict__[STATE_ATTR] = state
    return state


@contextmanager
def sampling(
    model: nn.Module,
    mode: str = "sample",
    seeds: Sequence[int] | None = None,
    adapters: list[tuple[str, nn.Module, str, tuple[int, ...]]] | None = None,
) -> Iterator[SamplingState]:
    """Context manager: sample (or use the mean) in every Bayesian layer of `model`, then restore the previous mode.

    Args:
        model (`nn.Module`): a model with Me-LoRA or BLoB layers.
        mode (`str`): `"sample"` or `"mean"`; works in train and eval mode alike.
        seeds (`Sequence[int]`, *optional*): one seed per batch row (see `set_sampling_mode`).
        adapters (`list`, *optional*): `bayesian_adapters(model)`, if the caller keeps it (see `set_sampling_mode`).

    Yields:
        The `SamplingState` in force inside the block.

    Example:
        >>> with sampling(model, "mean"):  # doctest: +SKIP
        ...     logits = model(input_ids).logits
    """
    adapters = bayesian_adapters(model) if adapters is None else adapters
    previous = [(module, module.__dict__.get(STATE_ATTR)) for _, module, _, _ in adapters]
    try:
        yield set_sampling_mode(model, mode, seeds, adapters)
    finally:
        for module, state in previous:
            if state is None:
                module.__dict__.pop(STATE_ATTR, None)
            else:
                module.__dict__[STATE_ATTR] = state


def row_seed(doc_seed: int, sample_index: int) -> int:
    """Seed of posterior sample `sample_index` of a document with seed `doc_seed`.

    The first 8 bytes of `blake2b("melora-sample:{doc_seed}:{sample_index}")`, little-endian, masked to 63 bits:
    deterministic across processes and platforms, and distinct pairs give unrelated seeds.
    """
    digest = hashlib.blake2b(f"melora-sample:{int(doc_seed)}:{int(sample_index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _MAX_SEED


def sample_seeds(doc_seeds: Sequence[int], n_samples: int) -> list[int]:
    """Row seeds for `n_samples` posterior samples of each document, doc-major (`[d0 s0, d0 s1, ..., d1 s0, ...]`).

    Matches the row order of `expand_for_samples`. Raises ValueError if `n_samples` is not a positive int.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"Expected `n_samples` to be a positive int, but got {n_samples!r}.")
    return [row_seed(doc_seed, s) for doc_seed in doc_seeds for s in range(n_samples)]


def expand_for_samples(tensor: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Repeat each row of `tensor` `n_samples` times along dim 0: `(B, ...)` -> `(B * n_samples, ...)`, doc-major."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"Expected `n_samples` to be a positive int, but got {n_samples!r}.")
    return tensor.repeat_interleave(n_samples, dim=0)


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds))
    if not values:
        raise ValueError("Expected `seeds` to hold one int per batch row, but got an empty sequence.")
    bad = [s for s in values if not 0 <= s < _MAX_SEED]
    if bad:
        raise ValueError(f"Expected every seed in `seeds` to be in [0, 2**63), but got {bad[:3]}.")
    return values


def _seeded_noise(seeds: tuple[int, ...], total: int) -> torch.Tensor:
    rows = torch.empty(len(seeds), total, dtype=torch.float32)  # (n_rows, total)
    generator = torch.Generator(device="cpu")
    for i, seed in enumerate(seeds):
        generator.manual_seed(seed)
        torch.randn(total, generator=generator, out=rows[i])
    return rows


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
