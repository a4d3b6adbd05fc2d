"""Train Me-LoRA or a baseline adapter on one task of the paper's protocol.

Examples:
    accelerate launch scripts/train.py --method melora --task obqa --output-dir runs/obqa-melora
    python scripts/train.py --method map --task arc_e --max-steps 300 --eval-every 100 --eval-limit 200
    torchrun --nproc_per_node 2 scripts/train.py ...     # two CPU processes (gloo); --batch-size stays global

Writes to --output-dir: adapter-best/ and adapter-last/ (PEFT adapter directories; load them with
`melora.load_adapter` or `lm_eval --model melora --model_args adapter=DIR`), checkpoint-last/ (for --resume),
config.json (the resolved settings) and metrics.jsonl (training loss, KL, lr; validation ACC/ECE/NLL/Brier).
"""

from __future__ import annotations

import sys

from melora.errors import MeloraError
from melora.train_config import build_parser, config_from_args
from melora.training import train


EPILOG = """optimisers:
  AdamW (--lr) on the NLL updates every trainable adapter parameter (LoRA: A, B; Me-LoRA: A, B, M, H; BLoB: A, B, rho).
  SGD (--kl-lr) on kl_weight * KL updates only what the KL depends on (Me-LoRA: A, M, H; BLoB: A, rho).
  The run prints both groups with their parameter counts.

methods:
  melora  Me-LoRA (W0 + s B C A, C ~ N(M, (H*H)^2))    blob  BLoB (A Bayesian)
  map     LoRA + weight decay 1e-5                      mle   LoRA, no weight decay
  mcd     LoRA with dropout, evaluate with mc_dropout   ens   --ensemble-size MLE members, one ensemble adapter
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__, epilog=EPILOG)
    args = parser.parse_args(argv)
    try:
        train(config_from_args(args))
    except MeloraError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
