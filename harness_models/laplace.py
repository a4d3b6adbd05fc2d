"""The LAP (Laplace-LoRA) route of the `melora` lm-eval model: the linearised predictive over the answer tokens.

```
python scripts/laplace.py --adapter runs/obqa-map/adapter-best --task obqa       # writes adapter-best/laplace/
lm_eval --model melora --model_args adapter=runs/obqa-map/adapter-best/laplace,samples=0 --tasks melora_ood
```

A LAP directory is recognised by its `laplace.json` (`melora.laplace.fit` documents it); `resolve_laplace` turns it
into an `AdapterSet` of kind `laplace` whose one member is the MAP adapter it refers to, loaded as the plain LoRA it
is. `samples=0` is the probit predictive, `samples=N` the Monte-Carlo GLM predictive with `N` logit draws per
document (probabilities averaged), seeded from the document seed as every other method (`seed`).

How `acc`/`nll`/`ece` become the GLM predictive's. `HFLM` scores a single-token continuation by reading its token's
log-probability at the last context position of the row it feeds `_model_call`, and the `melora_*` tasks normalise
the choices' log-likelihoods over the question's choices. During `_loglikelihood_tokens`, `record_choices` stores,
per model input row (context tokens), the continuation tokens of every request with that context: the question's
answer tokens. `model_call` then runs the MAP model with gradients at each recorded row's answer position, forms
the GLM moments of the answer-token logits (`melora.laplace.predictive`), and returns a `(B, L, V)` tensor whose
answer position holds the predictive's log-probabilities at the answer tokens and `-inf` at every other token
(other positions are uniform: `HFLM` does not read them). The choice log-likelihoods are therefore exactly
`log p_GLM(choice)`, already normalised over the choices, and `HFLM`'s own `log_softmax` leaves them unchanged.

Limitations: single-token answers only (the letters format: `melora_obqa`, `melora_arc_e`, ...; a cloze task or any
multi-token continuation is refused with an error naming the task format); `average` must be `probs` (averaging
logits would discard the posterior variance); generation requests use the MAP adapter. Rows `_model_call` gets
outside a recorded call (batch-size probing) get the MAP logits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from melora.errors import MeloraError


if TYPE_CHECKING:
    from harness_models.adapter_set import AdapterSet

LAPLACE_KIND = "laplace"
_STATE = "_melora_laplace"  # attribute holding the route's state on the MeloraLM instance


def is_laplace_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a `laplace.json` (a LAP directory written by `scripts/laplace.py`)."""
    from melora.laplace.posterior import LAPLACE_FILE

    return os.path.isfile(os.path.join(os.fspath(path), LAPLACE_FILE))


def resolve_laplace(path: str | os.PathLike) -> AdapterSet:
    """The `AdapterSet` of a LAP directory: kind `laplace`, one member, the MAP adapter (checked to be LoRA).

    Raises:
        AdapterError: an unreadable `laplace.json`, a missing or changed adapter, or one that is not plain LoRA.
    """
    from harness_models.adapter_set import AdapterSet
    from melora.adapters import adapter_kind
    from melora.errors import AdapterError
    from melora.laplace.posterior import laplace_adapter_dir, read_laplace_meta

    path = os.fspath(path)
    meta = read_laplace_meta(path)
    adapter = laplace_adapter_dir(path, meta)
    kind = adapter_kind(adapter)
    if kind != "lora":
        raise AdapterError(f"Laplace directory '{path}' refers to a {kind} adapter; LAP covers plain LoRA only.")
    return AdapterSet(path=path, kind=LAPLACE_KIND, members=(("default", adapter),))


class _Route:
    """The posterior (on the model's device), its settings and the recorded answer tokens of the current call."""

    def __init__(self, lm: Any) -> None:
        from melora.laplace.posterior import load_posterior, read_laplace_meta
        from melora.laplace.predictive import matched_linears

        self.meta = read_laplace_meta(lm.adapters.path)
        posterior = load_posterior(lm.adapters.path, float(self.meta["prior_precision"]))
        self.posterior = posterior.to(lm.device)
        self.linears = matched_linears(lm.model, self.posterior)
        self.rows: dict[int, dict[tuple[int, ...], tuple[int, ...]]] = {}


def _route(lm: Any) -> _Route:
    state = getattr(lm, _STATE, None)
    if state is None:
        state = _Route(lm)
        setattr(lm, _STATE, state)
    return state


def record_choices(lm: Any, requests: list) -> None:
    """Record, per model input row, the answer tokens of the requests sharing it (see the module docstring).

    Raises:
        MeloraError: a continuation of several tokens (cloze tasks), or `average` other than `probs`.
    """
    if lm.average != "probs":
        raise MeloraError(
            f"LAP (adapter={lm.adapters.path}) averages probabilities; model_arg `average={lm.average}` would discard "
            "its variance. Drop `average`."
        )
    table: dict[tuple[int, ...], set[int]] = {}
    for (_, continuation_str), context, continuation in requests:
        if len(continuation) != 1:
            raise MeloraError(
                f"LAP scores single-token answers (the letters format: melora_obqa, melora_arc_e, ...), but the "
                f"continuation {continuation_str!r} is {len(continuation)} tokens; cloze tasks are not supported."
            )
        row = tuple((list(context) + list(continuation))[-(lm.max_length + 1) :][:-1])
        table.setdefault(row, set()).add(int(continuation[0]))
    by_length: dict[int, dict[tuple[int, ...], tuple[int, ...]]] = {}
    for row, tokens in table.items():
        by_length.setdefault(len(row), {})[row] = tuple(sorted(tokens))
    _route(lm).rows = dict(sorted(by_length.items(), reverse=True))


def _lookup(rows: dict, row: list[int]) -> tuple[int, tuple[int, ...]] | None:
    """`(answer position, answer tokens)` of a padded input row: its longest recorded prefix."""
    for length, table in rows.items():
        if length <= len(row) and (tokens := table.get(tuple(row[:length]))) is not None:
            return length - 1, tokens
    return None


def model_call(lm: Any, inps: torch.Tensor) -> torch.Tensor:
    """`(B, L, V)` scores of the input rows whose answer positions carry the GLM predictive (module docstring)."""
    from lm_eval.models.huggingface import HFLM

    from melora.laplace.predictive import glm_moments, predictive_log_probs
    from melora.readout import ChoiceBatch

    route = _route(lm)
    found = [_lookup(route.rows, row) for row in inps.tolist()]
    if any(f is None for f in found):  # e.g. batch-size probing: the MAP model
        return HFLM._model_call(lm, inps)
    k_max = max(len(tokens) for _, tokens in found)
    choice_ids = torch.zeros(len(found), k_max, dtype=torch.long)
    choice_mask = torch.zeros(len(found), k_max, dtype=torch.bool)
    for i, (_, tokens) in enumerate(found):
        choice_ids[i, : len(tokens)] = torch.tensor(tokens)
        choice_mask[i, : len(tokens)] = True
    batch = ChoiceBatch(
        input_ids=inps,
        attention_mask=torch.ones_like(inps),  # right padding after the answer position never reaches it (causal)
        last_index=torch.tensor([pos for pos, _ in found]),
        choice_ids=choice_ids,
        choice_mask=choice_mask,
        labels=torch.zeros(len(found), dtype=torch.long),
    ).to(inps.device)
    moments = glm_moments(lm.model, batch, route.posterior, linears=route.linears)
    seeds = lm._doc_seeds(inps) if lm.samples > 0 else None
    log_p = predictive_log_probs(moments, lm.samples, seeds=seeds).float()  # (B, K)
    out = torch.zeros(*inps.shape, lm.model.config.vocab_size, device=inps.device)  # (B, L, V)
    rows = torch.arange(len(found), device=inps.device)
    answer = torch.full((len(found), out.shape[-1]), -torch.inf, device=inps.device)  # (B, V)
    answer.scatter_(1, batch.choice_ids, log_p.masked_fill(~batch.choice_mask, -torch.inf))
    out[rows, batch.last_index] = answer
    return out


def model_info(lm: Any) -> dict[str, Any]:
    """The LAP settings that go into the results file's `config` (resolved from `laplace.json` and model_args)."""
    from melora.laplace.posterior import read_laplace_meta

    state = getattr(lm, _STATE, None)
    meta = state.meta if state is not None else read_laplace_meta(lm.adapters.path)
    return {
        "sampling": "laplace_probit" if lm.samples == 0 else "laplace_glm_mc",
        "laplace_predictive": "probit" if lm.samples == 0 else f"glm_mc_{lm.samples}",
        "laplace_adapter": lm.adapters.members[0][1],
        "laplace_prior_precision": meta["prior_precision"],
        "laplace_prior_method": meta.get("prior_method"),
        "laplace_curvature": meta.get("curvature"),
        "laplace_fit_task": meta.get("task"),
    }
