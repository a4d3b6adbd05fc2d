"""Laplace-LoRA (LAP): a post-hoc Kronecker-factored Laplace posterior over a MAP LoRA adapter's weights.

Modules, one concept each: `capture` (hooks on the LoRA linears), `kfac` (the K-FAC GGN of the answer read-out),
`posterior` (eigenbases, prior precision, marginal likelihood, files), `predictive` (the linearised predictive:
probit and Monte Carlo), `memory` (factor sizes from a config), `fit` (the end-to-end fit behind
`scripts/laplace.py`). `docs/laplace.md` is the guide.
"""

from __future__ import annotations

from melora.laplace.capture import LoraCapture, LoraLinear, capture_lora, lora_linears
from melora.laplace.fit import LaplaceFitConfig, fit_laplace
from melora.laplace.kfac import KronFactors, accumulate_kron_factors, answer_logits, ggn_sqrt
from melora.laplace.memory import kfac_factor_floats
from melora.laplace.posterior import (
    LAPLACE_FILE,
    POSTERIOR_FILE,
    KronFactor,
    KronPosterior,
    laplace_adapter_dir,
    load_posterior,
    read_laplace_meta,
    save_posterior,
)
from melora.laplace.predictive import (
    GLMMoments,
    glm_moments,
    matched_linears,
    mc_log_probs,
    predictive_log_probs,
    probit_log_probs,
)


__all__ = [
    "LAPLACE_FILE",
    "POSTERIOR_FILE",
    "GLMMoments",
    "KronFactor",
    "KronFactors",
    "KronPosterior",
    "LaplaceFitConfig",
    "LoraCapture",
    "LoraLinear",
    "accumulate_kron_factors",
    "answer_logits",
    "capture_lora",
    "fit_laplace",
    "ggn_sqrt",
    "glm_moments",
    "kfac_factor_floats",
    "laplace_adapter_dir",
    "load_posterior",
    "lora_linears",
    "matched_linears",
    "mc_log_probs",
    "predictive_log_probs",
    "probit_log_probs",
    "read_laplace_meta",
    "save_posterior",
]
