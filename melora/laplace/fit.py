"""Fit a Laplace posterior (LAP) to a trained MAP LoRA adapter on a task's training split, and write it.

```
python scripts/laplace.py --adapter runs/obqa-map/adapter-best --task obqa
lm_eval --model melora --model_args adapter=runs/obqa-map/adapter-best/laplace,samples=0 --tasks melora_ood
```

Steps (`fit_laplace`): load the base model and the MAP adapter (a plain LoRA adapter, kind `lora`); accumulate the
K-FAC GGN of the answer read-out over the **train** split (`melora.laplace.kfac`); decompose it
(`melora.laplace.posterior`); choose the prior precision `delta`, by default by maximising the Laplace marginal
likelihood, or (`prior_method="val_nll"`) by minimising the probit GLM predictive's NLL on the **validation**
split over the same grid; write the LAP directory. The test split is never read.

The LAP directory (default: `laplace/` inside the adapter directory, so the posterior travels with its adapter and
the adapter directory itself stays a plain LoRA adapter) holds `laplace_posterior.safetensors` (the eigenbases:
`melora.laplace.posterior`) and `laplace.json`:

- `format` (`"melora-laplace"`), `version` (1);
- `adapter`: the MAP adapter directory, relative to the LAP directory; `adapter_sha256`: its weights' digest
  (a posterior is refused for an adapter that changed since);
- `base_model`, `task`, `split` (`"train"`), `answer_format` (`"letters"`), `max_length`, `n_examples`,
  `n_tokens`, `n_params`;
- `curvature`: `"kfac-expand-ggn"` (exact per-choice GGN of the answer softmax, K-FAC-expand over prompt tokens);
- `prior_method` (`marglik` or `val_nll`), `prior_precision`, `log_likelihood` (train, at the MAP),
  `theta_sq_norm`, `log_marginal_likelihood` (at the chosen precision), and `prior_search` (the grid, and the
  validation NLL per grid point for `val_nll`).

The `melora` lm-eval model recognises a LAP directory by its `laplace.json` (`harness_models.laplace`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from melora.errors import AdapterError, MeloraError
from melora.laplace.capture import lora_linears
from melora.laplace.kfac import accumulate_kron_factors
from melora.laplace.posterior import (
    LAPLACE_FILE,
    PRIOR_GRID,
    KronPosterior,
    adapter_digest,
    save_posterior,
)
from melora.laplace.predictive import glm_moments, matched_linears, probit_log_probs


logger = logging.getLogger(__name__)

PRIOR_METHODS = ("marglik", "val_nll")
VAL_NLL_GRID = (-4.0, 6.0, 41)


@dataclass
class LaplaceFitConfig:
    """Settings of one Laplace fit (the flags of `scripts/laplace.py`).

    Attributes:
        adapter (`str`): the MAP adapter directory (`adapter-best/` of a `--method map` run).
        task (`str`): the task whose train split the posterior is fitted on (`obqa`, `arc_e`, ...).
        output_dir (`str`, *optional*): the LAP directory; default `<adapter>/laplace`.
        model (`str`, *optional*): base model path or hub id; default the embedded SmolLM2.
        prior_method (`str`): `marglik` (Laplace evidence, the default, as Laplace-LoRA's full-train setting) or
            `val_nll` (validation NLL of the probit predictive, Laplace-LoRA's train/val setting).
        batch_size (`int`): questions per forward.
        max_length (`int`): prompt token budget (the protocol's, 300 by default, as in training).
        train_limit (`int`, *optional*): use only the first N training questions (smoke tests).
        val_limit (`int`, *optional*): use only the first N validation questions (`val_nll`).
        device (`str`): torch device.
        dtype (`str`): base model dtype (`float32`, `bfloat16`); curvature is always accumulated in float32.
    """

    adapter: str
    task: str
    output_dir: str | None = None
    model: str | None = None
    prior_method: str = "marglik"
    batch_size: int = 4
    max_length: int = 300
    train_limit: int | None = None
    val_limit: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    grid: tuple[float, float, int] = field(default=PRIOR_GRID)

    def __post_init__(self) -> None:
        if self.prior_method not in PRIOR_METHODS:
            raise MeloraError(f"Expected `prior_method` to be one of {PRIOR_METHODS}, but got {self.prior_method!r}.")
        if self.batch_size < 1:
            raise MeloraError(f"Expected `batch_size` to be a positive int, but got {self.batch_size!r}.")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MeloraError(f"Expected `{name}` to be a positive int, but got {value!r}.")


def _batches(examples: Sequence, tokenizer, batch_size: int, device: torch.device, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    from melora.readout import collate

    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        yield collate(examples[start : start + batch_size], tokenizer).to(device)


def theta_sq_norm(model: torch.nn.Module) -> float:
    """`||theta*||^2`, the squared norm of every LoRA weight the posterior covers (float64)."""
    return float(sum(lin.module.weight.detach().double().pow(2).sum() for lin in lora_linears(model)))


def validation_nll(
    model: torch.nn.Module, batches: Iterator, posterior: KronPosterior, deltas: Sequence[float]
) -> np.ndarray:
    """Mean NLL of the probit GLM predictive on `batches` for each prior precision in `deltas` `(D,)`."""
    linears = matched_linears(model, posterior)
    total, n = np.zeros(len(deltas)), 0
    for batch in batches:
        moments = glm_moments(model, batch, posterior, prior_precisions=deltas, linears=linears)
        log_p = probit_log_probs(moments.mean, moments.cov, moments.choice_mask)  # (D, B, K)
        gold = log_p.gather(2, batch.labels[None, :, None].expand(len(deltas), -1, 1))[..., 0]  # (D, B)
        total -= gold.sum(dim=1).cpu().numpy()
        n += len(batch)
    return total / n


def fit_laplace(cfg: LaplaceFitConfig) -> Path:
    """Fit, tune and write the Laplace posterior of `cfg.adapter` (see the module docstring); returns the LAP dir.

    Raises:
        AdapterError: the adapter is not a plain LoRA adapter, or does not fit the base model.
        MeloraError: bad settings or unavailable data.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from melora.adapters import adapter_kind, load_adapter
    from melora.checkpoint import atomic_directory
    from melora.embedded_model import resolve_model
    from melora.protocol import load_examples

    kind = adapter_kind(cfg.adapter)
    if kind != "lora":
        raise AdapterError(
            f"A Laplace posterior is fitted on a plain LoRA (MAP) adapter, but '{cfg.adapter}' is a {kind} adapter."
        )
    base_path = resolve_model(cfg.model)
    device = torch.device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, cfg.dtype))
    model = load_adapter(base, cfg.adapter).to(device).eval()

    train = load_examples(cfg.task, "train", tokenizer=tokenizer, max_length=cfg.max_length, limit=cfg.train_limit)
    factors = accumulate_kron_factors(model, _batches(train, tokenizer, cfg.batch_size, device, "K-FAC (train)"))
    posterior = KronPosterior.from_factors(factors)
    sq_norm = theta_sq_norm(model)
    log10 = np.linspace(*cfg.grid[:2], int(cfg.grid[2]))
    search: dict = {"log10_grid": [float(x) for x in log10]}
    if cfg.prior_method == "marglik":
        delta, log_z = posterior.optimize_prior_precision(factors.log_likelihood, sq_norm, grid=cfg.grid)
    else:
        log10 = np.linspace(*VAL_NLL_GRID[:2], int(VAL_NLL_GRID[2]))
        val = load_examples(
            cfg.task, "validation", tokenizer=tokenizer, max_length=cfg.max_length, limit=cfg.val_limit
        )
        nlls = validation_nll(
            model, _batches(val, tokenizer, cfg.batch_size, device, "prior (validation NLL)"), posterior, 10.0**log10
        )
        posterior.prior_precision = float(10.0 ** log10[int(np.argmin(nlls))])
        delta = posterior.prior_precision
        log_z = posterior.log_marginal_likelihood(delta, factors.log_likelihood, sq_norm)
        search = {"log10_grid": [float(x) for x in log10], "val_nll": [float(x) for x in nlls], "n_val": len(val)}
    logger.info("prior precision %.4g (%s), log marginal likelihood %.4f", delta, cfg.prior_method, log_z)

    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.adapter) / "laplace"
    meta = {
        "format": "melora-laplace",
        "version": 1,
        "adapter": os.path.relpath(os.path.abspath(cfg.adapter), os.path.abspath(out)),
        "adapter_sha256": adapter_digest(cfg.adapter),
        "base_model": base_path,
        "task": cfg.task,
        "split": "train",
        "answer_format": "letters",
        "max_length": cfg.max_length,
        "n_examples": factors.n_examples,
        "n_tokens": factors.n_tokens,
        "n_params": posterior.n_params,
        "curvature": "kfac-expand-ggn",
        "prior_method": cfg.prior_method,
        "prior_precision": float(delta),
        "log_likelihood": factors.log_likelihood,
        "theta_sq_norm": sq_norm,
        "log_marginal_likelihood": float(log_z),
        "prior_search": search,
    }
    with atomic_directory(out) as tmp:
        save_posterior(posterior, tmp)
        (tmp / LAPLACE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out
