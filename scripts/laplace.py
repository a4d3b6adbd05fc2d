"""Fit a Kronecker-factored Laplace posterior (LAP, Laplace-LoRA) to a trained MAP LoRA adapter.

Examples:
    python scripts/train.py --method map --task obqa --output-dir runs/obqa-map
    python scripts/laplace.py --adapter runs/obqa-map/adapter-best --task obqa
    lm_eval --model melora --model_args adapter=runs/obqa-map/adapter-best/laplace,samples=0 --tasks melora_ood

The posterior is the K-FAC GGN of the answer read-out (the K answer-token logits at the answer position) over the
LoRA weights, fitted on the task's train split; the prior precision is tuned by the Laplace marginal likelihood
(default) or by the validation NLL of the probit predictive (--prior-method val_nll). Writes --output-dir (default
ADAPTER/laplace): laplace_posterior.safetensors and laplace.json (docs/laplace.md describes both). The test split
is never read.
"""

from __future__ import annotations

import argparse
import logging
import sys

from melora.errors import MeloraError
from melora.laplace.fit import PRIOR_METHODS, LaplaceFitConfig, fit_laplace
from melora.protocol import TASKS


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its default and meaning."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog="laplace.py"
    )
    parser.add_argument("--adapter", required=True, help="the MAP adapter directory (a plain LoRA adapter)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="task whose train split is used")
    parser.add_argument("--output-dir", default=None, help="LAP directory to write (default: ADAPTER/laplace)")
    parser.add_argument("--model", default=None, help="base model path or hub id (default: embedded SmolLM2)")
    parser.add_argument(
        "--prior-method",
        default="marglik",
        choices=PRIOR_METHODS,
        help="marglik: maximise the Laplace marginal likelihood (default); val_nll: minimise the validation NLL",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="questions per forward (default: 4)")
    parser.add_argument("--max-length", type=int, default=300, help="prompt token budget (default: 300)")
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N train questions only")
    parser.add_argument("--val-limit", type=int, default=None, help="use the first N validation questions only")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="base model dtype (default: float32)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = LaplaceFitConfig(**{k: v for k, v in vars(args).items()})
        out = fit_laplace(cfg)
    except MeloraError as e:
        print(f"laplace.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
