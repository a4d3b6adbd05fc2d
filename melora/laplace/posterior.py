"""The Kronecker-factored Laplace posterior over LoRA weights: eigenbases, prior precision, evidence, files.

Posterior. Around the MAP weights `theta*`, with an isotropic Gaussian prior `N(0, 1/delta I)` on every LoRA weight
(`delta` the prior precision) and the K-FAC GGN `H = blockdiag_W (G_W (x) A_W)` (`melora.laplace.kfac`):

    q(theta) = N(theta*, P^-1),   P = H + delta I.

With the eigendecompositions `G = U_G diag(g) U_G^T` and `A = U_A diag(a) U_A^T`, each block is
`P_W = (U_G (x) U_A) diag(g_i a_j + delta) (U_G (x) U_A)^T`, so inverses and determinants cost nothing once the
factors are decomposed. Only the eigenbases and eigenvalues are kept (`KronPosterior`).

Log marginal likelihood (Laplace evidence), with `p` the number of LoRA weights and `LL = sum log p(y|x, theta*)`:

    log Z(delta) = LL - 1/2 delta ||theta*||^2 + p/2 log delta - 1/2 sum_{W,i,j} log(g_i a_j + delta)

(the `+-p/2 log 2 pi` of prior and posterior cancel). Note the *squared* norm and the *minus* sign of the prior
term (`log N(theta*; 0, 1/delta I)`): the `bayesian-lora` package's `model_evidence` has `+ (1/s2) ||theta||` there
(see that package's issue #4). `optimize_prior_precision` maximises it over `log delta`: a grid over `[1e-4, 1e6]`,
then a bounded Brent search in the bracket around the best grid point (so the maximum a brute-force grid finds is
the one returned, refined). The stationary point satisfies MacKay's fixed point
`delta = (sum g_i a_j / (g_i a_j + delta)) / ||theta*||^2`.

Files (`save_posterior` / `load_posterior`), in the LAP directory:

- `laplace_posterior.safetensors`: float32 tensors, per LoRA factor `NAME` (PEFT path without the adapter name,
  e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A`): `NAME.grad_eigvals` `(out,)`,
  `NAME.grad_eigvecs` `(out, out)` (columns are eigenvectors of `G`), `NAME.act_eigvals` `(in,)`,
  `NAME.act_eigvecs` `(in, in)` (of `A`). Factors reading the same input (a layer's `q_proj.lora_A` and
  `v_proj.lora_A`) share one `A`: it is stored once, under the first name, and the file's metadata
  `act_shared_with` (JSON `{name: first name}`) says who shares it;
- `laplace.json`: the settings and the prior precision (`melora.laplace.fit` documents every field).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from melora.errors import AdapterError
from melora.laplace.kfac import KronFactors


POSTERIOR_FILE = "laplace_posterior.safetensors"
LAPLACE_FILE = "laplace.json"
PRIOR_GRID = (-4.0, 6.0, 101)  # log10 delta: from, to, points
_PARTS = ("grad_eigvals", "grad_eigvecs", "act_eigvals", "act_eigvecs")


@dataclass
class KronFactor:
    """Eigendecomposition of one LoRA factor's GGN block `G (x) A` (float32).

    Attributes:
        grad_eigvals (`torch.Tensor`): `(out,)` eigenvalues of `G` (clamped at 0).
        grad_eigvecs (`torch.Tensor`): `(out, out)` eigenvectors of `G` (columns).
        act_eigvals (`torch.Tensor`): `(in,)` eigenvalues of `A` (clamped at 0).
        act_eigvecs (`torch.Tensor`): `(in, in)` eigenvectors of `A` (columns).
    """

    grad_eigvals: torch.Tensor
    grad_eigvecs: torch.Tensor
    act_eigvals: torch.Tensor
    act_eigvecs: torch.Tensor

    @property
    def eigvals(self) -> torch.Tensor:
        """`(out, in)` eigenvalues `g_i a_j` of `G (x) A`, laid out like the weight."""
        return self.grad_eigvals[:, None] * self.act_eigvals[None, :]

    def to(self, device: torch.device | str) -> KronFactor:
        """The factor on `device`."""
        return KronFactor(**{k: v.to(device) for k, v in vars(self).items()})


@dataclass
class KronPosterior:
    """`N(theta*, (H + delta I)^-1)` with `H` Kronecker-factored per LoRA factor (see the module docstring).

    Attributes:
        factors (`dict[str, KronFactor]`): one decomposed block per LoRA factor, in module order.
        prior_precision (`float`): `delta`.
    """

    factors: dict[str, KronFactor]
    prior_precision: float = 1.0

    @classmethod
    def from_factors(cls, kron: KronFactors, prior_precision: float = 1.0) -> KronPosterior:
        """Decompose summed K-FAC factors (in float64, stored as float32)."""
        factors, act_eig = {}, {}
        for name in kron.grad:
            g_vals, g_vecs = torch.linalg.eigh(kron.grad[name].double())
            key = id(kron.act[name])  # shared A factors are decomposed once and stay shared
            if key not in act_eig:
                a_vals, a_vecs = torch.linalg.eigh(kron.act[name].double())
                act_eig[key] = (a_vals.clamp_min(0).float(), a_vecs.float())
            factors[name] = KronFactor(
                grad_eigvals=g_vals.clamp_min(0).float(),
                grad_eigvecs=g_vecs.float(),
                act_eigvals=act_eig[key][0],
                act_eigvecs=act_eig[key][1],
            )
        return cls(factors=factors, prior_precision=prior_precision)

    @property
    def n_params(self) -> int:
        """Number of LoRA weights the posterior covers."""
        return sum(f.grad_eigvals.numel() * f.act_eigvals.numel() for f in self.factors.values())

    def to(self, device: torch.device | str) -> KronPosterior:
        """The posterior on `device`."""
        moved: dict[int, torch.Tensor] = {}  # keep shared A factors shared on the new device

        def move(t: torch.Tensor) -> torch.Tensor:
            return moved.setdefault(id(t), t.to(device))

        factors = {name: KronFactor(**{k: move(v) for k, v in vars(f).items()}) for name, f in self.factors.items()}
        return KronPosterior(factors, self.prior_precision)

    def log_det_precision(self, prior_precision: float | np.ndarray) -> float | np.ndarray:
        """`log det(H + delta I) = sum log(g_i a_j + delta)`, for one `delta` or an array of them (float64)."""
        deltas = np.atleast_1d(np.asarray(prior_precision, dtype=np.float64))
        total = np.zeros_like(deltas)
        for f in self.factors.values():
            lam = f.eigvals.double().flatten().cpu().numpy()  # (out * in,)
            total += np.log(lam[None, :] + deltas[:, None]).sum(axis=1)
        return total if np.ndim(prior_precision) else float(total[0])

    def log_marginal_likelihood(
        self, prior_precision: float | np.ndarray, log_likelihood: float, theta_sq_norm: float
    ) -> float | np.ndarray:
        """Laplace evidence `LL - delta/2 ||theta*||^2 + p/2 log delta - 1/2 log det(H + delta I)` (module doc)."""
        delta = np.asarray(prior_precision, dtype=np.float64)
        if np.any(delta <= 0):
            raise ValueError(f"Expected a positive prior precision, but got {prior_precision!r}.")
        value = (
            log_likelihood
            - 0.5 * delta * theta_sq_norm
            + 0.5 * self.n_params * np.log(delta)
            - 0.5 * self.log_det_precision(delta)
        )
        return value if np.ndim(prior_precision) else float(value)

    def optimize_prior_precision(
        self, log_likelihood: float, theta_sq_norm: float, grid: tuple[float, float, int] = PRIOR_GRID
    ) -> tuple[float, float]:
        """Maximise the log marginal likelihood over `delta`; returns `(delta, log Z(delta))` and sets `delta`.

        A grid of `grid[2]` points, evenly spaced in `log10 delta` over `[grid[0], grid[1]]`, then a bounded
        Brent search on `log delta` between the best grid point's neighbours.
        """
        from scipy.optimize import minimize_scalar

        log10 = np.linspace(*grid[:2], int(grid[2]))
        values = self.log_marginal_likelihood(10.0**log10, log_likelihood, theta_sq_norm)
        best = int(np.argmax(values))
        lo, hi = log10[max(best - 1, 0)], log10[min(best + 1, len(log10) - 1)]
        result = minimize_scalar(
            lambda x: -self.log_marginal_likelihood(10.0**x, log_likelihood, theta_sq_norm),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        x = float(result.x) if -result.fun >= values[best] else float(log10[best])
        self.prior_precision = 10.0**x
        return self.prior_precision, float(
            self.log_marginal_likelihood(self.prior_precision, log_likelihood, theta_sq_norm)
        )


def save_posterior(posterior: KronPosterior, directory: str | os.PathLike) -> str:
    """Write `laplace_posterior.safetensors` into `directory`; returns its path."""
    from safetensors.torch import save_file

    tensors, shared, owner = {}, {}, {}
    for name, f in posterior.factors.items():
        for part in _PARTS:
            t = getattr(f, part)
            if part.startswith("act") and id(t) in owner:  # a shared A factor: stored once
                shared[name] = owner[id(t)]
                continue
            owner.setdefault(id(t), name)
            tensors[f"{name}.{part}"] = t.detach().float().cpu().contiguous()
    path = os.path.join(os.fspath(directory), POSTERIOR_FILE)
    save_file(tensors, path, metadata={"act_shared_with": json.dumps(shared)})
    return path


def load_posterior(directory: str | os.PathLike, prior_precision: float) -> KronPosterior:
    """Read `laplace_posterior.safetensors` from `directory`.

    Raises:
        AdapterError: the file is missing, unreadable or lacks a part of some factor.
    """
    from safetensors.torch import load_file

    path = os.path.join(os.fspath(directory), POSTERIOR_FILE)
    if not os.path.isfile(path):
        raise AdapterError(f"Laplace directory '{os.fspath(directory)}' has no {POSTERIOR_FILE}.")

    from safetensors import safe_open

    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            shared = json.loads((f.metadata() or {}).get("act_shared_with", "{}"))
    except Exception as e:  # any unreadable file is one clear error
        raise AdapterError(f"Cannot read the Laplace posterior '{path}': {e}") from e
    for name, source in shared.items():
        for part in ("act_eigvals", "act_eigvecs"):
            if f"{source}.{part}" in tensors:
                tensors[f"{name}.{part}"] = tensors[f"{source}.{part}"]  # the same tensor object
    names = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in tensors))
    factors = {}
    for name in names:
        missing = [p for p in _PARTS if f"{name}.{p}" not in tensors]
        if missing:
            raise AdapterError(f"Laplace posterior '{path}' lacks {missing} of '{name}'.")
        factors[name] = KronFactor(**{p: tensors[f"{name}.{p}"] for p in _PARTS})
    if not math.isfinite(prior_precision) or prior_precision <= 0:
        raise AdapterError(f"Expected a positive prior precision for '{path}', but got {prior_precision!r}.")
    return KronPosterior(factors=factors, prior_precision=float(prior_precision))


def read_laplace_meta(directory: str | os.PathLike) -> dict:
    """The `laplace.json` of a LAP directory, checked for the fields the predictive needs.

    Raises:
        AdapterError: the file is missing, unreadable, of another format, or lacks a field.
    """

    path = os.path.join(os.fspath(directory), LAPLACE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"Cannot read the Laplace settings '{path}': {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "melora-laplace":
        raise AdapterError(f"Expected '{path}' to be a melora Laplace file (format 'melora-laplace').")
    missing = [k for k in ("adapter", "prior_precision", "answer_format") if k not in meta]
    if missing:
        raise AdapterError(f"Laplace settings '{path}' lack {missing}.")
    return meta


def laplace_adapter_dir(directory: str | os.PathLike, meta: dict | None = None) -> str:
    """The MAP adapter directory a LAP directory refers to (`adapter` in `laplace.json`, relative to it).

    Raises:
        AdapterError: the adapter is missing, or its weights changed since the posterior was fitted (their
            SHA-256 differs from `adapter_sha256`).
    """
    meta = read_laplace_meta(directory) if meta is None else meta
    adapter = os.path.normpath(os.path.join(os.fspath(directory), meta["adapter"]))
    if not os.path.isdir(adapter):
        raise AdapterError(f"Laplace directory '{os.fspath(directory)}' refers to a missing adapter '{adapter}'.")
    expected = meta.get("adapter_sha256")
    if expected is not None and adapter_digest(adapter) != expected:
        raise AdapterError(
            f"The adapter '{adapter}' changed since the Laplace posterior in '{os.fspath(directory)}' was fitted "
            "(weights digest differs): fit it again with scripts/laplace.py."
        )
    return adapter


def adapter_digest(adapter_dir: str | os.PathLike) -> str:
    """SHA-256 of the adapter's weights file (`adapter_model.safetensors` or `.bin`)."""
    import hashlib

    from melora.adapters.loader import WEIGHTS_NAMES

    for name in WEIGHTS_NAMES:
        path = os.path.join(os.fspath(adapter_dir), name)
        if os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
    raise AdapterError(f"Adapter directory '{os.fspath(adapter_dir)}' has no weights ({' or '.join(WEIGHTS_NAMES)}).")
