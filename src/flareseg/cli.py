"""The `flareseg` command line. Heavy modules are imported inside each subcommand.

Library errors (:class:`flareseg.errors.FlaresegError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path

from flareseg import __version__
from flareseg.errors import FlaresegError

log = logging.getLogger("flareseg")

EXIT_INPUT_ERROR = 2


def _cmd_prepare(args: argparse.Namespace) -> int:
    from flareseg.data.cohort import prepare_cohort

    cohort = prepare_cohort(args.data, args.out, seed=args.seed, progress=not args.quiet)
    print(cohort.summary())
    print(f"\nmanifest: {Path(args.out) / 'manifest.json'}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from flareseg.data.synthetic import SynthConfig, generate_cohort

    config = SynthConfig(cases=args.cases, val_cases=args.val_cases, seed=args.seed, size=args.size)
    manifest = generate_cohort(args.out, config, progress=not args.quiet)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["regime_counts"].items())
    print(f"wrote {config.cases} training cases ({counts}) and {config.val_cases} validation cases to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flareseg.evaluation.evaluate import evaluate_folder, summary_markdown

    summary = evaluate_folder(args.pred, args.ref, args.out, nsd_gate=args.nsd_gate, missing=args.missing, progress=not args.quiet)
    print(summary_markdown(summary.stats))
    print(f"\nper-case scores: {summary.per_case_csv}\nsummary: {summary.summary_md}, {summary.summary_json}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from flareseg.training.loop import train

    overrides = {}
    if args.max_minutes is not None:
        overrides["train.max_minutes"] = args.max_minutes
    if args.lr is not None:
        overrides["train.learning_rate"] = args.lr
    if args.iterations is not None:
        overrides["train.iterations_per_epoch"] = args.iterations
    if args.lr_horizon is not None:
        overrides["train.poly_horizon_epochs"] = args.lr_horizon
    folder = train(
        args.prepared,
        args.out,
        task=args.task,
        preset=args.preset,
        epochs=args.epochs,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
        overrides=overrides,
        progress=not args.quiet,
    )
    print(f"model folder: {folder}")
    return 0


def _inference_config(args: argparse.Namespace):
    from flareseg.inference import InferenceConfig

    overrides = {}
    if args.step is not None:
        overrides["step"] = args.step
    return InferenceConfig.for_mode(args.mode, **overrides)


def _cmd_predict(args: argparse.Namespace) -> int:
    from flareseg.inference import TwoStepPredictor, run_folder
    from flareseg.io import is_single_series

    predictor = TwoStepPredictor(args.organ_model, args.tumor_model, config=_inference_config(args), device=args.device)
    if args.input.is_dir() and not is_single_series(args.input):
        report = run_folder(predictor, args.input, args.output, overwrite=args.overwrite, progress=not args.quiet)
        print(report.summary())
        return 0 if report.ok else EXIT_INPUT_ERROR
    if args.output.exists() and not args.overwrite:
        print(f"{args.output} exists; skipped (use --overwrite to replace it)")
        return 0
    report = predictor.predict(args.input, args.output, progress=not args.quiet)
    print(report.summary())
    return 0



def _cmd_benchmark(args: argparse.Namespace) -> int:
    from flareseg.measure import benchmark_cases, efficiency_table
    from flareseg.inference import predict_case
    from flareseg.io import find_cases

    # predict_case loads the models inside each measured case, as the FLARE efficiency rules ask.
    predict_one = partial(predict_case, organ_model=args.organ_model, tumor_model=args.tumor_model, config=_inference_config(args), device=args.device)

    measurements = benchmark_cases([c.path for c in find_cases(args.input)], predict_one, args.out, progress=not args.quiet)
    print(efficiency_table(measurements))
    print(f"\nwritten: {args.out / 'efficiency.md'}, {args.out / 'efficiency.json'}, {args.out / 'memory_curves.png'}")
    return 0 if all(m.ok for m in measurements) else EXIT_INPUT_ERROR


def _cmd_demo(args: argparse.Namespace) -> int:
    from flareseg.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    result = run_demo(args.out, config=config, device=args.device, progress=not args.quiet)
    print(f"\nreport: {result.report}")
    for mode in result.organ_dsc:
        organ, lesion = result.organ_dsc[mode], result.lesion_dsc[mode]
        print(
            f"{mode:>5} mode: mean organ DSC {organ:.3f}, lesion DSC {lesion:.3f}, "
            f"median {result.median_seconds[mode]:.1f} s per case (model loading included)"
        )
    print(f"total {result.total_minutes:.1f} min")
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

    p = sub.add_parser("train", help="train the organ or tumour model on a prepared cohort")
    p.add_argument("--task", required=True, choices=("organ", "tumor"))
    p.add_argument("--prepared", required=True, type=Path, help="folder written by `flareseg prepare`")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--preset", choices=("paper", "cpu", "tiny"), default="cpu", help="paper: the paper's protocol (GPU); cpu: light network at 2-2.5 mm; tiny: tests")
    p.add_argument("--epochs", type=int, help="total epochs (default: the preset's)")
    p.add_argument("--iterations", type=int, help="iterations per epoch (default: the preset's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the preset's)")
    p.add_argument("--lr-horizon", type=int, metavar="EPOCHS", help="epochs over which the poly schedule decays the lr to 0 (default: the preset's)")
    p.add_argument("--max-minutes", type=float, help="stop after this wall time, leaving a resumable model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    p.add_argument("--init-from", type=Path, help="fine-tune from this model folder (lr 5e-5, 40 epochs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=_cmd_train)

    for name, help_text, func in (
        ("predict", "two-step segmentation of a CT file, a DICOM folder or a folder of CTs", _cmd_predict),
        ("benchmark", "predict case by case, measuring time and memory (Table 5)", _cmd_benchmark),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-i", "--input", required=True, type=Path, help="CT file, DICOM series folder, or folder of <case>_0000.nii.gz")
        if name == "predict":
            p.add_argument("-o", "--output", required=True, type=Path, help="label file, or output folder for a folder input")
            p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
        else:
            p.add_argument("--out", required=True, type=Path, help="output folder (predictions/, efficiency.md/json, memory_curves.png)")
        p.add_argument("--organ-model", required=True, type=Path, help="organ model folder (flareseg, or an nnU-Net v2 trained model or fold folder)")
        p.add_argument("--tumor-model", type=Path, help="tumour model folder, flareseg or nnU-Net v2 (omit: organs only)")
        p.add_argument("--mode", choices=("fast", "accurate", "paper"), default="fast", help="fast (default), accurate, or the paper's procedure")
        p.add_argument("--step", type=float, help="sliding-window step as a fraction of the patch (default: the mode's)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
        p.set_defaults(func=func)

    p = sub.add_parser("demo", help="the whole mission end to end on a synthetic cohort")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="smaller cohort and shorter training: about 5 minutes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="score predictions with the FLARE23 DSC and NSD")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("--ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("--out", required=True, type=Path, help="output folder (per_case.csv, summary.md, summary.json)")
    p.add_argument("--nsd-gate", type=float, default=0.1, choices=(0.1, 0.2), help="NSD is 0 when DSC < gate (0.1: FLARE23 test phase)")
    p.add_argument("--missing", choices=("error", "empty"), default="error", help="a missing prediction is an error, or scored as empty")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine a spinning torch thread
    # pool made a training step ~8x slower (docs/training.md). Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings; our errors say what matters
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
