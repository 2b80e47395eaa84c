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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flareseg", description="Two-step abdominal CT segmentation (FLARE23).")
    parser.add_argument("--version", action="version", version=f"flareseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="scan a FLARE-layout cohort, select and split the training sets")
    p.add_argument("--data", required=True, type=Path, help="cohort folder (imagesTr/, labelsTr/, unlabeled*/)")
    p.add_argument("--out", required=True, type=Path, help="output folder for manifest.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the 8:2 split (default 0)")
    p.set_defaults(func=_cmd_prepare)
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
