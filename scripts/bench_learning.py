#!/usr/bin/env python
"""Held-out Dice against training minutes and steps, for several training recipes in one run.

Each recipe is a preset plus overrides (values of the same configs, no code path of its own). The
recipes are trained one after the other on the same prepared cohort and machine, each for the same
number of optimiser steps, validating every ``--val-every`` epochs on the held-out split with the
deployed predictor; the script then tabulates validation mean Dice at each validation against steps and
wall-clock minutes and draws both curves.

    python scripts/bench_learning.py --prepared runs/demo/prepared --out runs/learning --recipes cpu,coarse48
    python scripts/bench_learning.py --synth 60 --out runs/learning            # makes the demo's cohort first

Writes ``learning.md`` (table, machine), ``learning.json`` (every validation row) and
``learning_curves.png`` under --out. The figures depend on the machine's speed (minutes) but not on
its load (steps): quote both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PAPER_FLIPS = {"train.augment.flip_x_prob": 0.2, "train.augment.flip_y_prob": 0.2}
"""The paper's flips: the recipes measured before the cpu preset dropped them keep them."""
NO_WARMUP = {"train.warmup_steps": 0}
"""The recipes measured before the cpu preset took its 50-step warm-up keep their constant start."""
NO_INTENSITY_AUG = {f"train.augment.{name}_prob": 0.0 for name in ("smooth", "noise", "gamma", "shift")}
"""Every intensity augmentation off (the flips are set apart)."""

RECIPES: dict[str, tuple[str, dict]] = {
    # the cpu preset
    "cpu": ("cpu", {}),
    # plain 8-128 network, no deep supervision, 48^3 patches: 2.6x cheaper per step than the cpu preset here
    "s3p48": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [3.0, 3.0, 3.0], "train.patch_size": [48, 48, 48],
                      "network.res_block": False, "network.deep_supervision": False, **PAPER_FLIPS}),
    "s4p48": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [4.0, 4.0, 4.0], "train.patch_size": [48, 48, 48],
                      "network.res_block": False, "network.deep_supervision": False, **PAPER_FLIPS}),
    "s3p48lr1e-2": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [3.0, 3.0, 3.0], "train.patch_size": [48, 48, 48],
                            "network.res_block": False, "network.deep_supervision": False, "train.learning_rate": 1e-2, **PAPER_FLIPS}),
    "s4p32lr1e-2": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [4.0, 4.0, 4.0], "train.patch_size": [32, 32, 32],
                            "network.res_block": False, "network.deep_supervision": False, "train.learning_rate": 1e-2, **PAPER_FLIPS}),
    "s4p48lr1e-2": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [4.0, 4.0, 4.0], "train.patch_size": [48, 48, 48],
                            "network.res_block": False, "network.deep_supervision": False, "train.learning_rate": 1e-2, **PAPER_FLIPS}),
    # the whole body crop in one patch: every step sees every organ (the cascade's coarse stage), with the
    # paper's flips (the cpu preset before it dropped them)
    "s6whole": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [6.0, 6.0, 6.0], "train.patch_size": [64, 48, 48],
                        "train.samples_per_image": 1, "network.res_block": False, "network.deep_supervision": False,
                        "train.learning_rate": 1e-2, **PAPER_FLIPS}),
    # the cpu preset without any augmentation (it has no flips already)
    "s6noaug": ("cpu", {**NO_WARMUP, **NO_INTENSITY_AUG}),
    # the cpu preset with a narrower bottleneck (0.71 instead of 0.87 s a step in docs/training.md's profile)
    "f96": ("cpu", {**NO_WARMUP, "network.filters": [8, 16, 32, 64, 96]}),
    # the cpu preset at twice its learning rate
    "lr2e-2": ("cpu", {**NO_WARMUP, "train.learning_rate": 2e-2}),
    # the cpu preset with one case a step (about half the price: run it with twice the steps)
    "b1": ("cpu", {**NO_WARMUP, "train.batch_size": 1}),
    # the cpu preset with deep supervision (two extra heads; nnU-Net's default)
    "ds": ("cpu", {**NO_WARMUP, "network.deep_supervision": True}),
    # the cpu preset without its 50-step warm-up (the cpu preset before 2026-12-03; its warm-up was recipe warm50)
    "nowarm": ("cpu", {**NO_WARMUP}),
    # the cpu preset at twice its rate, with its warm-up
    "warm50lr2e-2": ("cpu", {"train.learning_rate": 2e-2}),
    # the cpu preset with deep supervision (with its warm-up)
    "dswarm50": ("cpu", {"network.deep_supervision": True}),
    # nnU-Net's optimiser: SGD, momentum 0.99, Nesterov, at nnU-Net's rate
    "sgd": ("cpu", {**NO_WARMUP, "train.optimizer": "sgd", "train.learning_rate": 1e-2}),
    # the whole body crop at 8 mm (48x40x40, a 4-stage 8-64 network), meant for the quick demo: measured 0.9 s a
    # step here, no cheaper than the cpu preset, and 0.09 after 200 steps (stopped)
    "s8whole": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [8.0, 8.0, 8.0], "train.patch_size": [48, 40, 40],
                        "network.filters": [8, 16, 32, 64], "network.strides": [1, 2, 2, 2]}),
    # tumour model candidates: lesion-centred patches at a finer spacing than the organ model
    "t3p48": ("cpu", {**NO_WARMUP, "preprocess.target_spacing": [3.0, 3.0, 3.0], "train.patch_size": [48, 48, 48],
                      "network.res_block": False, "network.deep_supervision": False, "train.learning_rate": 1e-2,
                      "train.pos_fraction": 0.67, **PAPER_FLIPS}),
    # the cpu-lesion preset with 32^3 patches (3.4x fewer voxels a step) and 80% lesion-centred
    "t3p32": ("cpu-lesion", {"train.patch_size": [32, 32, 32], "train.pos_fraction": 0.8}),
    # the cpu-lesion preset with half the patches on background, half of those inside the lesion-host organs
    "t3hn": ("cpu-lesion", {"train.pos_fraction": 0.5, "train.hard_negative_fraction": 0.5}),
    # the cpu-lesion preset with the lesion anywhere in its patch, not at its centre
    "t3jit": ("cpu-lesion", {"train.centre_jitter": 0.9}),
    # the same with 32^3 patches (0.25 s a step instead of 0.6: more than twice the steps in the same minutes)
    "t3p32jit": ("cpu-lesion", {"train.centre_jitter": 0.9, "train.patch_size": [32, 32, 32]}),
    # t3p32jit with half the patches on background, half of those inside the lesion-host organs
    "t3p32jithn": ("cpu-lesion", {"train.centre_jitter": 0.9, "train.patch_size": [32, 32, 32], "train.pos_fraction": 0.5,
                                  "train.hard_negative_fraction": 0.5}),
    # t3p32jit at a third of the learning rate, and without the intensity augmentations
    "t3p32jitlr3e-3": ("cpu-lesion", {"train.centre_jitter": 0.9, "train.patch_size": [32, 32, 32], "train.learning_rate": 3e-3}),
    "t3p32jitnoaug": ("cpu-lesion", {"train.centre_jitter": 0.9, "train.patch_size": [32, 32, 32], **NO_INTENSITY_AUG}),
    # the quick demo's preset (200 steps; run with --horizon-epochs 40, as the preset follows the cpu schedule)
    "cpu-quick": ("cpu-quick", {}),
    "qlr2e-2": ("cpu-quick", {"train.learning_rate": 2e-2}),
    "qlr3e-2": ("cpu-quick", {"train.learning_rate": 3e-2}),
    "qnoaug": ("cpu-quick", NO_INTENSITY_AUG),
    "qb2": ("cpu-quick", {"train.batch_size": 2}),
    "qpartial": ("cpu-quick", {"train.case_selection": "partial"}),
    # every case with an organ label (marginal loss), not only those with all 13
    "partial": ("cpu", {"train.case_selection": "partial"}),
    # the cpu-lesion preset as it is, and with the two changes that sped up the organ model's first steps
    "cpu-lesion": ("cpu-lesion", {}),
    "t3ds": ("cpu-lesion", {"network.deep_supervision": True}),
    "t3warm50": ("cpu-lesion", {"train.warmup_steps": 50}),
    # the same with half the patches on background, half of those inside the lesion-host organs
    "t3jithn": ("cpu-lesion", {"train.centre_jitter": 0.9, "train.pos_fraction": 0.5, "train.hard_negative_fraction": 0.5}),
    # the tumour model on the organ model's input: the whole body crop in one patch at 6 mm, so every step sees
    # every lesion of its case and every organ that looks like one (the gallbladder, the renal pelvis)
    "t6whole": ("cpu", {}),
    # the same at 4.5 mm (80x64x64), lesions 1.8x as many voxels across
    "t45whole": ("cpu", {"preprocess.target_spacing": [4.5, 4.5, 4.5], "train.patch_size": [80, 64, 64]}),
    # the cpu-lesion preset with nnU-Net's third of the patches holding a lesion (more lesion-free context), and
    # with half of the rest inside the lesion-host organs
    "t3pos33": ("cpu-lesion", {"train.pos_fraction": 0.33}),
    "t3pos33hn": ("cpu-lesion", {"train.pos_fraction": 0.33, "train.hard_negative_fraction": 0.5}),
    # nnU-Net's spatial augmentation (rotation up to 15 degrees about each axis, scaling 0.85-1.25) on 30% and
    # 60% of the patches: 14 training cases seen 70 times each in 1,000 steps
    "spatial30": ("cpu", {"train.augment.spatial_prob": 0.3}),
    "spatial60": ("cpu", {"train.augment.spatial_prob": 0.6}),
    "t3spatial30": ("cpu-lesion", {"train.augment.spatial_prob": 0.3}),
}
"""name -> (preset, overrides). Add candidates here; keep the one chosen as a preset in flareseg.config."""


def _prepare(args: argparse.Namespace) -> Path:
    if args.prepared is not None:
        return args.prepared
    cohort, prepared = args.out / "cohort", args.out / "prepared"
    from flareseg.data.cohort import prepare_cohort
    from flareseg.data.synthetic import SynthConfig, generate_cohort

    if not (prepared / "manifest.json").is_file():
        generate_cohort(cohort, SynthConfig(cases=args.synth, val_cases=6, seed=0, size="small"), progress=False)
        prepare_cohort(cohort, prepared, seed=0, progress=False)
    return prepared


def _train(recipe: str, prepared: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    from flareseg.training.loop import read_log, train

    preset, overrides = RECIPES[recipe]
    overrides = {**overrides}
    iterations = int(overrides.pop("train.iterations_per_epoch", args.iterations))
    epochs = max(1, args.steps // iterations)
    overrides.update({"train.iterations_per_epoch": iterations, "train.val_every": args.val_every, "train.max_minutes": None})
    overrides.setdefault("train.poly_horizon_epochs", args.horizon_epochs or epochs)
    folder = out / "models" / recipe
    start = time.perf_counter()
    train(prepared, folder, task=args.task, preset=preset, epochs=epochs, overrides=overrides, progress=not args.quiet)
    print(f"{recipe}: {epochs} epochs x {iterations} steps in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    rows, elapsed, steps = [], 0.0, 0
    for row in read_log(folder / "train_log.jsonl"):
        elapsed += row["seconds"]
        steps += row["iterations"]
        if "val_mean_dice" in row:
            rows.append({"recipe": recipe, "epoch": row["epoch"], "steps": steps, "minutes": round(elapsed / 60, 2),
                         "val_mean_dice": row["val_mean_dice"], "val_dice": row["val_dice"]})
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| recipe | steps | minutes | val mean Dice | worst 3 classes |", "|---|---:|---:|---:|---|"]
    for r in rows:
        worst = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["val_dice"].items(), key=lambda kv: kv[1])[:3])
        lines.append(f"| {r['recipe']} | {r['steps']} | {r['minutes']:.1f} | {r['val_mean_dice']:.3f} | {worst} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    by_steps, by_minutes = fig.subplots(1, 2)
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        by_steps.plot([r["steps"] for r in mine], [r["val_mean_dice"] for r in mine], marker="o", label=recipe)
        by_minutes.plot([r["minutes"] for r in mine], [r["val_mean_dice"] for r in mine], marker="o", label=recipe)
    for ax, xlabel in ((by_steps, "optimiser steps"), (by_minutes, "training minutes (this machine)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out mean organ Dice" if task == "organ" else "held-out lesion Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, help="prepared cohort (flareseg prepare); default: synthesise the demo's")
    parser.add_argument("--synth", type=int, default=60, help="training phantoms to synthesise without --prepared (default 60)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--task", default="organ", choices=("organ", "tumor"))
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per recipe (default 600)")
    parser.add_argument("--horizon-epochs", type=int, help="poly horizon of the recipes that set none (default: their epochs); "
                        "the demo's 40 lets a short run follow the first steps of the demo's schedule")
    parser.add_argument("--iterations", type=int, default=25, help="steps per epoch (default 25)")
    parser.add_argument("--val-every", type=int, default=4, help="validate every this many epochs (default 4)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    from flareseg.measure.environment import cpu_info

    args.out.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(args)
    rows: list[dict] = []
    for recipe in args.recipes.split(","):
        rows += _train(recipe, prepared, args.out, args)
        (args.out / "learning.json").write_text(json.dumps(rows, indent=1))
    command = "python scripts/bench_learning.py " + " ".join(sys.argv[1:])
    text = f"# Learning benchmark\n\n`{command}`\n\nMachine: {cpu_info().summary()}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n\n{_table(rows)}\n"
    (args.out / "learning.md").write_text(text)
    _plot(rows, args.out / "learning_curves.png", args.task)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
