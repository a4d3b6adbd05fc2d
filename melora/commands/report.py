"""`melora report`: calibration tables, reliability diagrams and published-number comparisons from lm-eval runs."""

from __future__ import annotations

import argparse
import sys

from melora.commands.base import Subcommand
from melora.errors import MeloraError


DEFAULT_OUT = "melora-report"


class ReportCommand(Subcommand):
    """Read lm-eval output directories and write tables (Markdown, CSV, LaTeX) and figures (PNG)."""

    name = "report"
    help = "Tables (ACC, ECE, NLL, Brier; mean ± std over seeds) and reliability diagrams from lm-eval runs."
    epilog = f"""examples:
  lm_eval --model melora --model_args adapter=runs/obqa-melora/adapter-best,seed=0 --tasks melora_ood \\
      --output_path results/ --log_samples
  melora report results/ --out report/
  melora report results/ other-results/ --out report/ --compare paper-13b --bootstrap 1000

Reads every results_*.json under the given paths with the samples_*.jsonl files of the same run (lm_eval
--log_samples is required: every metric is recomputed from the per-document predictions). Method, base model,
seed and task come from what each results file records. Writes OUT/report.md, OUT/tables.csv, OUT/tables.tex,
OUT/runs.csv and OUT/figures/*.png (default OUT: ./{DEFAULT_OUT}); see melora/report/writer.py."""

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        from melora.report.published import COMPARE_CHOICES

        parser.add_argument(
            "results", nargs="+", metavar="RESULTS_DIR", help="lm-eval --output_path directories or results files."
        )
        parser.add_argument(
            "--out", default=DEFAULT_OUT, metavar="DIR", help=f"Output directory (created). Default: ./{DEFAULT_OUT}."
        )
        parser.add_argument(
            "--compare",
            choices=COMPARE_CHOICES,
            default=None,
            help="Put the paper's published rows (Tables 2 and 3 for 13B, 8 and 9 for 7B) beside ours.",
        )
        parser.add_argument(
            "--bootstrap",
            type=int,
            default=0,
            metavar="N",
            help="Add 95%% bootstrap intervals from N resamples of the documents (e.g. 1000). Default: 0 (none).",
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap. Default: 0.")
        parser.add_argument("--no-figures", action="store_true", help="Write the tables only (no PNG figures).")

    def execute(self, args: argparse.Namespace) -> int:
        import warnings

        from melora.errors import MeloraWarning
        from melora.report import write_report

        if args.bootstrap < 0:
            raise MeloraError(f"Expected `--bootstrap` to be a non-negative int, but got {args.bootstrap}.")
        with warnings.catch_warnings():
            warnings.simplefilter("always", MeloraWarning)
            warnings.showwarning = _show_warning  # restored by catch_warnings
            result = write_report(
                args.results,
                args.out,
                compare=args.compare,
                bootstrap=args.bootstrap,
                seed=args.seed,
                figures=not args.no_figures,
            )
        print(result.markdown)
        print(f"Wrote {len(result.files)} files:")
        for path in result.files:
            print(f"  {path}")
        return 0


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Print a warning as one line on stderr, without the source line Python adds."""
    print(f"melora report: warning: {message}", file=sys.stderr)
