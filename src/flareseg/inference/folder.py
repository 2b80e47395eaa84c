"""Folder runs: every case of an input folder, resumable, atomic, a bad case reported while the others go on."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flareseg.errors import ConfigError, FlaresegError, os_error_message
from flareseg.inference.config import InferenceConfig
from flareseg.inference.pipeline import TwoStepPredictor
from flareseg.inference.reports import BatchReport
from flareseg.io import CaseInput, find_cases
from flareseg.io.output import DICOM_SEG, OUTPUT_TYPES, check_dicom_seg_source, check_output_folder, check_output_type, is_complete_volume
from flareseg.model.predictor import ModelPredictor

log = logging.getLogger(__name__)


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``: shard I (0-based) of N.

    Raises:
        ConfigError: not of that form, N < 1 or I outside 0..N-1.
    """
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count


def in_part(name: str, part: tuple[int, int] | None) -> bool:
    """Whether case `name` belongs to shard `part`: by a hash of the name, so adding cases moves none."""
    if part is None:
        return True
    digest = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:12], 16)
    return digest % part[1] == part[0]


@dataclass
class FolderPlan:
    """The cases of a folder run: to predict, already done, or refused before any work; `suffix` names the outputs' type."""

    todo: list[CaseInput] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    suffix: str = OUTPUT_TYPES["nifti"][0]


def plan_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    part: tuple[int, int] | None = None,
    output_type: str | None = None,
) -> FolderPlan:
    """Which cases of `input_dir` a run into `output_dir` must predict.

    Each case's output is ``<case>`` plus the first suffix of `output_type` (:data:`~flareseg.io.output.OUTPUT_TYPES`;
    default ``nifti``: ``<case>.nii.gz``; ``dicom-seg``: ``<case>.dcm``, one SEG per DICOM series). A
    case is done when its output exists and is whole (:func:`~flareseg.io.output.is_complete_volume`:
    an empty or truncated file is redone). Refused before any work, and reported while the others go
    on: two inputs with the same output name, and for ``dicom-seg`` a case that is not a DICOM series
    or whose slices lack their UIDs.

    Raises:
        InputError: the input folder is missing or holds no case; the output folder is the input, a file,
            or not writable; an unknown `output_type`.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_output_type(output_type)
    cases = find_cases(input_dir)
    check_output_folder(output_dir, source=input_dir)
    plan = FolderPlan(suffix=OUTPUT_TYPES[output_type or "nifti"][0])
    seen: dict[str, CaseInput] = {}
    for c in cases:
        if not in_part(c.name, part):
            continue
        output = output_dir / c.output_name_with(plan.suffix)
        if c.name in seen:
            plan.failed[c.path.name] = f"{c.path}: its output name {output.name} clashes with {seen[c.name].path.name}"
            log.error("%s", plan.failed[c.path.name])
            continue
        seen[c.name] = c
        if output_type == DICOM_SEG:
            try:
                check_dicom_seg_source(c.path, output)
            except FlaresegError as exc:
                plan.failed[c.name] = str(exc)
                log.error("%s: %s", c.name, exc)
                continue
        if not overwrite and is_complete_volume(output):
            plan.skipped.append(c.name)
        else:
            todo_output = output
            if todo_output.exists() and not overwrite:
                log.warning("%s: incomplete or unreadable; it is predicted again", todo_output)
            plan.todo.append(c)
    if plan.skipped:
        log.info("%d case(s) already predicted in %s: skipped (use overwrite to redo them)", len(plan.skipped), output_dir)
    return plan


@contextmanager
def case_lock(output_dir: Path, name: str) -> Iterator[bool]:
    """Hold ``.<name>.lock`` in `output_dir` while a case is predicted; yields False when another run holds it."""
    path = output_dir / f".{name}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def predict_one(
    predictor: TwoStepPredictor, case: CaseInput, output_dir: Path, *, overwrite: bool, progress: bool = False, on_stage=None,
    suffix: str = OUTPUT_TYPES["nifti"][0],
):
    """Predict one case of a folder run under its lock, into ``output_dir / (case.name + suffix)``.

    Returns:
        ``("predicted", report)``, ``("skipped", None)`` when another run holds or has finished the
        case, or ``("failed", message)``: one bad case never stops the others.
    """
    output = output_dir / case.output_name_with(suffix)
    with case_lock(output_dir, case.name) as mine:
        if not mine or (not overwrite and is_complete_volume(output)):
            return "skipped", None
        return guarded(case, output, lambda: predictor.predict(case.path, output, case=case.name, progress=progress, on_stage=on_stage))


def guarded(case: CaseInput, output: Path, work):
    """Run ``work()`` for one case of a folder run: ``("predicted", result)`` or ``("failed", message)``.

    A library error, an OS error (full disk, permission), memory exhaustion or an unexpected
    exception becomes a one-line message naming the file: one bad case never stops the others.
    """
    try:
        return "predicted", work()
    except MemoryError:
        message = f"{case.path}: out of memory while predicting this case"
    except (FlaresegError, OSError) as exc:
        message = str(exc) if isinstance(exc, FlaresegError) else os_error_message(exc, output)
    except Exception as exc:  # an unexpected failure of one case is reported, the others go on
        log.exception("%s: prediction failed", case.name)
        message = f"{type(exc).__name__}: {exc}"
    log.error("%s: %s", case.name, message)
    return "failed", message


def run_folder(
    predictor: TwoStepPredictor,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    part: tuple[int, int] | None = None,
    output_type: str | None = None,
) -> BatchReport:
    """Predict every case of `input_dir` into `output_dir` with a loaded `predictor` (see :func:`predict_folder`)."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    plan = plan_folder(input_dir, output_dir, overwrite=overwrite, part=part, output_type=output_type)
    batch = BatchReport(str(input_dir), str(output_dir), skipped=plan.skipped, failed=plan.failed)
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan.todo), desc="cases", unit="case")
    try:
        for c in plan.todo:
            on_stage = None if bar is None else (lambda stage, name=c.name: bar.set_postfix_str(f"{name}: {stage}"))
            status, result = predict_one(predictor, c, output_dir, overwrite=overwrite, progress=progress, on_stage=on_stage, suffix=plan.suffix)
            if status == "predicted":
                batch.predicted.append(result)
            elif status == "skipped":
                batch.skipped.append(c.name)
            else:
                batch.failed[c.name] = result
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    batch.seconds = time.perf_counter() - start
    log.debug("%s", batch.summary())  # the caller prints it (the CLI) or reads the report
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
    part: tuple[int, int] | None = None,
    output_type: str | None = None,
) -> BatchReport:
    """Predict every case of a folder (FLARE naming: ``<case>_0000.nii.gz`` in -> ``<case>.nii.gz`` out).

    `output_type` (``nifti``, ``nrrd``, ``mha``, ``dicom-seg``; default ``nifti``) chooses the outputs'
    format and suffix (:func:`plan_folder`): ``dicom-seg`` writes one SEG per DICOM series, ``<series folder>.dcm``.

    Cases whose output is whole are skipped unless `overwrite`, so an interrupted batch resumes where
    it stopped; an empty or truncated output is redone. Each output is written through a temporary
    file, verified and renamed: a failure never leaves a partial file. Each case is predicted under a
    lock file, so two runs on the same output share the cases instead of both doing all. A case that
    fails (unreadable input, full disk, ...) is listed in ``BatchReport.failed`` and the others go on.
    `part` ``(I, N)`` predicts only shard I of N (cases chosen by a hash of their name).

    Raises:
        InputError: the input folder does not exist or holds no case; the output folder is the input,
            a file, or not writable.
        ModelFolderError: a model folder is missing or invalid.
    """
    plan_folder(input_dir, output_dir, overwrite=overwrite, part=part, output_type=output_type)  # refuse bad paths before loading models
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    return run_folder(predictor, input_dir, output_dir, overwrite=overwrite, progress=progress, part=part, output_type=output_type)

