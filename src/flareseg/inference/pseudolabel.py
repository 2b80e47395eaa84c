"""Pseudo-labels: a teacher (organ + tumour model) labels what the humans left unlabelled.

:func:`pseudolabel_cohort` predicts every case of a FLARE-layout cohort that lacks a human label for
some organ (partially labelled and unlabelled cases; cases with all 13 organs are left alone) and
writes a pseudo-label folder (:mod:`flareseg.data.pseudo`) that ``flareseg prepare --pseudo-labels``
reads. A round is: train a teacher, pseudo-label, prepare with the pseudo-labels, train a student
with ``case_selection="partial"``; the student can be the next round's teacher.

Per case (:func:`merge_teacher`):

- **Human labels win.** Every class the human label holds keeps exactly its human voxels; teacher
  voxels of those classes elsewhere become background.
- **Confidence** (a value in [0, 1]): the fraction of the organs the human label lacks whose teacher
  volume lies in the cohort's plausible range, ``[min / VOLUME_MARGIN, max * VOLUME_MARGIN]`` of that
  organ's volume over the human-labelled cases (an organ the teacher misses counts as implausible;
  an organ no human labels anywhere is not taught and not counted). Only plausible organs are taught;
  the others stay unlabelled (the marginal loss ignores them). A case whose confidence is below
  ``min_confidence`` (or with nothing to teach) is rejected: no label file, listed in the provenance.
- **Lesions** need the stricter ``min_lesion_confidence``: teacher lesion voxels are kept only in a
  case whose confidence reaches it and whose human label holds no lesion; otherwise they become
  background and the lesion class stays unlabelled.

The confidence uses the label maps only (no softmax): the batch machinery of
:mod:`flareseg.inference.folder` predicts label maps, and organ volumes are what a reader can check.

Batch behaviour as :func:`flareseg.inference.folder.predict_folder`: a case with a record in
``DIR/cases/`` is done and skipped (a kill -9 loses at most the case in progress), each case runs under
a lock file, label files are written atomically and verified, and a bad case is reported by name while
the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flareseg.data.pseudo import CASES_DIR, LABELS_DIR, PROVENANCE_FILE, PROVENANCE_FORMAT
from flareseg.errors import ConfigError, FlaresegError, InputError
from flareseg.inference.config import InferenceConfig
from flareseg.inference.folder import case_lock, guarded
from flareseg.inference.pipeline import TwoStepPredictor
from flareseg.io import (
    CaseInput,
    atomic_write_text,
    find_training_cases,
    label_file_name,
    read_json,
    read_label,
    remove_stale_temporaries,
    write_label,
)
from flareseg.io.output import check_output_folder
from flareseg.labels import LESION, ORGAN_IDS, label_counts
from flareseg.model.predictor import ModelPredictor

log = logging.getLogger(__name__)

VOLUME_MARGIN = 2.0
"""Plausible organ volumes: [smallest human volume / 2, largest human volume * 2]."""
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MIN_LESION_CONFIDENCE = 0.9


def plausible_ranges(volumes: list[dict[int, float]], *, margin: float = VOLUME_MARGIN) -> dict[int, tuple[float, float]]:
    """Per organ id, the plausible volume range in mL from human-labelled volumes.

    Args:
        volumes: one ``{organ id: mL}`` per human label, holding only the organs it labels.

    Returns:
        ``{id: (min / margin, max * margin)}`` for every organ labelled in at least one case.
    """
    out: dict[int, tuple[float, float]] = {}
    for organ in ORGAN_IDS:
        seen = [v[organ] for v in volumes if v.get(organ, 0.0) > 0]
        if seen:
            out[organ] = (min(seen) / margin, max(seen) * margin)
    return out


def class_volumes(label: np.ndarray, voxel_ml: float) -> dict[int, float]:
    """``{id: mL}`` of every non-zero id of an integer label map."""
    return {i: c * voxel_ml for i, c in label_counts(label).items()}


def merge_teacher(
    teacher: np.ndarray,
    human: np.ndarray | None,
    *,
    voxel_ml: float,
    ranges: dict[int, tuple[float, float]],
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    min_lesion_confidence: float = DEFAULT_MIN_LESION_CONFIDENCE,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One case's training label from the teacher's map and the human label (see the module docstring).

    Args:
        teacher: (X, Y, Z) uint8 teacher labels 0-14.
        human: (X, Y, Z) uint8 human labels on the same grid, or None (unlabelled case).
        voxel_ml: volume of one voxel in mL.
        ranges: :func:`plausible_ranges` of the cohort.

    Returns:
        The merged (X, Y, Z) uint8 map and the case's record (``accepted``, ``confidence``,
        ``human_classes``, ``teacher_classes``, ``volumes_ml`` of the teacher's candidate organs,
        ``implausible``, ``lesion``).

    Raises:
        InputError: the two maps differ in shape.
    """
    if human is not None and human.shape != teacher.shape:
        raise InputError(f"teacher map {teacher.shape} and human label {human.shape} differ in shape")
    human_classes = sorted(int(v) for v in np.unique(human) if v) if human is not None else []
    candidates = [o for o in ORGAN_IDS if o not in human_classes and o in ranges]
    volumes = class_volumes(teacher, voxel_ml)
    plausible = [o for o in candidates if ranges[o][0] <= volumes.get(o, 0.0) <= ranges[o][1]]
    confidence = len(plausible) / len(candidates) if candidates else 0.0
    teacher_classes = list(plausible)
    lesion = "human" if LESION in human_classes else "none predicted"
    if LESION not in human_classes and volumes.get(LESION, 0.0) > 0:
        if confidence >= min_lesion_confidence:
            teacher_classes.append(LESION)
            lesion = "kept"
        else:
            lesion = f"dropped: confidence {confidence:.3f} < {min_lesion_confidence}"
    merged = np.where(np.isin(teacher, teacher_classes), teacher, 0).astype(np.uint8)
    if human is not None:
        merged = np.where(human > 0, human, merged).astype(np.uint8)
    record = {
        "accepted": bool(teacher_classes) and confidence >= min_confidence,
        "confidence": round(confidence, 4),
        "human_classes": human_classes,
        "teacher_classes": teacher_classes,
        "volumes_ml": {str(o): round(volumes.get(o, 0.0), 2) for o in candidates},
        "implausible": [o for o in candidates if o not in plausible],
        "lesion": lesion,
    }
    return merged, record


@dataclass
class PseudoLabelReport:
    """The result of :func:`pseudolabel_cohort`: case names by outcome, failures with their messages."""

    data_dir: str
    out_dir: str
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = (
            f"{len(self.accepted)} pseudo-labelled, {len(self.rejected)} rejected (low confidence), "
            f"{len(self.skipped)} skipped (already done), {len(self.failed)} failed in {self.seconds:.1f} s"
        )
        for name, message in self.failed.items():
            text += f"\n  FAILED {name}: {message}"
        return text


def _check_threshold(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


def _human_labels(found: list[tuple[str, Path, Path | None]]) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """Volumes (mL) per human-labelled class of every labelled case, and the cases whose label cannot be read."""
    volumes: dict[str, dict[int, float]] = {}
    failed: dict[str, str] = {}
    for name, _, label_path in found:
        if label_path is None:
            continue
        try:
            label = read_label(label_path)
        except FlaresegError as exc:
            failed[name] = str(exc)
            continue
        ids = [int(v) for v in np.unique(label.array) if v]
        if any(v > LESION for v in ids):
            failed[name] = f"{label_path}: label ids {[v for v in ids if v > LESION]} are outside the FLARE schema (0-{LESION})"
            continue
        volumes[name] = class_volumes(label.array, float(np.prod(label.spacing)) / 1000.0)
    return volumes, failed


def _pseudolabel_case(predictor: TwoStepPredictor, name: str, image: Path, human_path: Path | None, out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Predict, merge and write one case; returns its record (written last, as the done marker)."""
    seg = predictor.segment(image, case=name)
    human = read_label(human_path, seg.label, reference_path=image).array if human_path is not None else None
    merged, record = merge_teacher(
        seg.label.array, human, voxel_ml=float(np.prod(seg.label.spacing)) / 1000.0, ranges=settings["ranges"],
        min_confidence=settings["min_confidence"], min_lesion_confidence=settings["min_lesion_confidence"],
    )
    record = {"case": name, "image": str(image), "human_label": None if human_path is None else str(human_path), **record}
    if record["accepted"]:
        write_label(merged, seg.label, out_dir / LABELS_DIR / label_file_name(name))
    atomic_write_text(out_dir / CASES_DIR / f"{name}.json", json.dumps(record, indent=1))
    return record


def pseudolabel_cohort(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    organ_model: str | os.PathLike | ModelPredictor,
    tumor_model: str | os.PathLike | ModelPredictor | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    min_lesion_confidence: float = DEFAULT_MIN_LESION_CONFIDENCE,
    config: InferenceConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PseudoLabelReport:
    """Pseudo-label the partially labelled and unlabelled cases of a FLARE-layout cohort into `out_dir`.

    Args:
        data_dir: the cohort (``imagesTr/``, ``labelsTr/``, ``unlabel*/``).
        out_dir: the pseudo-label folder (:mod:`flareseg.data.pseudo`); a rerun continues it.
        organ_model, tumor_model: the teacher (model folders or loaded predictors).
        min_confidence: cases below it are rejected (module docstring).
        min_lesion_confidence: teacher lesions are kept only at or above it; at least `min_confidence`.
        config: inference settings (default: ``fast`` mode).

    Returns:
        A :class:`PseudoLabelReport`; ``DIR/provenance.json`` holds every finished case's record.

    Raises:
        ConfigError: a threshold outside [0, 1], or a lesion threshold below the organ threshold.
        InputError: the cohort is missing or not FLARE-layout; the output folder cannot be written.
        ModelFolderError: a teacher model folder is missing or invalid.
    """
    start = time.perf_counter()
    _check_threshold("min_confidence", min_confidence)
    _check_threshold("min_lesion_confidence", min_lesion_confidence)
    if min_lesion_confidence < min_confidence:
        raise ConfigError(f"min_lesion_confidence ({min_lesion_confidence}) must be at least min_confidence ({min_confidence}): lesions need the stricter threshold")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    found = find_training_cases(data_dir)
    check_output_folder(out_dir, source=data_dir)
    volumes, failed = _human_labels(found)
    settings = {
        "ranges": plausible_ranges(list(volumes.values())),
        "min_confidence": float(min_confidence),
        "min_lesion_confidence": float(min_lesion_confidence),
    }
    report = PseudoLabelReport(str(data_dir), str(out_dir), failed=dict(failed))
    todo = [(n, i, l) for n, i, l in found if n not in failed and not set(ORGAN_IDS) <= set(volumes.get(n, {}))]
    cases_dir = out_dir / CASES_DIR
    for folder in (out_dir / LABELS_DIR, cases_dir):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)  # what a killed run was writing
    pending = [c for c in todo if not (cases_dir / f"{c[0]}.json").is_file()]
    report.skipped = [n for n, _, _ in todo if (cases_dir / f"{n}.json").is_file()]
    if pending:
        predictor = TwoStepPredictor(organ_model, tumor_model, config=config or InferenceConfig.for_mode("fast"), device=device)
        from tqdm.auto import tqdm

        for name, image, human_path in tqdm(pending, desc="pseudolabel", unit="case", disable=not progress):
            with case_lock(cases_dir, name) as mine:
                if not mine or (cases_dir / f"{name}.json").is_file():
                    report.skipped.append(name)
                    continue
                output = out_dir / LABELS_DIR / label_file_name(name)
                status, result = guarded(CaseInput(name, image), output, lambda: _pseudolabel_case(predictor, name, image, human_path, out_dir, settings))
            if status == "failed":
                report.failed[name] = result
            elif result["accepted"]:
                report.accepted.append(name)
            else:
                report.rejected.append(name)
    write_provenance(out_dir, data_dir, organ_model, tumor_model, settings)
    report.seconds = time.perf_counter() - start
    log.info("%s", report.summary())
    return report


def write_provenance(out_dir: Path, data_dir: Path, organ_model: Any, tumor_model: Any, settings: dict[str, Any]) -> Path:
    """Gather every case record of ``DIR/cases`` into ``DIR/provenance.json`` (atomically)."""
    records = {}
    for path in sorted(p for p in (out_dir / CASES_DIR).glob("*.json") if not p.name.startswith(".")):
        record = read_json(path)
        records[record["case"]] = record
    manifest = {
        "format": PROVENANCE_FORMAT,
        "cohort": str(data_dir.resolve()),
        "teacher": {"organ_model": _model_name(organ_model), "tumor_model": _model_name(tumor_model)},
        "min_confidence": settings["min_confidence"],
        "min_lesion_confidence": settings["min_lesion_confidence"],
        "volume_margin": VOLUME_MARGIN,
        "plausible_volumes_ml": {str(k): [round(lo, 2), round(hi, 2)] for k, (lo, hi) in settings["ranges"].items()},
        "accepted": sum(1 for r in records.values() if r["accepted"]),
        "cases": records,
    }
    return atomic_write_text(out_dir / PROVENANCE_FILE, json.dumps(manifest, indent=1))


def _model_name(model: Any) -> str | None:
    if model is None:
        return None
    if isinstance(model, ModelPredictor):
        return str(model.folder) if model.folder is not None else repr(model)
    return str(Path(model).resolve())
