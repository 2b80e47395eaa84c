"""The main job end to end on the built-in synthetic cohort (`flareseg demo`).

synthesise a FLARE-style cohort -> prepare (the paper's selection, 8:2 split) -> train the organ and
tumour models (bounded time) -> predict the held-out validation cases in ``paper`` and ``fast`` mode,
measuring time and memory per case -> evaluate both with the FLARE23 scorer -> write a report with
tables like the paper's Tables 4 and 5, overlays of the best and worst cases, and training curves.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from flareseg.data.cohort import prepare_cohort
from flareseg.measure import benchmark_cases, efficiency_table, medians
from flareseg.evaluation.evaluate import evaluate_folder, summary_markdown
from flareseg.io import atomic_write_text, read_image, read_json, read_label
from flareseg.labels import LESION
from flareseg.inference import InferenceConfig, predict_case
from flareseg.io import find_cases
from flareseg.io.output import check_output_folder
from flareseg.report import best_and_worst, headline_table, overlay_figure, write_report
from flareseg.data.synthetic import MANIFEST_NAME, SynthConfig, generate_cohort
from flareseg.measure import cpu_info
from flareseg.model.folder import read_model_config
from flareseg.training.checkpoint import LOG_FILE, read_log
from flareseg.training.loop import train

log = logging.getLogger(__name__)

MODES = ("paper", "fast")
MAX_SYNTH_WORKERS = 8
"""Processes synthesising the phantoms (one per CPU up to this)."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and step budgets of the demo.

    Training is bounded by optimiser steps (the presets' epochs, or the values here), so the models
    and their scores do not depend on the machine's speed; `organ_minutes` and `tumor_minutes` only cap
    the wall time on a machine far slower than planned, and the run then says how many steps it did.

    Attributes:
        cases, val_cases: synthetic training and validation cases (small phantoms, ~2 mm).
        organ_preset, tumor_preset: training presets of the two models.
        organ_epochs, tumor_epochs: epochs of each model (None: the preset's).
        organ_minutes, tumor_minutes: wall-time caps of each model's training.
        seed: seed of the cohort, the split and the training.
    """

    cases: int = 60
    val_cases: int = 6
    organ_preset: str = "cpu"
    tumor_preset: str = "cpu-lesion"
    organ_epochs: int | None = None
    tumor_epochs: int | None = None
    organ_minutes: float = 16.0
    tumor_minutes: float = 6.0
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A smoke-test demo: at most about 5 minutes on 2 cores."""
        return cls(cases=16, val_cases=3, organ_preset="cpu-quick", tumor_epochs=2, organ_minutes=3.0, tumor_minutes=1.0)


@dataclass(frozen=True)
class TrainingRun:
    """What one model's training did: steps done and planned, minutes, the best validation score."""

    task: str
    preset: str
    steps: int
    planned_steps: int
    minutes: float
    cap_minutes: float
    best_val_dice: float | None

    @property
    def complete(self) -> bool:
        return self.steps >= self.planned_steps

    def summary(self) -> str:
        short = "" if self.complete else f" (WARNING: the wall-time cap stopped it before the {self.planned_steps} steps the recipe needs)"
        best = "n/a" if self.best_val_dice is None else f"{self.best_val_dice:.3f}"
        return f"{self.task} model ({self.preset} preset): {self.steps} of {self.planned_steps} steps in {self.minutes:.1f} min, best validation mean Dice {best}{short}"


@dataclass(frozen=True)
class DemoResult:
    """Headline numbers and where the report is."""

    report: Path
    organ_dsc: dict[str, float | None]
    lesion_dsc: dict[str, float | None]
    lesion_dsc_present: dict[str, float | None]
    lesion_sensitivity: dict[str, float | None]
    median_seconds: dict[str, float]
    training: dict[str, TrainingRun]
    cpu: str
    total_minutes: float


def _stage(message: str) -> None:
    print(f"\n== {message}", flush=True)


def _training_run(folder: Path, task: str, preset: str, cap_minutes: float) -> TrainingRun:
    cfg = read_model_config(folder)
    rows = read_log(folder / LOG_FILE)
    scores = [r["val_mean_dice"] for r in rows if "val_mean_dice" in r]
    return TrainingRun(
        task=task, preset=preset, steps=sum(int(r.get("iterations", 0)) for r in rows),
        planned_steps=cfg.train.epochs * cfg.train.iterations_per_epoch,
        minutes=sum(float(r.get("seconds", 0.0)) for r in rows) / 60, cap_minutes=cap_minutes, best_val_dice=max(scores) if scores else None,
    )


def run_demo(out_dir: str | Path, *, config: DemoConfig = DemoConfig(), device: str = "cpu", progress: bool = True) -> DemoResult:
    """Run the whole mission on a synthetic cohort under `out_dir` and return the headline numbers.

    Raises:
        InputError: `out_dir` is a file or not writable (before any work).
    """
    start = time.perf_counter()
    out = check_output_folder(out_dir)
    cohort, prepared, models = out / "cohort", out / "prepared", out / "models"
    cpu = cpu_info().summary()
    print(f"machine: {cpu}", flush=True)

    _stage(f"1/6 synthesising {config.cases} training + {config.val_cases} validation phantoms")
    synth_manifest = cohort / MANIFEST_NAME
    if not synth_manifest.exists() or not read_json(synth_manifest).get("complete"):
        synth = SynthConfig(cases=config.cases, val_cases=config.val_cases, seed=config.seed, size="small")
        generate_cohort(cohort, synth, progress=progress, workers=min(os.cpu_count() or 1, MAX_SYNTH_WORKERS))

    _stage("2/6 preparing: the paper's training-set selection and 8:2 split")
    prepared_cohort = prepare_cohort(cohort, prepared, seed=config.seed, progress=progress)
    print(prepared_cohort.summary())

    plans = {"organ": (config.organ_preset, config.organ_epochs, config.organ_minutes), "tumor": (config.tumor_preset, config.tumor_epochs, config.tumor_minutes)}
    training = {}
    for number, (task, (preset, epochs, minutes)) in enumerate(plans.items(), start=3):
        _stage(f"{number}/6 training the {task} model ({preset} preset; at most {minutes:g} min)")
        resume = (models / task / "config.json").exists()
        overrides: dict = {"train": {"max_minutes": minutes}}
        if not resume:  # a resumed run keeps its seed (changing it is refused)
            overrides["train"]["seed"] = config.seed
        train(prepared, models / task, task=task, preset=preset, epochs=epochs, resume=resume, device=device, overrides=overrides, progress=progress)
        training[task] = _training_run(models / task, task, preset, minutes)
        print(training[task].summary(), flush=True)

    _stage("5/6 predicting the held-out validation cases (paper and fast modes), measuring time and memory")
    images = [c.path for c in find_cases(cohort / "imagesVal")]
    summaries, efficiency = {}, {}
    for mode in MODES:
        # predict_case loads the models inside the measured call, as the FLARE efficiency rules ask.
        predict_one = partial(predict_case, organ_model=models / "organ", tumor_model=models / "tumor", config=InferenceConfig.for_mode(mode), device=device)
        efficiency[mode] = benchmark_cases(images, predict_one, out / f"predict_{mode}", progress=progress)
        summaries[mode] = evaluate_folder(out / f"predict_{mode}" / "predictions", cohort / "labelsVal", out / f"eval_{mode}", progress=progress)

    _stage("6/6 writing the report")
    median_times = {mode: medians(efficiency[mode])["wall_time_s"] for mode in MODES}
    result = DemoResult(
        report=out / "report" / "report.md",
        organ_dsc={mode: summaries[mode].organ_dsc for mode in MODES},
        lesion_dsc={mode: summaries[mode].lesion_dsc for mode in MODES},
        lesion_dsc_present={mode: summaries[mode].lesion_dsc_present for mode in MODES},
        lesion_sensitivity={mode: summaries[mode].lesion_sensitivity for mode in MODES},
        median_seconds={mode: float("nan") if t is None else t for mode, t in median_times.items()},
        training=training,
        cpu=cpu,
        total_minutes=(time.perf_counter() - start) / 60,
    )
    _write_demo_report(out, cohort, models, summaries, efficiency, result)
    atomic_write_text(out / "demo_result.json", json.dumps(asdict(result), indent=2, default=str))
    return result


def _headline(summaries: dict, result: DemoResult) -> str:
    modes = []
    for mode in MODES:
        present = summaries[mode].stats.get("lesion_present") or {}
        modes.append({
            "mode": mode, "organ_dsc": result.organ_dsc[mode], "lesion_dsc": result.lesion_dsc_present[mode],
            "lesion_cases": present.get("n_cases"), "lesion_sensitivity": result.lesion_sensitivity[mode],
            "median_seconds": result.median_seconds[mode],
        })
    training = {task: {"steps_done": run.steps, "steps_planned": run.planned_steps, "budget_minutes": run.cap_minutes} for task, run in result.training.items()}
    text = headline_table(modes, training=training, cpu=result.cpu)
    short = [run for run in result.training.values() if not run.complete]
    if short:
        text += "\n\n**Warning:** " + "; ".join(run.summary() for run in short) + "."
    return text


def _write_demo_report(out: Path, cohort: Path, models: Path, summaries: dict, efficiency: dict, result: DemoResult) -> Path:
    figures = out / "report" / "figures"
    sections = [("Headline", _headline(summaries, result) + "\n\nOrgan DSC: the FLARE23 mean over the 13 organs; lesion DSC over the held-out cases whose reference holds lesion voxels (the official lesion mean, which scores a case without lesion and without prediction as 1, is in Table 4).", [])]
    for mode in MODES:
        table = summary_markdown(summaries[mode].stats).split("\n", 1)[1]  # drop its own top-level heading
        sections.append((f"Table 4 ({mode} mode): DSC and NSD on the held-out phantoms", table, []))
    for mode in MODES:
        sections.append((f"Table 5 ({mode} mode): efficiency per case (2-core CPU)", efficiency_table(efficiency[mode]), [out / f"predict_{mode}" / "memory_curves.png"]))
    for mode in MODES:
        per_case: dict[str, list[float]] = {}
        for row in summaries[mode].rows:
            if row.label != LESION:
                per_case.setdefault(row.case, []).append(row.dsc)
        scores = {case: sum(v) / len(v) for case, v in per_case.items()}
        best, worst = best_and_worst(scores, k=1)
        images = []
        for kind, cases in (("best", best), ("worst", worst)):
            for case in cases:
                stem = case.removesuffix(".nii.gz")
                image = read_image(cohort / "imagesVal" / f"{stem}_0000.nii.gz")
                reference = read_label(cohort / "labelsVal" / case, image)
                prediction = read_label(out / f"predict_{mode}" / "predictions" / case, image)
                images.append(
                    overlay_figure(
                        image, reference.array, prediction.array, figures / f"{mode}_{kind}_{stem}.png",
                        title=f"{mode} mode, {kind} case {stem}", dsc=scores[case],
                    )
                )
        sections.append((f"Figures ({mode} mode): best and worst case by mean organ DSC (reference left, prediction right)", "", images))
    curves = [p for p in (models / "organ" / "training_curve.png", models / "tumor" / "training_curve.png") if p.exists()]
    sections.append(("Training curves", "Loss and validation Dice per epoch of the organ and tumour models.", curves))
    return write_report(out / "report", title="flareseg demo: two-step FLARE23 segmentation on synthetic phantoms", sections=sections)
