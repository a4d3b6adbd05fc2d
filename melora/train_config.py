"""Every training hyperparameter, with the paper's value as default (Table 7), and the `scripts/train.py` parser.

Defaults are declared once, in `TrainConfig`; the parser reads them from there.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from melora.errors import MeloraError


@dataclass
class TrainConfig:
    """A training run. Field help strings are the `--help` text.

    Defaults are the paper's (Table 7: AdamW, linear schedule, warm-up 0.02, lr 1e-4, dropout 0.1, batch 4, max
    length 300, alpha 16, r 8, KL optimiser SGD with lr 1e-4, sigma_p 0.2, 5,000 steps, checkpoint every 100 steps,
    q_proj and v_proj).
    """

    method: str = field(default="melora", metadata={"help": "melora, blob, map, mle, mcd or ens"})
    task: str = field(default="obqa", metadata={"help": "training task: wgs, wgm, arc_c, arc_e, obqa or boolq"})
    output_dir: str = field(default="runs/run", metadata={"help": "run directory (adapters, checkpoints, logs)"})
    model: str | None = field(default=None, metadata={"help": "base model path or hub id (default: embedded SmolLM2)"})
    seed: int = field(default=1, metadata={"help": "seed of data order, dropout and posterior samples"})
    max_steps: int = field(default=5000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=4, metadata={"help": "questions per step, over all processes (global batch)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (the NLL optimiser)"})
    warmup_ratio: float = field(default=0.02, metadata={"help": "linear warm-up, as a fraction of --max-steps"})
    weight_decay: float | None = field(
        default=None, metadata={"help": "AdamW weight decay (default: the method's; map 1e-5, others 0)"}
    )
    max_length: int = field(default=300, metadata={"help": "prompt token budget (long passages are shortened)"})
    answer_format: str = field(
        default="letters",
        metadata={
            "help": "letters (the paper's: one letter or True/False token after 'Answer:') or cloze (each choice's "
            "text scored as the continuation, cross-entropy over the choices' summed log-likelihoods) or cloze_norm "
            "(the same, each log-likelihood divided by its answer's length in characters, as lm-eval's acc_norm)"
        },
    )
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16, metadata={"help": "LoRA alpha (scaling alpha / r)"})
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"help": "comma-separated module names to adapt"}
    )
    kl_lr: float = field(default=1e-4, metadata={"help": "SGD learning rate of the KL optimiser (Bayesian methods)"})
    kl_weight: str = field(
        default="blundell",
        metadata={
            "help": "KL weight per step: 'blundell' (BLoB's per-epoch cycle, pi_i = 2^i / (2^(M+1) - 1), M = steps "
            "per epoch) or 'uniform' (1 / number of training questions)"
        },
    )
    prior_std: float = field(default=0.2, metadata={"help": "prior std sigma_p of the KL term"})
    prior_noise: bool = field(
        default=True, metadata={"help": "Me-LoRA: add eps ~ U(0,1) to sigma_p each step (eq. 8); off gives eq. 7"}
    )
    kl_variance: str = field(default="paper", metadata={"help": "Me-LoRA KL variance term: 'paper' or 'exact'"})
    std_init: float | None = field(
        default=None,
        metadata={"help": "Me-LoRA: initial std scale of C; BLoB: its rho range eps (default: the adapter config's)"},
    )
    eval_every: int = field(default=100, metadata={"help": "validate and checkpoint every N steps"})
    eval_samples: int = field(default=10, metadata={"help": "posterior (or MC-dropout) samples at validation"})
    eval_limit: int | None = field(default=None, metadata={"help": "validate on the first N questions only"})
    eval_batch_size: int = field(default=16, metadata={"help": "forward rows per validation call"})
    select_by: str = field(default="nll", metadata={"help": "validation metric of the best checkpoint: nll, acc, ece"})
    train_limit: int | None = field(default=None, metadata={"help": "train on the first N questions only"})
    ensemble_size: int = field(default=3, metadata={"help": "members of an ensemble (--method ens)"})
    resume: bool = field(default=False, metadata={"help": "continue from the run directory's last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing run directory first"})
    report_to: str | None = field(default=None, metadata={"help": "accelerate tracker, e.g. tensorboard (off)"})
    dtype: str = field(
        default="auto", metadata={"help": "base weights: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"}
    )
    log_every: int = field(default=1, metadata={"help": "write training loss to metrics.jsonl every N steps"})

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        checks = [
            (self.max_steps >= 1, "max_steps", "a positive int"),
            (self.batch_size >= 1, "batch_size", "a positive int"),
            (self.lr > 0, "lr", "positive"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (self.rank >= 1, "rank", "a positive int"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.kl_lr >= 0, "kl_lr", ">= 0"),
            (self.kl_weight in ("blundell", "uniform"), "kl_weight", "'blundell' or 'uniform'"),
            (self.prior_std > 0, "prior_std", "positive"),
            (self.eval_every >= 1, "eval_every", "a positive int"),
            (self.eval_samples >= 0, "eval_samples", ">= 0"),
            (self.select_by in ("nll", "acc", "ece"), "select_by", "'nll', 'acc' or 'ece'"),
            (
                self.answer_format in ("letters", "cloze", "cloze_norm"),
                "answer_format",
                "letters, cloze or cloze_norm",
            ),
            (self.ensemble_size >= 1, "ensemble_size", "a positive int"),
            (self.dtype in ("auto", "float32", "bfloat16"), "dtype", "'auto', 'float32' or 'bfloat16'"),
            (bool(self.target_modules), "target_modules", "at least one module name"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise MeloraError(
                    f"Expected --{name.replace('_', '-')} to be {expected}, but got {getattr(self, name)!r}."
                )

    def to_dict(self) -> dict:
        """JSON-ready dict (saved as `config.json` beside the adapters)."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _flag_type(f) -> type:
    default = f.default
    if f.name == "target_modules":
        return str
    if f.name in ("weight_decay", "std_init"):
        return float
    if f.name in ("eval_limit", "train_limit"):
        return int
    if f.name in ("model", "report_to"):
        return str
    return type(default)


def build_parser(description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    """The `scripts/train.py` parser: one kebab-case flag per `TrainConfig` field, its default shown."""
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        shown = ",".join(f.default) if f.name == "target_modules" else f.default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if isinstance(f.default, bool) and f.name in ("resume", "overwrite"):
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif f.name == "method":
            from melora.methods import METHODS

            parser.add_argument(flag, default=f.default, choices=list(METHODS), help=help_text)
        elif f.name == "answer_format":
            from melora.protocol import ANSWER_FORMATS

            parser.add_argument(flag, default=f.default, choices=list(ANSWER_FORMATS), help=help_text)
        elif f.name == "task":
            from melora.protocol import ID_TASKS

            parser.add_argument(flag, default=f.default, choices=list(ID_TASKS), help=help_text)
        else:
            parser.add_argument(flag, type=_flag_type(f), default=f.default, help=help_text)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
