"""The `flareseg` command line. Heavy modules are imported inside each subcommand.

Library errors (:class:`flareseg.errors.FlaresegError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import FlaresegError

log = logging.getLogger("flareseg")

EXIT_INPUT_ERROR = 2


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .dataset import prepare_cohort

    cohort = prepare_cohort(args.data, args.out, seed=args.seed, progress=not args.quiet)
    print(cohort.summary())
    print(f"\nmanifest: {Path(args.out) / 'manifest.json'}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import SynthConfig, generate_cohort

    config = SynthConfig(cases=args.cases, val_cases=args.val_cases, seed=args.seed, size=args.size)
    manifest = generate_cohort(args.out, config, progress=not args.quiet)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["regime_counts"].items())
    print(f"wrote {config.cases} training cases ({counts}) and {config.val_cases} validation cases to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder, summary_markdown

    summary = evaluate_folder(args.pred, args.ref, args.out, nsd_gate=args.nsd_gate, missing=args.missing, progress=not args.quiet)
    print(summary_markdown(summary.stats))
    print(f"\nper-case scores: {summary.per_case_csv}\nsummary: {summary.summary_md}, {summary.summary_json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flareseg", description="Two-step abdominal CT segmentation (FLARE23).")
    parser.add_argument("--version", action="version", version=f"flareseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic FLARE-style phantom cohort")
    p.add_argument("--out", required=True, type=Path, help="output cohort folder")
    p.add_argument("--cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--val-cases", type=int, default=4, help="validation cases, labels kept apart (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", choices=("full", "small"), default="full", help="full: 512x512 at 0.6-1 mm; small: ~1.5-2 mm, fast")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="scan a FLARE-layout cohort, select and split the training sets")
    p.add_argument("--data", required=True, type=Path, help="cohort folder (imagesTr/, labelsTr/, unlabeled*/)")
    p.add_argument("--out", required=True, type=Path, help="output folder for manifest.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the 8:2 split (default 0)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("evaluate", help="score predictions with the FLARE23 DSC and NSD")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("--ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("--out", required=True, type=Path, help="output folder (per_case.csv, summary.md, summary.json)")
    p.add_argument("--nsd-gate", type=float, default=0.1, choices=(0.1, 0.2), help="NSD is 0 when DSC < gate (0.1: FLARE23 test phase)")
    p.add_argument("--missing", choices=("error", "empty"), default="error", help="a missing prediction is an error, or scored as empty")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except FlaresegError as exc:
        print(f"flareseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"flareseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
