"""Folder runs: every case of an input folder, resumable, atomic, a bad case reported while the others go on."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from flareseg.errors import InputError
from flareseg.inference.config import InferenceConfig
from flareseg.inference.pipeline import TwoStepPredictor
from flareseg.inference.reports import BatchReport
from flareseg.io import CaseInput, find_cases
from flareseg.model.predictor import ModelPredictor

log = logging.getLogger(__name__)


def run_folder(
    predictor: TwoStepPredictor,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every case of `input_dir` into `output_dir` with a loaded `predictor` (see :func:`predict_folder`)."""
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    cases = find_cases(input_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise InputError(f"{output_dir}: the output folder must differ from the input folder (outputs would be read as inputs)")
    batch = BatchReport(str(input_dir), str(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    todo: list[CaseInput] = []
    seen: dict[str, CaseInput] = {}
    for c in cases:
        if c.name in seen:
            batch.failed[c.path.name] = f"{c.path}: its output name {c.output_name} clashes with {seen[c.name].path.name}"
            log.error("%s", batch.failed[c.path.name])
            continue
        seen[c.name] = c
        if (output_dir / c.output_name).is_file() and not overwrite:
            batch.skipped.append(c.name)
        else:
            todo.append(c)
    if batch.skipped:
        log.info("%d case(s) already predicted in %s: skipped (use overwrite to redo them)", len(batch.skipped), output_dir)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="cases", unit="case")
    try:
        for c in todo:
            on_stage = None
            if bar is not None:
                on_stage = lambda stage, name=c.name: bar.set_postfix_str(f"{name}: {stage}")  # noqa: E731
            try:
                report = predictor.predict(c.path, output_dir / c.output_name, case=c.name, progress=progress, on_stage=on_stage)
            except Exception as exc:  # one bad case must not stop the others
                message = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
                batch.failed[c.name] = message
                if isinstance(exc, InputError):
                    log.error("%s: %s", c.name, message)
                else:
                    log.exception("%s: prediction failed", c.name)
            else:
                batch.predicted.append(report)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    batch.seconds = time.perf_counter() - start
    log.info("%s", batch.summary())
    return batch


def predict_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    organ_model: str | os.PathLike | ModelPredictor,
    tumor_model: str | os.PathLike | ModelPredictor | None,
    config: InferenceConfig | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every case of a folder (FLARE naming: ``<case>_0000.nii.gz`` in -> ``<case>.nii.gz`` out).

    Cases whose output file exists are skipped unless `overwrite`, so an interrupted batch resumes
    where it stopped. Each output is written through a temporary file and a rename: a failure never
    leaves a partial file. A case that fails (unreadable input, ...) is logged and listed in
    ``BatchReport.failed`` and the others go on.

    Raises:
        InputError: the input folder does not exist, holds no case, or is the output folder.
        ModelFolderError: a model folder is missing or invalid.
    """
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    return run_folder(predictor, input_dir, output_dir, overwrite=overwrite, progress=progress)

