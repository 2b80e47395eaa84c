"""The pseudo-label folder: teacher labels in FLARE layout with a provenance manifest (no torch here).

Written by :func:`flareseg.inference.pseudolabel.pseudolabel_cohort`, read by
:func:`flareseg.data.cohort.prepare_cohort` (``pseudo_labels=``)::

    DIR/labelsTr/<case>.nii.gz   accepted cases: the case's human labels plus the teacher's, on the
                                 case image's grid, ids 0-14
    DIR/cases/<case>.json        one record per finished case (written last: its presence marks the case done)
    DIR/provenance.json          every record, the teacher models, the thresholds and the volume ranges

A record: ``{"case", "accepted", "confidence", "human_classes", "teacher_classes", "volumes_ml",
"implausible"}``; ``teacher_classes`` are the ids whose voxels in the label file the teacher made
(every other non-zero voxel is a human label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flareseg.errors import InputError
from flareseg.io import label_file_name, read_json

LABELS_DIR = "labelsTr"
CASES_DIR = "cases"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_FORMAT = "flareseg-pseudolabels/1"


@dataclass(frozen=True)
class PseudoLabel:
    """One accepted case of a pseudo-label folder."""

    case: str
    label: Path
    teacher_classes: tuple[int, ...]
    confidence: float


def read_pseudo_labels(folder: str | Path, cohort_cases: set[str]) -> dict[str, PseudoLabel]:
    """The accepted cases of pseudo-label folder `folder`, checked against the cohort's case names.

    Raises:
        InputError: no or unreadable ``provenance.json``, another format, a record without its fields,
            a case that is not in the cohort, or an accepted case whose label file is missing (the
            message names the file and the case).
    """
    folder = Path(folder)
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise InputError(f"{folder}: no {PROVENANCE_FILE}; is this a folder written by `flareseg pseudolabel`?")
    manifest = read_json(path)
    if manifest.get("format") != PROVENANCE_FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r}, expected {PROVENANCE_FORMAT!r}")
    records = manifest.get("cases")
    if not isinstance(records, dict):
        raise InputError(f"{path}: 'cases' must be a JSON object of case records")
    unknown = sorted(set(records) - cohort_cases)
    if unknown:
        raise InputError(f"{path}: names case(s) {unknown[:5]} that are not in the cohort (another cohort's pseudo-labels?)")
    out = {}
    for name, record in records.items():
        try:
            accepted, teacher, confidence = bool(record["accepted"]), record["teacher_classes"], float(record["confidence"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: the record of case {name} lacks accepted/teacher_classes/confidence") from None
        if not accepted:
            continue
        label = folder / LABELS_DIR / label_file_name(name)
        if not label.is_file():
            raise InputError(f"{path}: case {name} is accepted but its label file {label} is missing")
        bad = [c for c in teacher if not isinstance(c, int) or not 1 <= c <= 14]
        if bad:
            raise InputError(f"{path}: case {name} names teacher classes {bad} outside 1-14")
        out[name] = PseudoLabel(name, label, tuple(sorted(int(c) for c in teacher)), confidence)
    return out
