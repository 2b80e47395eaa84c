#!/usr/bin/env python
"""Using all the data: held-out organ and lesion DSC for the paper's selection, partial labels and pseudo-label rounds.

A synthetic cohort in FLARE23's proportions (5% all organs, 35% some organs, 15% lesions only -- 50%
partially labelled in all -- and 45% unlabelled; lesions among them) and a held-out validation set with
complete labels. Every row trains the organ and the tumour model with the same recipe and the same
number of optimiser steps, predicts the held-out cases (``fast`` mode) and scores them with the FLARE23
scorer:

    (a) paper      the paper's selection: organ model on the cases with all 13 organs, tumour model on the lesion cases
    (b) partial    + every partially labelled case, marginal loss (case_selection="partial")
    (c) round 1    + pseudo-labels of (b)'s models for the partially labelled and unlabelled cases
    (d) round 2    + pseudo-labels of (c)'s models

With human labels only, the tumour model's partial selection is the paper's (every case with lesion
labels), so (b) reuses (a)'s tumour model. Everything is resumable: rerun the same command after an
interruption.

    python scripts/bench_pseudolabel.py --out runs/pseudo --cases 80 --steps 750 --tumor-steps 250
    python scripts/bench_pseudolabel.py --out runs/pseudo_smoke --smoke      # the pipeline, not the figures (about 8 min on 2 cores)

Writes ``pseudo.md`` (table, command, machine) and ``pseudo.json`` (every figure, per class) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROPORTIONS = (("full", 0.05), ("partial", 0.35), ("lesion", 0.15), ("none", 0.45))
"""FLARE23: 222 of 4000 scans with all 13 organs, 2200 partially labelled, 1800 unlabelled."""
SMALL_ORGANS = (4, 7, 8, 9, 10)
"""Pancreas, adrenal glands, gallbladder, oesophagus: where FLARE23's pseudo-label teams gained most."""
ROWS = ("a", "b", "c", "d")
TITLES = {"a": "(a) paper selection", "b": "(b) + partial labels", "c": "(c) + pseudo-label round 1", "d": "(d) + pseudo-label round 2"}


def _cohort(args: argparse.Namespace) -> tuple[Path, Path]:
    from flareseg.data.cohort import prepare_cohort
    from flareseg.data.synthetic import SynthConfig, generate_cohort

    cohort, prepared = args.out / "cohort", args.out / "prepared_a"
    if not (cohort / "synth_manifest.json").is_file():
        config = SynthConfig(cases=args.cases, val_cases=args.val_cases, seed=args.seed, size="small", proportions=PROPORTIONS)
        generate_cohort(cohort, config, progress=not args.quiet)
    if not (prepared / "manifest.json").is_file():
        prepare_cohort(cohort, prepared, seed=args.seed, progress=not args.quiet)
    return cohort, prepared


def _train(prepared: Path, out: Path, task: str, selection: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train one model (resumable: a finished folder is left as it is); returns it and its training minutes."""
    from flareseg.training import train
    from flareseg.training.checkpoint import read_log

    preset = args.organ_preset if task == "organ" else args.tumor_preset
    steps = args.steps if task == "organ" else args.tumor_steps
    iterations = min(args.iterations, steps)
    epochs = max(1, steps // iterations)
    overrides = {
        "train.iterations_per_epoch": iterations, "train.poly_horizon_epochs": epochs, "train.val_every": epochs,
        "train.max_minutes": None, "train.case_selection": selection,
    }
    if (out / "checkpoint.safetensors").is_file():
        train(prepared, out, task=task, resume=True, epochs=epochs, progress=not args.quiet)
    else:
        train(prepared, out, task=task, preset=preset, epochs=epochs, overrides=overrides, progress=not args.quiet)
    return out, round(sum(r["seconds"] for r in read_log(out / "train_log.jsonl")) / 60, 2)


def _score(cohort: Path, organ: Path, tumor: Path, out: Path, args: argparse.Namespace) -> dict:
    from flareseg.evaluation.evaluate import evaluate_folder
    from flareseg.inference import predict_folder

    predict_folder(cohort / "imagesVal", out / "predictions", organ_model=organ, tumor_model=tumor, progress=not args.quiet)
    summary = evaluate_folder(out / "predictions", cohort / "labelsVal", out / "scores", progress=not args.quiet)
    per_class = {c["short"]: c["dsc_mean"] for c in summary.stats["classes"] if c["label"] != 14}
    small = [c["dsc_mean"] for c in summary.stats["classes"] if c["label"] in SMALL_ORGANS]
    return {
        "organ_dsc": summary.organ_dsc,
        "small_organ_dsc": round(sum(small) / len(small), 4) if small else None,
        "lesion_dsc": summary.lesion_dsc,
        "lesion_dsc_present": summary.lesion_dsc_present,
        "lesion_cases": summary.stats["lesion_present"]["n_cases"] if summary.stats.get("lesion_present") else 0,
        "lesion_sensitivity": summary.lesion_sensitivity,
        "per_class_dsc": per_class,
    }


def _pseudo_round(cohort: Path, teacher: dict, name: str, args: argparse.Namespace) -> tuple[Path, dict]:
    from flareseg.data.cohort import prepare_cohort
    from flareseg.inference.pseudolabel import pseudolabel_cohort

    folder, prepared = args.out / f"pseudo_{name}", args.out / f"prepared_{name}"
    start = time.perf_counter()
    report = pseudolabel_cohort(
        cohort, folder, organ_model=teacher["organ"], tumor_model=teacher["tumor"], min_confidence=args.min_confidence,
        min_lesion_confidence=args.min_lesion_confidence, progress=not args.quiet,
    )
    minutes = round((time.perf_counter() - start) / 60, 2)
    if not (prepared / "manifest.json").is_file():
        prepare_cohort(cohort, prepared, seed=args.seed, pseudo_labels=folder, progress=not args.quiet)
    provenance = json.loads((folder / "provenance.json").read_text())
    accepted = [r for r in provenance["cases"].values() if r["accepted"]]
    info = {
        "pseudo_accepted": len(accepted),
        "pseudo_rejected": len(provenance["cases"]) - len(accepted),
        "pseudo_lesion_cases": sum(14 in r["teacher_classes"] for r in accepted),
        "pseudo_minutes_this_run": minutes,
        "pseudo_failed": report.failed,
    }
    return prepared, info


def _row(name: str, prepared: Path, cohort: Path, args: argparse.Namespace, reuse_tumor: dict | None = None) -> dict:
    manifest = json.loads((prepared / "manifest.json").read_text())
    selection = "paper" if name == "a" else "partial"
    key = "" if selection == "paper" else "_partial"
    organ, organ_min = _train(prepared, args.out / "models" / f"{name}_organ", "organ", selection, args)
    if reuse_tumor is not None:
        tumor, tumor_min = reuse_tumor["tumor"], reuse_tumor["tumor_minutes"]
    else:
        tumor, tumor_min = _train(prepared, args.out / "models" / f"{name}_tumor", "tumor", selection, args)
    row = {
        "row": name, "title": TITLES[name], "case_selection": selection,
        "organ_train_cases": len(manifest[f"organ{key}"]["train"]), "tumor_train_cases": len(manifest[f"tumor{key}"]["train"]),
        "organ": str(organ), "tumor": str(tumor), "organ_minutes": organ_min, "tumor_minutes": tumor_min,
    }
    row.update(_score(cohort, organ, tumor, args.out / "eval" / name, args))
    return row


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict]) -> str:
    lines = [
        "| row | organ / tumour training cases | pseudo-labelled cases (lesions) | held-out organ DSC | small organs DSC | "
        "lesion DSC on lesion cases (official mean) | lesion sensitivity | training minutes (organ + tumour) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pseudo = f"{r['pseudo_accepted']} ({r['pseudo_lesion_cases']})" if "pseudo_accepted" in r else "-"
        lines.append(
            f"| {r['title']} | {r['organ_train_cases']} / {r['tumor_train_cases']} | {pseudo} | {_fmt(r['organ_dsc'])} | "
            f"{_fmt(r['small_organ_dsc'])} | {_fmt(r['lesion_dsc_present'])} ({_fmt(r['lesion_dsc'])}) | "
            f"{_fmt(r['lesion_sensitivity'])} | {r['organ_minutes']} + {r['tumor_minutes']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=80, help="training phantoms (default 80; at least 60 for the documented run)")
    parser.add_argument("--val-cases", type=int, default=10, help="held-out phantoms with complete labels (default 10)")
    parser.add_argument("--steps", type=int, default=750, help="organ-model optimiser steps per row (default 750)")
    parser.add_argument("--tumor-steps", type=int, default=250, help="tumour-model optimiser steps per row (default 250)")
    parser.add_argument("--iterations", type=int, default=25, help="steps per epoch (default 25)")
    parser.add_argument("--organ-preset", default="cpu")
    parser.add_argument("--tumor-preset", default="cpu-lesion")
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--min-lesion-confidence", type=float, default=0.9)
    parser.add_argument("--rows", default="a,b,c,d", help="rows to run, in order (c needs b, d needs c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="12 phantoms, tiny preset, a few steps, every pseudo-label accepted: proves the pipeline runs, measures nothing")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.cases, args.val_cases, args.steps, args.tumor_steps, args.iterations = 12, 2, 4, 2, 2
        args.organ_preset = args.tumor_preset = "tiny"
        args.min_confidence = args.min_lesion_confidence = 0.0  # an untrained teacher: accept it, to run the student on pseudo-labels
    rows_wanted = args.rows.split(",")
    if any(r not in ROWS for r in rows_wanted):
        parser.error(f"--rows: choose among {', '.join(ROWS)}")
    from flareseg.measure.environment import environment

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cohort, prepared_a = _cohort(args)
    rows: list[dict] = []
    models: dict[str, dict] = {}
    for name in rows_wanted:
        if name in ("a", "b"):
            reuse = None
            if name == "b" and "a" in models:
                reuse = {"tumor": Path(models["a"]["tumor"]), "tumor_minutes": models["a"]["tumor_minutes"]}
            row = _row(name, prepared_a, cohort, args, reuse)
        else:
            teacher_row = ROWS[ROWS.index(name) - 1]
            if teacher_row not in models:
                parser.error(f"row {name} needs row {teacher_row}'s models as its teacher")
            prepared, info = _pseudo_round(cohort, {"organ": models[teacher_row]["organ"], "tumor": models[teacher_row]["tumor"]}, name, args)
            row = {**_row(name, prepared, cohort, args), **info}
        models[name] = row
        rows.append(row)
        print(_table(rows), flush=True)
        (args.out / "pseudo.json").write_text(json.dumps({"rows": rows, "environment": environment()}, indent=1))
    env = environment()
    command = "python scripts/bench_pseudolabel.py " + " ".join(sys.argv[1:])
    text = (
        f"# Partial labels and pseudo-labels\n\n`{command}`\n\n"
        f"Cohort: {args.cases} training phantoms ({', '.join(f'{k} {v:.0%}' for k, v in PROPORTIONS)}), {args.val_cases} held out; "
        f"organ preset {args.organ_preset} for {args.steps} steps, tumour preset {args.tumor_preset} for {args.tumor_steps} steps per row.\n\n"
        f"Machine: {env['cpu_summary']}, {env['memory_gib']} GiB; torch {env['torch']}; {(time.perf_counter() - start) / 60:.1f} min this run\n\n"
        f"{_table(rows)}\n\nSmall organs: pancreas, adrenal glands, gallbladder, oesophagus.\n"
    )
    (args.out / "pseudo.md").write_text(text)
    (args.out / "pseudo.json").write_text(json.dumps({"command": command, "rows": rows, "environment": env}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
