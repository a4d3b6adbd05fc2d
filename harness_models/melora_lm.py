"""The `melora` lm-eval model: a Hugging Face causal LM with a (Bayesian) adapter, averaged over posterior samples.

```
lm_eval --model melora --model_args pretrained=PATH_OR_ID,adapter=ADAPTER_DIR,samples=10 --tasks melora_ood
```

`MeloraLM` is lm-eval's `HFLM` (batching, `--device`, `--batch_size`, data-parallel `accelerate launch -m lm_eval`,
`--log_samples`, caching all behave as for `--model hf`) with four overrides, each small:

- `loglikelihood` sends the documents whose answers have several tokens (cloze tasks, lm-eval's own `arc_easy`, ...)
  to the library (`melora.evaluation.predict_log_likelihoods`) when it averages several samples or members, because
  the predictive of a whole answer, `log mean_s exp(sum_t log p_s(token_t))`, is not the per-token average the
  rows below compute; single-token answers (the letter format) stay on `HFLM`'s path, where the two coincide;

- `_create_model` loads the adapter(s) onto the base model through the project loader, right after `HFLM` built the
  base model and before it places the model on its device;
- `_loglikelihood_tokens` records, for the duration of one call, which context every model input row belongs to (the
  rows `_model_call` receives are padded token tensors without that boundary), then runs `HFLM`'s own method;
- `_model_call` returns the log posterior predictive over the vocabulary instead of one forward's logits: for `B`
  input rows and `S` samples it runs the `B * S` rows (doc-major, each document repeated `S` times) in forwards of at
  most `--batch_size` rows, row `s` of document `d` with weight sample `row_seed(doc_seed(d), s)`, and accumulates
  `log mean_s p_s` per document (float32 log-sum-exp; `average=logits`: the mean of log-softmax, renormalised).
  `HFLM` then reads the answer tokens' log-probabilities from it as usual.

Seeds. A document's seed is a hash of the run `seed` and its context tokens (`doc_seed`), so every choice of a
question shares the same weight samples (single-token choices share one input row anyway: lm-eval's logits cache),
and a document gets the same samples at any batch size, order or data-parallel split: the same seed gives the same
numbers (up to floating-point differences of batched matrix products across batch shapes).

model_args (all scalars; anything else is refused by name):

- `pretrained` (default: the embedded model), `adapter` (an adapter directory, or an ensemble directory holding
  `ensemble.json`: see `harness_models.adapter_set`), `samples` (posterior samples, default 10; 0 = the posterior
  mean, i.e. the merged model), `average` (`probs`, the posterior predictive, default; or `logits`), `seed` (default
  0), `mc_dropout` (keep the LoRA dropout on at evaluation: `samples` stochastic passes, for the MC-dropout baseline);
- every named argument of lm-eval's `HFLM` (`dtype`, `max_length`, `tokenizer`, ...), except `peft`, which would load
  an adapter as plain LoRA.

Reproducibility by kind: Me-LoRA and BLoB draw their samples from per-row seeded generators, and MC dropout its masks
from a hash of the same row seeds (`melora.mc_dropout`), so all three give the same numbers at any `--batch_size`;
plain LoRA and `samples=0` are deterministic. Generation requests (`generate_until`) use the posterior mean.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from harness_models import laplace as lap  # LAP route (harness_models.laplace)
from harness_models.adapter_set import (
    AdapterSet,
    load_adapter_set,
    lora_dropout_rate,
    resolve_adapter,
)
from melora.errors import MeloraError, MeloraWarning
from melora.predictive import AVERAGES


if TYPE_CHECKING:
    from collections.abc import Sequence

MELORA_ARGS = ("pretrained", "adapter", "samples", "average", "seed", "mc_dropout")
DEFAULT_SAMPLES = 10
_MAX_SEED = 2**63
# HFLM arguments that would bypass the project loader (`peft` loads any adapter as plain LoRA).
_REFUSED_HFLM_ARGS = {
    "peft": "pass the adapter as `adapter=` (plain PEFT loading drops Me-LoRA's and BLoB's posterior)"
}
# Keyword arguments HFLM forwards to `from_pretrained` that are worth allowing by name.
_MODEL_KWARGS = ("attn_implementation", "low_cpu_mem_usage")


def doc_seed(run_seed: int, context_tokens: Sequence[int]) -> int:
    """Seed of a document: the first 8 bytes of `blake2b("melora-doc:<run_seed>:" + context token ids)`, 63 bits.

    The same context under the same run seed always gets the same seed, on every machine and in every process.
    """
    h = hashlib.blake2b(f"melora-doc:{int(run_seed)}:".encode(), digest_size=8)
    h.update(",".join(str(int(t)) for t in context_tokens).encode())
    return int.from_bytes(h.digest(), "little") % _MAX_SEED


def valid_model_args() -> tuple[str, ...]:
    """Every model_arg `--model melora` accepts, sorted."""
    hflm = [
        name
        for name, p in inspect.signature(HFLM.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in _REFUSED_HFLM_ARGS
    ]
    return tuple(sorted(set(MELORA_ARGS) | set(hflm) | set(_MODEL_KWARGS)))


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    for name in kwargs:
        if name in _REFUSED_HFLM_ARGS:
            raise MeloraError(f"model_arg `{name}` is not supported by --model melora: {_REFUSED_HFLM_ARGS[name]}.")
    unknown = sorted(set(kwargs) - set(valid_model_args()))
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid_model_args(), n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise MeloraError(
            f"Unknown model_arg {', '.join(hints)} for --model melora. Valid: {', '.join(valid_model_args())}."
        )


def _as_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value, ok = int(value), True
    if not ok or value < minimum or (maximum is not None and value >= maximum):
        bound = f">= {minimum}" + (f" and < {maximum}" if maximum is not None else "")
        raise MeloraError(f"Expected model_arg `{name}` to be an int {bound}, but got {value!r}.")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise MeloraError(f"Expected model_arg `{name}` to be true or false, but got {value!r}.")


@register_model("melora")
class MeloraLM(HFLM):
    """lm-eval's `HFLM` over a base model plus a Me-LoRA, BLoB, LoRA or ensemble adapter, with MC averaging.

    Args:
        pretrained (`str`, *optional*): base model path or hub id; default the embedded SmolLM2-135M-Instruct.
        adapter (`str`, *optional*): adapter or ensemble directory; none evaluates the base model.
        samples (`int`): posterior samples per document (default 10); 0 uses the posterior mean (deterministic).
        average (`str`): `probs` (posterior predictive, default) or `logits` (mean log-softmax, renormalised).
        seed (`int`): run seed from which every document's samples derive (default 0).
        mc_dropout (`bool`): keep LoRA dropout active at evaluation and average `samples` passes (MC dropout).
        **kwargs: named arguments of lm-eval's `HFLM` (`dtype`, `batch_size`, `device`, ...).

    Raises:
        MeloraError: an unknown or invalid model_arg.
        AdapterError: an adapter that does not exist, is of an unknown kind, or belongs to another base model.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        adapter: str | None = None,
        samples: int = DEFAULT_SAMPLES,
        average: str = "probs",
        seed: int = 0,
        mc_dropout: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_kwargs(kwargs)
        self.samples_requested = _as_int("samples", samples, 0)
        if average not in AVERAGES:
            raise MeloraError(f"Expected model_arg `average` to be one of {AVERAGES}, but got {average!r}.")
        self.average = average
        self.seed = _as_int("seed", seed, 0, _MAX_SEED)
        self.mc_dropout = _as_bool("mc_dropout", mc_dropout)
        self.adapters: AdapterSet | None = resolve_adapter(adapter) if adapter not in (None, "") else None
        self.samples = self._effective_samples()
        self._row_seeds: dict[int, dict[tuple[int, ...], int]] = {}  # filled during _loglikelihood_tokens
        self._warned_generation = False

        from melora.embedded_model import resolve_model

        if not isinstance(pretrained, str) and pretrained is not None:
            raise MeloraError("model_arg `pretrained` must be a path or hub id; pass model instances to HFLM instead.")
        if kwargs.get("backend", "causal") not in ("causal", "default"):
            raise MeloraError(f"--model melora evaluates causal LMs only, but got backend={kwargs['backend']!r}.")
        kwargs["backend"] = "causal"
        kwargs.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")  # HFLM's default is "cuda"
        super().__init__(pretrained=resolve_model(pretrained), **kwargs)
        if self.mc_dropout and self.samples > 0 and lora_dropout_rate(self.model) == 0.0:
            warnings.warn(
                "mc_dropout=true, but the adapter has no LoRA dropout: the passes are identical.",
                MeloraWarning,
                stacklevel=2,
            )

    # -- settings ----------------------------------------------------------------------------------------------

    def _effective_samples(self) -> int:
        """Stochastic passes per document: 0 for a deterministic model (posterior mean, plain LoRA, no adapter)."""
        requested = self.samples_requested
        if requested == 0:
            if self.mc_dropout:
                warnings.warn(
                    "mc_dropout=true is ignored with samples=0 (the mean model).", MeloraWarning, stacklevel=3
                )
            return 0
        stochastic = self.mc_dropout or (self.adapters is not None and self.adapters.is_bayesian)
        if not stochastic:
            what = "no adapter" if self.adapters is None else f"a plain LoRA adapter ({self.adapters.path})"
            warnings.warn(
                f"samples={requested} is ignored: {what} has no posterior to sample and mc_dropout is off; "
                "running one deterministic pass.",
                MeloraWarning,
                stacklevel=3,
            )
            return 0
        return requested

    def get_model_info(self) -> dict[str, Any]:
        """`HFLM`'s model info plus the resolved melora settings (they go into the results file's `config`)."""
        info = super().get_model_info()
        info.update(
            base_model=getattr(self, "pretrained", None),
            adapter=self.adapters.path if self.adapters else None,
            adapter_kind=("ensemble:" if self.adapters and self.adapters.is_ensemble else "")
            + (self.adapters.kind if self.adapters else "none"),
            ensemble_members=len(self.adapters.members) if self.adapters else 0,
            samples=self.samples,
            samples_requested=self.samples_requested,
            average=self.average,
            seed=self.seed,
            mc_dropout=self.mc_dropout,
            sampling="posterior_mean" if self.samples == 0 else "mc",
            training_method=_training_method(self.adapters.path) if self.adapters else None,
        )
        if self.adapters is not None and self.adapters.kind == lap.LAPLACE_KIND:  # LAP (harness_models.laplace)
            info.update(lap.model_info(self))
        return info

    # -- HFLM overrides ----------------------------------------------------------------------------------------

    def _create_model(self, pretrained: str, *args: Any, **kwargs: Any) -> None:
        """Build the base model as `HFLM` does, then load the adapter(s) through the project loader."""
        super()._create_model(pretrained, *args, **kwargs)
        if self.adapters is not None:
            self._model = load_adapter_set(self._model, self.adapters)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Log-likelihood requests, averaged over posterior samples (and ensemble members) per whole answer.

        The posterior predictive of an answer of several tokens is the mean over samples of that sample's
        probability of the whole answer, `log mean_s exp(sum_t log p_s(token_t))`; averaging per-token
        distributions first (what `_model_call` does) is a different quantity once an answer has two tokens or more.
        So the requests of every document with a multi-token answer are scored by the library
        (`melora.evaluation.predict_log_likelihoods`: all of a document's choices in one packed row per sample,
        every choice seeing the same weight sample, seeded as `_model_call` seeds the document), and only the
        documents whose answers are single tokens (the letter format) go through `HFLM`'s batching, where the two
        quantities coincide. With one pass (no sampling, one adapter) everything goes through `HFLM`.

        The `is_greedy` flag of a multi-token answer averaged this way is not computed (returned False): it only
        matters to generation-style metrics (e.g. lambada's accuracy), not to multiple-choice tasks.
        """
        members = len(self.adapters.members) if self.adapters else 1
        stochastic = self.samples > 1 and self.adapters is not None and (self.adapters.is_bayesian or self.mc_dropout)
        laplace = self.adapters is not None and self.adapters.kind == lap.LAPLACE_KIND
        if laplace or not (stochastic or members > 1):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        by_doc: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            by_doc.setdefault((request.task_name, request.doc_id), []).append(i)
        multi = [key for key, idx in by_doc.items() if any(self._n_continuation_tokens(requests[i]) > 1 for i in idx)]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        single = [i for key, idx in by_doc.items() if key not in set(multi) for i in idx]
        if single:
            for i, result in zip(single, super().loglikelihood([requests[i] for i in single], disable_tqdm)):
                results[i] = result
        if multi:
            scored = self._score_whole_answers([[requests[i] for i in by_doc[key]] for key in multi], disable_tqdm)
            for key, doc_results in zip(multi, scored):
                for i, result in zip(by_doc[key], doc_results):
                    results[i] = result
        return results

    def _n_continuation_tokens(self, request: Any) -> int:
        context, continuation = request.args
        return len(self._encode_pair(context, continuation)[1]) if context else len(self.tok_encode(continuation))

    def _score_whole_answers(self, documents: list[list], disable_tqdm: bool) -> list[list[tuple[float, bool]]]:
        """`(log-likelihood, False)` of every request of each document, scored by the library."""
        from melora.evaluation import predict_log_likelihoods

        examples = [_as_example(doc_requests, k) for k, doc_requests in enumerate(documents)]
        doc_seeds = [doc_seed(self.seed, self.tok_encode(ex.prompt)) for ex in examples]
        names = [name for name, _ in self.adapters.members]
        batch_size = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else 8
        per_member = []
        for name in names:
            if len(names) > 1:
                self.model.set_adapter(name)
            per_member.append(
                predict_log_likelihoods(
                    self.model,
                    self.tokenizer,
                    examples,
                    batch_size=batch_size,
                    samples=self.samples,
                    seed=self.seed,
                    average=self.average,
                    mc_dropout=self.mc_dropout,
                    doc_seeds=doc_seeds,
                    progress=False if disable_tqdm else "whole-answer likelihoods",
                )
            )
        if len(names) > 1:
            self.model.set_adapter(names[0])
        out = []
        for k in range(len(documents)):
            stacked = torch.from_numpy(np.stack([member[k] for member in per_member])).double()  # (M, K)
            if self.average == "probs":
                combined = torch.logsumexp(stacked, dim=0) - math.log(len(names))  # mean of member predictives
            else:
                combined = stacked.mean(dim=0)
            out.append([(float(value), False) for value in combined.tolist()])
        return out

    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list:
        """`HFLM`'s method, with every input row's document seed recorded for `_model_call` during the call.

        A request is `((context, continuation), context_tokens, continuation_tokens)`; `HFLM` feeds the model
        `(context_tokens + continuation_tokens)[-(max_length + 1):][:-1]`, right-padded. The row is keyed by those
        tokens and seeded from the context tokens only, so all choices of a question share their samples.
        """
        table: dict[int, dict[tuple[int, ...], int]] = {}
        for _, context, continuation in requests:
            row = tuple((list(context) + list(continuation))[-(self.max_length + 1) :][:-1])
            table.setdefault(len(row), {}).setdefault(row, doc_seed(self.seed, context))
        self._row_seeds = dict(sorted(table.items(), reverse=True))  # longest first: see `_doc_seeds`
        if self.adapters is not None and self.adapters.kind == lap.LAPLACE_KIND:  # LAP (harness_models.laplace)
            lap.record_choices(self, requests)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._row_seeds = {}

    def _doc_seeds(self, inps: torch.Tensor) -> list[int]:
        """The document seed of each (right-padded) input row: its longest recorded prefix, else a hash of the row."""
        seeds = []
        for row in inps.tolist():
            found = None
            for length, rows in self._row_seeds.items():
                if length <= len(row) and (found := rows.get(tuple(row[:length]))) is not None:
                    break
            seeds.append(found if found is not None else doc_seed(self.seed, row))  # e.g. batch-size probing
        return seeds

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: Any = None
    ) -> torch.Tensor:
        """Log posterior predictive `(B, L, V)` of the input rows (plain logits for a deterministic model)."""
        from melora.adapters.sampling import sampling

        if self.adapters is not None and self.adapters.kind == lap.LAPLACE_KIND:  # LAP (harness_models.laplace)
            return lap.model_call(self, inps)
        members = [name for name, _ in self.adapters.members] if self.adapters else [None]
        if self.samples == 0 and len(members) == 1:
            with sampling(self.model, "mean"):
                return super()._model_call(inps, attn_mask, labels)  # (B, L, V) logits
        if max(self.samples, 1) * len(members) == 1:  # one pass: its logits, no averaging (HFLM log-softmaxes them)
            mode = "sample" if self.adapters is not None and self.adapters.is_bayesian else "mean"
            from melora.adapters.sampling import sample_seeds

            seeds = sample_seeds(self._doc_seeds(inps), 1)  # row r is the only pass of document r
            with self._mc_dropout(seeds, active=self.mc_dropout):
                with sampling(self.model, mode, seeds=seeds if mode == "sample" else None):
                    return super()._model_call(inps, attn_mask, labels)  # (B, L, V) logits
        n_passes = max(self.samples, 1)
        seeds = self._doc_seeds(inps)
        total = None  # (B, L, V) float32 accumulator
        for member in members:
            if member is not None:
                self.model.set_adapter(member)
            total = self._accumulate(inps, seeds, n_passes, total)
        if members[0] is not None and len(members) > 1:
            self.model.set_adapter(members[0])
        n = n_passes * len(members)
        if self.average == "probs":
            return total - math.log(n)  # log mean_s p_s
        return torch.log_softmax(total / n, dim=-1)  # mean log-softmax, renormalised

    def _accumulate(
        self, inps: torch.Tensor, seeds: list[int], n_passes: int, total: torch.Tensor | None
    ) -> torch.Tensor:
        """Add `n_passes` passes of the active adapter for every row to `total`, in forwards of <= batch-size rows."""
        from melora.adapters.sampling import sample_seeds, sampling

        n_rows = inps.shape[0] * n_passes  # B * S rows, doc-major: row r is pass r % S of document r // S
        per_forward = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else inps.shape[0]
        row_seeds = sample_seeds(seeds, n_passes)
        stochastic = self.samples > 0
        mode = "sample" if stochastic and self.adapters is not None and self.adapters.is_bayesian else "mean"
        for start in range(0, n_rows, per_forward):
            rows = list(range(start, min(start + per_forward, n_rows)))
            docs = torch.tensor([r // n_passes for r in rows], device=inps.device)
            chunk_seeds = [row_seeds[r] for r in rows]
            with self._mc_dropout(chunk_seeds, active=self.mc_dropout and stochastic):
                with sampling(self.model, mode, seeds=chunk_seeds if mode == "sample" else None):
                    logits = super()._model_call(inps[docs])  # (R, L, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (R, L, V)
            if total is None:
                fill = -math.inf if self.average == "probs" else 0.0
                total = torch.full((inps.shape[0], *log_probs.shape[1:]), fill, device=log_probs.device)  # (B, L, V)
            for i, d in enumerate(docs.tolist()):
                total[d] = (
                    torch.logaddexp(total[d], log_probs[i]) if self.average == "probs" else total[d] + log_probs[i]
                )
        return total

    def _mc_dropout(self, chunk_seeds: list[int], active: bool) -> AbstractContextManager:
        """MC dropout for one forward, each row's masks keyed by its seed (`melora.mc_dropout`), if `active`."""
        from melora.mc_dropout import seeded_lora_dropout

        return seeded_lora_dropout(self.model, chunk_seeds) if active else nullcontext()

    def _model_generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Generation with the posterior mean (MC averaging applies to log-likelihood requests)."""
        from melora.adapters.sampling import sampling

        if self.adapters is not None and len(self.adapters.members) > 1:
            raise MeloraError(
                "Generation tasks are not supported with an ensemble adapter (which member would speak?)."
            )
        if self.samples > 0 and not self._warned_generation:
            warnings.warn(
                "Generation uses the posterior mean; `samples` applies to log-likelihoods.",
                MeloraWarning,
                stacklevel=2,
            )
            self._warned_generation = True
        with sampling(self.model, "mean"):
            return super()._model_generate(*args, **kwargs)


def _as_example(doc_requests: Sequence[Any], index: int) -> Any:
    """One document's `(context, continuation)` requests as a cloze `Example`: the shared prompt, per-choice contexts.

    The prompt is the contexts' common prefix cut back to a word boundary (so its tokens are a prefix of every
    choice's), and each choice keeps the rest of its context (WinoGrande's option in the blank) as unscored context.
    Trailing whitespace of a context moves to its continuation, as lm-eval's own encoding does.
    """
    import os

    from melora.protocol import Example

    pairs = []
    for request in doc_requests:
        context, continuation = request.args
        stripped = context.rstrip()
        pairs.append((stripped, context[len(stripped) :] + continuation))
    contexts = [c for c, _ in pairs]
    prompt = os.path.commonprefix(contexts)
    if any(c != prompt for c in contexts):
        if prompt and any(c[len(prompt) : len(prompt) + 1].strip() for c in contexts) and not prompt[-1].isspace():
            prompt = prompt[: max(prompt.rfind(" "), 0)]  # mid-word: back to the last word boundary
        prompt = prompt.rstrip()
    suffixes = tuple(c[len(prompt) :] for c in contexts)
    return Example(
        prompt=prompt,
        answers=tuple(a for _, a in pairs),
        gold=0,
        doc_id=f"request-group-{index}",
        contexts=suffixes if any(suffixes) else (),
        answer_format="cloze",
    )


def _training_method(adapter_path: str) -> str | None:
    """The `--method` that trained the adapter (`map`, `mle`, ...), as `scripts/train.py` recorded it, if it did."""
    import json
    import os

    for name, key in (("training_info.json", "method"), ("ensemble.json", "member_method")):
        path = os.path.join(adapter_path, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return json.load(f).get(key)
            except (OSError, ValueError):
                return None
    return None
