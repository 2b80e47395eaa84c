"""Cohort summaries: the official FLARE23 numbers, and beside them what those numbers cover.

:func:`summarize` aggregates per-case rows exactly as the official scorer does (``organ``, ``lesion``,
``official``) and adds, never replacing them (DESIGN.md 7 and 7b):

* **Classes present in the reference.** The official rule scores a class that is empty in both the
  reference and the prediction as 1, so a reference lacking organs inflates (or, with a prediction
  there, deflates) the organ mean without testing those organs. Per case: the number of scored organ
  classes with at least one reference voxel, and the mean DSC / NSD over those classes only. Over cases:
  the mean of these per-case means (cases with no organ in the reference left out), and the organ
  classes present in no reference.
* **Lesion DSC where there are lesions.** The official lesion DSC over the cases whose reference holds
  lesion voxels, with the number of such cases.
* **Lesion-wise detection**, pooled: see :mod:`flareseg.evaluation.lesions`.

Per-case means are rounded to 4 decimals and cohort means are means of the rounded per-case values,
rounded, as the official scorer aggregates. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flareseg.errors import InputError
from flareseg.evaluation.lesions import LesionCounts, detect_lesions, pool_detections
from flareseg.evaluation.metrics import DECIMALS, as_official_labels
from flareseg.labels import BY_ID, LESION, ORGAN_IDS, label_counts

OFFICIAL_KEYS: dict[int, str] = {i: BY_ID[i].short for i in ORGAN_IDS} | {LESION: "Tumor"}
"""Column names of the official scorer's ``scores.txt`` (``<key>_DSC`` / ``<key>_NSD``)."""
CASE_COLUMNS = (
    "case", "organs_scored", "organs_in_reference", "organ_dsc", "organ_nsd", "organ_dsc_present",
    "organ_nsd_present", "lesion_in_reference", "lesion_dsc", "lesion_nsd", "reference_lesions",
    "detected_lesions", "missed_lesions", "predicted_lesions", "false_positive_lesions",
)
"""Keys of each :func:`case_details` entry (and the columns of ``cases.csv``)."""


@dataclass(frozen=True)
class CaseScore:
    """One row of ``per_case.csv``: the scores of one class in one case (rounded to 4 decimals)."""

    case: str
    label: int
    name: str
    dsc: float
    nsd: float


@dataclass(frozen=True)
class CaseFacts:
    """What the reference of one case holds, and its lesion-wise detection.

    Attributes:
        case: the case's file name (as in :class:`CaseScore`).
        present: the scored class ids with at least one voxel in the reference, ascending.
        lesions: lesion-wise counts, or None when the lesion class is not scored.
    """

    case: str
    present: tuple[int, ...]
    lesions: LesionCounts | None


def case_facts(case: str, reference: np.ndarray, prediction: np.ndarray, *, label_ids: Iterable[int]) -> CaseFacts:
    """The :class:`CaseFacts` of one case from its two label maps.

    Args:
        case: the case's name.
        reference, prediction: (I, J, K) label maps on the same voxel grid; cast to int8 as the official
            scorer reads them (ids above 127 wrap), so that presence agrees with the DSC rules.
        label_ids: the scored class ids.

    Raises:
        GeometryError: the label maps differ in shape.
    """
    ref, pred = as_official_labels(reference), as_official_labels(prediction)
    counts = label_counts(ref)
    ids = sorted({int(i) for i in label_ids})
    present = tuple(i for i in ids if 0 < i < 128 and counts.get(i, 0) > 0)
    lesions = detect_lesions(ref == LESION, pred == LESION) if LESION in ids else None
    return CaseFacts(case, present, lesions)


def _r(value: float) -> float:
    return float(np.round(np.float64(value), DECIMALS))


def _mean(values: Sequence[float]) -> float | None:
    return _r(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> float | None:
    return _r(np.std(values)) if values else None


# --------------------------------------------------------------------------------------------------
# The official aggregation
# --------------------------------------------------------------------------------------------------


def _class_stats(by_label: dict[int, list[CaseScore]], facts: dict[str, CaseFacts]) -> list[dict]:
    classes = []
    for label in sorted(by_label):
        dsc = np.array([r.dsc for r in by_label[label]], dtype=np.float64)
        nsd = np.array([r.nsd for r in by_label[label]], dtype=np.float64)
        cls = BY_ID[label]
        classes.append(
            {
                "label": label,
                "name": cls.name,
                "short": cls.short,
                "tolerance_mm": cls.nsd_tolerance_mm,
                "n": int(len(dsc)),
                "n_present": sum(label in facts[r.case].present for r in by_label[label]),
                "dsc_mean": _r(np.mean(dsc)),
                "dsc_std": _r(np.std(dsc)),
                "nsd_mean": _r(np.mean(nsd)),
                "nsd_std": _r(np.std(nsd)),
            }
        )
    return classes


def _official_organ(classes: list[dict], rows: list[CaseScore]) -> dict | None:
    organ_classes = [c for c in classes if c["label"] in ORGAN_IDS]
    if not organ_classes:
        return None
    # Spread over cases of the per-case organ average (cases that have every organ row).
    organ_ids = {c["label"] for c in organ_classes}
    per_case: dict[str, list[CaseScore]] = {}
    for r in rows:
        if r.label in organ_ids:
            per_case.setdefault(r.case, []).append(r)
    complete = [v for v in per_case.values() if len(v) == len(organ_ids)]
    return {
        "n_classes": len(organ_classes),
        "dsc": _r(np.mean([c["dsc_mean"] for c in organ_classes])),
        "dsc_std": _std([np.mean([r.dsc for r in v]) for v in complete]),
        "nsd": _r(np.mean([c["nsd_mean"] for c in organ_classes])),
        "nsd_std": _std([np.mean([r.nsd for r in v]) for v in complete]),
    }


def _official_keys(classes: list[dict], organ: dict | None) -> dict[str, float]:
    official = {f"{OFFICIAL_KEYS[c['label']]}_DSC": c["dsc_mean"] for c in classes}
    official |= {f"{OFFICIAL_KEYS[c['label']]}_NSD": c["nsd_mean"] for c in classes}
    if organ is not None:
        official["Organ_DSC"] = organ["dsc"]
        official["Organ_NSD"] = organ["nsd"]
    return official


# --------------------------------------------------------------------------------------------------
# Beside the official numbers
# --------------------------------------------------------------------------------------------------


def case_details(rows: Iterable[CaseScore], facts: Iterable[CaseFacts]) -> list[dict]:
    """One JSON-ready dict per case, with the keys of :data:`CASE_COLUMNS`, in the order of `facts`.

    ``organ_dsc`` / ``organ_nsd`` are the means over all scored organ classes (the official per-case
    view); ``organ_dsc_present`` / ``organ_nsd_present`` the means over the ``organs_in_reference``
    classes with reference voxels only (None when there is none). Organ values are None when no organ
    is scored; lesion values (and the lesion counts) are None when the lesion class is not scored.
    """
    by_case: dict[str, dict[int, CaseScore]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.label] = r
    details = []
    for f in facts:
        scores = by_case.get(f.case, {})
        organs = [scores[i] for i in sorted(scores) if i in ORGAN_IDS]
        present = [r for r in organs if r.label in f.present]
        lesion, counts = scores.get(LESION), f.lesions
        details.append(
            {
                "case": f.case,
                "organs_scored": len(organs),
                "organs_in_reference": len(present),
                "organ_dsc": _mean([r.dsc for r in organs]),
                "organ_nsd": _mean([r.nsd for r in organs]),
                "organ_dsc_present": _mean([r.dsc for r in present]),
                "organ_nsd_present": _mean([r.nsd for r in present]),
                "lesion_in_reference": None if lesion is None else LESION in f.present,
                "lesion_dsc": None if lesion is None else lesion.dsc,
                "lesion_nsd": None if lesion is None else lesion.nsd,
                "reference_lesions": None if counts is None else counts.reference,
                "detected_lesions": None if counts is None else counts.detected,
                "missed_lesions": None if counts is None else counts.missed,
                "predicted_lesions": None if counts is None else counts.predicted,
                "false_positive_lesions": None if counts is None else counts.false_positives,
            }
        )
    return details


def _organ_present(classes: list[dict], details: list[dict]) -> dict | None:
    organ_classes = [c for c in classes if c["label"] in ORGAN_IDS]
    if not organ_classes:
        return None
    tested = [d for d in details if d["organs_in_reference"]]
    dsc, nsd = [d["organ_dsc_present"] for d in tested], [d["organ_nsd_present"] for d in tested]
    return {
        "n_classes": len(organ_classes),
        "n_cases": len(tested),
        "classes_per_case": _mean([d["organs_in_reference"] for d in details]),
        "absent_classes": [c["name"] for c in organ_classes if c["n_present"] == 0],
        "dsc": _mean(dsc),
        "dsc_std": _std(dsc),
        "nsd": _mean(nsd),
        "nsd_std": _std(nsd),
    }


def _lesion_present(details: list[dict]) -> dict:
    tested = [d for d in details if d["lesion_in_reference"]]
    dsc, nsd = [d["lesion_dsc"] for d in tested], [d["lesion_nsd"] for d in tested]
    return {"n_cases": len(tested), "dsc": _mean(dsc), "dsc_std": _std(dsc), "nsd": _mean(nsd), "nsd_std": _std(nsd)}


def summarize(rows: Iterable[CaseScore], facts: Iterable[CaseFacts], *, nsd_gate: float | None = None) -> dict:
    """Aggregate per-case rows as the official scorer does, and report beside them what they cover.

    Official: class means are means over cases of the rounded per-case values, rounded to 4 decimals;
    the organ score is the mean of the rounded organ class means (all 13 organs when scored), rounded;
    the lesion is reported apart. Standard deviations are population std (numpy's default) over cases;
    the organ std is over the per-case means of the organs.

    Args:
        rows: every (case, class) score.
        facts: one :class:`CaseFacts` per case of `rows` (see :func:`case_facts`).
        nsd_gate: recorded in the result.

    Returns:
        A JSON-ready dict. Official numbers: ``n_cases``, ``nsd_gate``, ``cases``, ``classes`` (one entry
        per label, with ``n_present``: the cases whose reference holds the class), ``organ`` and
        ``lesion`` (``{"dsc", "dsc_std", "nsd", "nsd_std"}`` or None) and ``official`` (the keys of the
        official ``scores.txt``: ``Liver_DSC`` ... ``Tumor_NSD``, ``Organ_DSC``, ``Organ_NSD``). Beside
        them: ``organ_present`` (``n_classes``, ``n_cases`` with an organ in the reference,
        ``classes_per_case``, ``absent_classes``, ``dsc``, ``dsc_std``, ``nsd``, ``nsd_std``; None when
        no organ is scored), ``lesion_present`` (``n_cases`` whose reference holds lesion voxels and the
        lesion DSC/NSD over them, None values when there is none) and ``lesion_detection`` (see
        :func:`~flareseg.evaluation.lesions.pool_detections`), both None when the lesion is not scored,
        and ``per_case`` (:func:`case_details`).

    Raises:
        InputError: a case of `rows` has no facts, or facts name a case without rows.
    """
    rows, facts = list(rows), list(facts)
    cases = list(dict.fromkeys(r.case for r in rows))
    by_case = {f.case: f for f in facts}
    if set(by_case) != set(cases) or len(by_case) != len(facts):
        unmatched = sorted(set(by_case) ^ set(cases))
        raise InputError(f"the scores and the case facts must name the same cases once each; unmatched: {unmatched}")
    by_label: dict[int, list[CaseScore]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    classes = _class_stats(by_label, by_case)
    organ = _official_organ(classes, rows)
    lesion = next(
        ({"dsc": c["dsc_mean"], "dsc_std": c["dsc_std"], "nsd": c["nsd_mean"], "nsd_std": c["nsd_std"]} for c in classes if c["label"] == LESION),
        None,
    )
    details = case_details(rows, [by_case[c] for c in cases])
    lesion_counts = [by_case[c].lesions for c in cases]
    scored_lesion = lesion is not None and all(c is not None for c in lesion_counts)
    return {
        "n_cases": len(cases),
        "nsd_gate": nsd_gate,
        "cases": cases,
        "classes": classes,
        "organ": organ,
        "lesion": lesion,
        "official": _official_keys(classes, organ),
        "organ_present": _organ_present(classes, details),
        "lesion_present": _lesion_present(details) if scored_lesion else None,
        "lesion_detection": pool_detections(lesion_counts) if scored_lesion else None,
        "per_case": details,
    }
