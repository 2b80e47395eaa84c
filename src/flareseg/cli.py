"""The `flareseg` command line. Heavy modules are imported inside each subcommand.

Library errors (:class:`flareseg.errors.FlaresegError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path

from flareseg import __version__
from flareseg.config import ENGINES, MIN_STEP, OPTIMIZERS
from flareseg.errors import FlaresegError, os_error_message

log = logging.getLogger("flareseg")

EXIT_INPUT_ERROR = 2
DEFAULT_PRESETS = {"organ": "cpu", "tumor": "cpu-lesion"}
"""The preset `flareseg train` uses for each task when none is named."""


def _cmd_prepare(args: argparse.Namespace) -> int:
    from flareseg.data.cohort import prepare_cohort

    cohort = prepare_cohort(args.data, args.out, seed=args.seed, progress=not args.quiet, pseudo_labels=args.pseudo_labels)
    print(cohort.summary())
    print(f"\nmanifest: {Path(args.out) / 'manifest.json'}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from flareseg.data.synthetic import SynthConfig, generate_cohort

    config = SynthConfig(cases=args.cases, val_cases=args.val_cases, seed=args.seed, size=args.size)
    manifest = generate_cohort(args.out, config, progress=not args.quiet, workers=args.workers)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["regime_counts"].items())
    print(f"wrote {config.cases} training cases ({counts}) and {config.val_cases} validation cases to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flareseg.evaluation.evaluate import evaluate_folder, summary_markdown
    from flareseg.evaluation.tables import headline_lines

    summary = evaluate_folder(args.pred, args.ref, args.out, nsd_gate=args.nsd_gate, missing=args.missing, progress=not args.quiet)
    print(summary_markdown(summary.stats))
    print(f"\nper-case scores: {summary.per_case_csv}, {summary.cases_csv}\nsummary: {summary.summary_md}, {summary.summary_json}")
    print("\n".join(["", *headline_lines(summary.stats)]))  # last, so the official means never stand alone
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from flareseg.training import train

    flags = {
        "max_minutes": args.max_minutes, "learning_rate": args.lr, "iterations_per_epoch": args.iterations, "poly_horizon_epochs": args.lr_horizon,
        "case_selection": args.case_selection, "optimizer": args.optimizer, "warmup_steps": args.warmup_steps,
    }
    overrides = {"train": {name: value for name, value in flags.items() if value is not None}}
    folder = train(
        args.prepared,
        args.out,
        task=args.task,
        preset=args.preset or DEFAULT_PRESETS[args.task],
        epochs=args.epochs,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
        overrides=overrides,
        progress=not args.quiet,
    )
    print(f"model folder: {folder}")
    return 0


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    from flareseg.inference.pseudolabel import pseudolabel_cohort

    report = pseudolabel_cohort(
        args.data, args.out, organ_model=args.organ_model, tumor_model=args.tumor_model, min_confidence=args.min_confidence,
        min_lesion_confidence=args.min_lesion_confidence, config=_inference_config(args), device=args.device, progress=not args.quiet,
    )
    print(report.summary())
    print(f"provenance: {Path(args.out) / 'provenance.json'}")
    return 0 if report.ok else EXIT_INPUT_ERROR


def _inference_config(args: argparse.Namespace):
    from flareseg.inference import InferenceConfig

    overrides = {}
    if args.step is not None:
        overrides["step"] = args.step
    if args.organs is not None:
        overrides["organs"] = args.organs
    if args.engine is not None:
        overrides["engine"] = args.engine
    if args.no_postprocess:
        from flareseg.transforms.postprocess import OFF

        overrides["postprocess"] = OFF
    return InferenceConfig.for_mode(args.mode, **overrides)


def _cmd_predict(args: argparse.Namespace) -> int:
    from flareseg.inference import TwoStepPredictor, run_folder
    from flareseg.inference.folder import parse_part, plan_folder
    from flareseg.io import is_single_series
    from flareseg.io.output import check_output_file, is_complete_volume
    from flareseg.outputs import write_case_outputs

    # Every path is checked before the models load: a bad output must not cost a prediction.
    folder_run = args.input.is_dir() and not is_single_series(args.input)
    part = parse_part(args.part) if args.part else None
    config = _inference_config(args)  # an unknown organ name is refused here
    if args.workers is not None and args.ray is None:
        raise FlaresegError("--workers needs --ray")
    if args.ray is not None and not folder_run:
        raise FlaresegError("--ray needs a folder of cases as input")
    if folder_run:
        plan_folder(args.input, args.output, overwrite=args.overwrite, part=part, output_type=args.output_type)
    else:
        if part is not None:
            raise FlaresegError("--part needs a folder of cases as input")
        if not args.input.exists():
            raise FlaresegError(f"{args.input}: no such file or folder")
        check_output_file(args.output, source=args.input, output_type=args.output_type)
        if not args.overwrite and is_complete_volume(args.output):
            print(f"{args.output} exists; skipped (use --overwrite to replace it)")
            return 0
    extras = {"statistics": args.statistics, "preview": args.preview, "label_tables": args.label_tables}
    if folder_run:
        if args.ray is not None:
            from flareseg.inference.distributed import predict_folder_ray

            report = predict_folder_ray(
                args.input, args.output, organ_model=args.organ_model, tumor_model=args.tumor_model, config=config, device=args.device,
                overwrite=args.overwrite, progress=not args.quiet, part=part, output_type=args.output_type, address=args.ray or None, workers=args.workers,
            )
        else:
            predictor = TwoStepPredictor(args.organ_model, args.tumor_model, config=config, device=args.device)
            report = run_folder(predictor, args.input, args.output, overwrite=args.overwrite, progress=not args.quiet, part=part, output_type=args.output_type)
        for case in report.predicted:
            write_case_outputs(case.input, case.output, **extras)
        print(report.summary())
        return 0 if report.ok else EXIT_INPUT_ERROR
    predictor = TwoStepPredictor(args.organ_model, args.tumor_model, config=config, device=args.device)
    report = predictor.predict(args.input, args.output, progress=not args.quiet)
    for path in write_case_outputs(args.input, args.output, **extras):
        print(f"written: {path}")
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
    print(f"machine: {result.cpu}")
    for run in result.training.values():
        print(run.summary())

    def show(value):
        return "n/a" if value is None else f"{value:.3f}"

    for mode in result.organ_dsc:
        print(
            f"{mode:>5} mode: mean organ DSC {show(result.organ_dsc[mode])}, lesion DSC {show(result.lesion_dsc_present[mode])} "
            f"on the cases with lesions (official {show(result.lesion_dsc[mode])}), lesion sensitivity {show(result.lesion_sensitivity[mode])}, "
            f"median {result.median_seconds[mode]:.1f} s per case (model loading included)"
        )
    print(f"total {result.total_minutes:.1f} min")
    return 0


def _number(kind: type, *, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite `kind` within [low, high] (open ends where asked); the message names the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, low=1)
SEED = _number(int, low=0, high=2**31 - 1)
WARMUP_STEPS = _number(int, low=0, high=10**7)
MINUTES = _number(float, low=0, low_open=True, high=60 * 24 * 30)
LEARNING_RATE = _number(float, low=0, low_open=True, high=10)
STEP = _number(float, low=MIN_STEP, high=1)
"""Sliding-window step, a fraction of the patch (config.MIN_STEP to 1)."""

EXAMPLES = {
    "synth": "flareseg synth --out cohort --cases 20 --val-cases 4 --size small",
    "prepare": "flareseg prepare --data /data/FLARE23 --out prepared",
    "train": (
        "flareseg train --task organ --prepared prepared --out models/organ --max-minutes 30\n"
        "  flareseg train --task organ --prepared prepared --out models/organ --resume\n"
        "  flareseg train --task organ --prepared prepared --out models/organ --preset paper --device cuda"
    ),
    "predict": (
        "flareseg predict -i ct.nii.gz -o ct_seg.nii.gz --organ-model models/organ --tumor-model models/tumor\n"
        "  flareseg predict -i dicom_series/ -o seg.nii.gz --organ-model models/organ --mode accurate\n"
        "  flareseg predict -i dicom_series/ -o seg.dcm --organ-model models/organ --organs liver,spleen\n"
        "  flareseg predict -i imagesTs/ -o predictions/ --organ-model models/organ --tumor-model models/tumor --part 0/4"
    ),
    "pseudolabel": (
        "flareseg pseudolabel --organ-model models/organ --tumor-model models/tumor --data /data/FLARE23 --out pseudo1\n"
        "  flareseg prepare --data /data/FLARE23 --out prepared1 --pseudo-labels pseudo1"
    ),
    "benchmark": "flareseg benchmark -i imagesTs/ --out bench --organ-model models/organ --tumor-model models/tumor",
    "demo": "flareseg demo --out runs/demo        (bash scripts/demo.sh sets up and runs this)",
    "evaluate": "flareseg evaluate --pred predictions --ref labelsTs --out scores",
}


def _add_verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v / -q, accepted before and after the subcommand (a subcommand's copy does not reset the other)."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging, tracebacks of internal errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars, warnings only")


def _subcommand(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    _add_verbosity(p, top=False)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flareseg", description="Two-step abdominal CT segmentation (FLARE23).", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"flareseg {__version__}")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "synth", "write a synthetic FLARE-style phantom cohort", _cmd_synth)
    p.add_argument("--out", required=True, type=Path, help="output cohort folder")
    p.add_argument("--cases", type=POSITIVE_INT, default=20, help="training cases (default 20)")
    p.add_argument("--val-cases", type=_number(int, low=0), default=4, help="validation cases, labels kept apart (default 4)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--size", choices=("full", "small"), default="full", help="full: 512x512 at 0.6-1 mm; small: ~1.5-2 mm, fast")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="processes synthesising cases side by side (the cohort is the same for any number; default 1)")

    p = _subcommand(sub, "prepare", "scan a FLARE-layout cohort, select and split the training sets", _cmd_prepare)
    p.add_argument("--data", required=True, type=Path, help="cohort folder (imagesTr/, labelsTr/, unlabeled*/)")
    p.add_argument("--out", required=True, type=Path, help="output folder for manifest.json")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the 8:2 split (default 0)")
    p.add_argument("--pseudo-labels", type=Path, help="a folder written by `flareseg pseudolabel` for this cohort: another label source")

    p = _subcommand(sub, "train", "train the organ or tumour model on a prepared cohort", _cmd_train)
    p.add_argument("--task", required=True, choices=("organ", "tumor"))
    p.add_argument("--prepared", required=True, type=Path, help="folder written by `flareseg prepare`")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument(
        "--preset", choices=("paper", "cpu", "cpu-quick", "cpu-lesion", "tiny"),
        help="paper: the paper's protocol (GPU); cpu: whole-volume organ model at 6 mm; cpu-quick: cpu with deep supervision "
        "for 400 steps; cpu-lesion: lesion patches at 3 mm; "
        "tiny: tests (default: cpu for --task organ, cpu-lesion for --task tumor)",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, help="total epochs (default: the preset's)")
    p.add_argument("--iterations", type=POSITIVE_INT, help="iterations per epoch (default: the preset's)")
    p.add_argument("--lr", type=LEARNING_RATE, help="initial learning rate (default: the preset's)")
    p.add_argument("--lr-horizon", type=POSITIVE_INT, metavar="EPOCHS", help="epochs over which the poly schedule decays the lr to 0 (default: the preset's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (the paper's), adamw, or sgd (nnU-Net's: momentum 0.99, Nesterov); default: the preset's")
    p.add_argument("--warmup-steps", type=WARMUP_STEPS, metavar="STEPS", help="raise the lr linearly over the first STEPS steps (default: the preset's)")
    p.add_argument("--max-minutes", type=MINUTES, help="stop after this wall time, leaving a resumable model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    p.add_argument("--init-from", type=Path, help="fine-tune from this model folder (lr 5e-5, 40 epochs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--case-selection", choices=("paper", "partial"),
        help="paper: the paper's sets (all 13 organs / lesion cases), the default; partial: every case with a class labelled "
        "(human or pseudo-label), marginal loss over the unlabelled classes",
    )

    p = _subcommand(sub, "pseudolabel", "teacher labels for the partially labelled and unlabelled cases of a cohort", _cmd_pseudolabel)
    p.add_argument("--data", required=True, type=Path, help="cohort folder (imagesTr/, labelsTr/, unlabeled*/)")
    p.add_argument("--out", required=True, type=Path, help="pseudo-label folder (labelsTr/, cases/, provenance.json); a rerun continues it")
    p.add_argument("--organ-model", required=True, type=Path, help="teacher organ model folder")
    p.add_argument("--tumor-model", type=Path, help="teacher tumour model folder (omit: no lesion pseudo-labels)")
    p.add_argument("--min-confidence", type=_number(float, low=0, high=1), default=0.5, help="reject cases below this confidence (default 0.5)")
    p.add_argument("--min-lesion-confidence", type=_number(float, low=0, high=1), default=0.9, help="keep teacher lesions only at or above this (default 0.9)")
    p.add_argument("--mode", choices=("fast", "accurate", "paper"), default="fast", help="the teacher's inference mode (default fast)")
    p.add_argument("--step", type=STEP, help="sliding-window step as a fraction of the patch, 0.1-1 (default: the mode's; fast: each model's own, 0.8 for flareseg's, 0.5 for nnU-Net's)")
    p.add_argument("--engine", choices=ENGINES, help="what runs the teacher's networks: auto (default: openvino on the CPU where installed, else torch), torch, onnxruntime or openvino (CPU, fp32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(organs=None, no_postprocess=False)  # the teacher labels every class, post-processed

    for name, help_text, func in (
        ("predict", "two-step segmentation of a CT file, a DICOM folder or a folder of CTs", _cmd_predict),
        ("benchmark", "predict case by case, measuring time and memory (Table 5)", _cmd_benchmark),
    ):
        p = _subcommand(sub, name, help_text, func)
        p.add_argument("-i", "--input", required=True, type=Path, help="CT file, DICOM series folder, or folder of <case>_0000.nii.gz")
        if name == "predict":
            p.add_argument("-o", "--output", required=True, type=Path, help="label file (.nii.gz, .nii, .nrrd, .mha; .dcm: DICOM SEG of a DICOM series input), or output folder for a folder input")
            p.add_argument("--output-type", metavar="TYPE", help="nifti, nrrd, mha or dicom-seg (one SEG per DICOM series): a folder run's format; for a file it must agree with the suffix (default: the suffix; folders: nifti)")
            p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
            p.add_argument("--part", metavar="I/N", help="folder input: predict only shard I (0-based) of N, chosen by case name (Slurm arrays)")
            p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                           help="folder input: predict on a Ray cluster (pip install 'flareseg[distributed]'): a local one, or the cluster at ADDRESS (auto, HOST:6379, ray://HOST:10001)")
            p.add_argument("--workers", type=POSITIVE_INT, help="with --ray: worker processes, each holding both models (default: one per GPU with --device cuda/auto, else one per 4 CPUs)")
            p.add_argument("--statistics", action="store_true", help="write <output>_statistics.json/.csv: organ volumes and HU, lesions, burden per organ")
            p.add_argument("--preview", action="store_true", help="write <output>_preview.png: the labels over the CT, axial, coronal and sagittal")
            p.add_argument("--label-tables", action="store_true", help="write 3D Slicer (.ctbl) and ITK-SNAP label tables beside the output")
        else:
            p.add_argument("--out", required=True, type=Path, help="output folder (predictions/, efficiency.md/json, memory_curves.png)")
        p.add_argument("--organ-model", required=True, type=Path, help="organ model folder (flareseg, or an nnU-Net v2 trained model or fold folder)")
        p.add_argument("--tumor-model", type=Path, help="tumour model folder, flareseg or nnU-Net v2 (omit: organs only)")
        p.add_argument("--mode", choices=("fast", "accurate", "paper"), default="fast", help="fast (default), accurate, or the paper's procedure")
        p.add_argument("--step", type=STEP, help="sliding-window step as a fraction of the patch, 0.1-1 (default: the mode's; fast: each model's own, 0.8 for flareseg's, 0.5 for nnU-Net's)")
        p.add_argument("--organs", metavar="LIST", help="write only these labels, names or ids: liver,spleen,... (lesion: the lesions); "
                       "fast mode then runs the fine organ pass around them only, and the tumour model only for lesion")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
        p.add_argument("--engine", choices=ENGINES, help="what runs the networks: auto (default: openvino on the CPU where installed, else torch), torch, or their ONNX export on onnxruntime or openvino (CPU, fp32)")
        p.add_argument("--no-postprocess", action="store_true", help="write the networks' arg-max as it is (no island removal, largest component or hole filling), as nnU-Net's predictor does")

    p = _subcommand(sub, "demo", "the whole mission end to end on a synthetic cohort", _cmd_demo)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="smaller cohort and shorter training: about 5 minutes")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")

    p = _subcommand(sub, "evaluate", "score predictions with the FLARE23 DSC and NSD", _cmd_evaluate)
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps <case>.nii.gz")
    p.add_argument("--ref", required=True, type=Path, help="folder of reference label maps <case>.nii.gz")
    p.add_argument("--out", required=True, type=Path, help="output folder (per_case.csv, cases.csv, summary.md, summary.json)")
    p.add_argument("--nsd-gate", type=float, default=0.1, choices=(0.1, 0.2), help="NSD is 0 when DSC < gate (0.1: FLARE23 test phase)")
    p.add_argument("--missing", choices=("error", "empty"), default="error", help="a missing prediction is an error, or scored as empty")
    return parser


def _unknown_option(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A message for the first option the chosen subcommand does not know (before argparse's 'required' error)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((a for a in argv if a in subparsers.choices), None)
    if command is None:
        return None
    known = set(parser._option_string_actions) | set(subparsers.choices[command]._option_string_actions)
    for token in argv[argv.index(command) + 1 :]:
        if token == "--":
            break
        option = token.split("=", 1)[0]
        if option.startswith("-") and len(option) > 1 and not option[1:].replace(".", "").isdigit() and option not in known:
            close = difflib.get_close_matches(option, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"flareseg {command}: error: unknown option {option}{hint}; see `flareseg {command} --help`"
    return None


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine a spinning torch thread
    # pool made a training step ~8x slower (docs/training.md). Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    unknown = _unknown_option(parser, argv)
    if unknown is not None:
        print(unknown, file=sys.stderr)
        return EXIT_INPUT_ERROR
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # flareseg's debug lines, not those of every library (matplotlib's font search alone is ~100)
        logging.getLogger("flareseg").setLevel(logging.DEBUG)
    if not args.verbose:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings; our errors say what matters
    try:
        return int(args.func(args) or 0)
    except FlaresegError as exc:
        print(f"flareseg {args.command}: error: {exc}", file=sys.stderr)
    except MemoryError:
        print(f"flareseg {args.command}: error: out of memory (a smaller input, --mode fast, or a machine with more memory)", file=sys.stderr)
    except OSError as exc:  # a full disk, a read-only file system, a permission: one line naming the file
        print(f"flareseg {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"flareseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"flareseg {args.command}: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback; please report it)", file=sys.stderr)
        return 1
    return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
