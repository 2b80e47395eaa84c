"""Folder evaluation with the FLARE23 scorer: per-case CSV, summary table and JSON.

``evaluate_folder(pred_dir, ref_dir, out_dir)`` scores every reference label map
``ref_dir/<case>.nii.gz`` against ``pred_dir/<case>.nii.gz`` exactly as the official
``FLARE23_DSC_NSD_Eval.py`` does (see :mod:`flareseg.evaluation.metrics` and ``docs/evaluation.md``) and writes

* ``per_case.csv``: long form, columns ``case,label,name,dsc,nsd`` (``case`` is the file name);
* ``summary.md``: per class mean +- std of DSC and NSD, the organ mean, the lesion apart;
* ``summary.json``: the same numbers, plus the official scorer's keys (``Liver_DSC`` ... ``Organ_NSD``).

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tqdm import tqdm

from flareseg.errors import ConfigError, GeometryError, InputError
from flareseg.io import atomic_write_text
from flareseg.labels import ALL_FOREGROUND_IDS, BY_ID, LESION, ORGAN_IDS
from flareseg.evaluation.metrics import DECIMALS, DEFAULT_NSD_GATE, CaseScores, as_official_labels, score_case

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".nii.gz", ".nii")
"""Reference files that are scored (the official scorer globs ``*.nii.gz``)."""
CSV_COLUMNS = ("case", "label", "name", "dsc", "nsd")
MISSING_POLICIES = ("error", "empty")
OFFICIAL_KEYS: dict[int, str] = {i: BY_ID[i].short for i in ORGAN_IDS} | {LESION: "Tumor"}
"""Column names of the official scorer's ``scores.txt`` (``<key>_DSC`` / ``<key>_NSD``)."""


@dataclass(frozen=True)
class CaseScore:
    """One row of ``per_case.csv``: the scores of one class in one case (rounded to 4 decimals)."""

    case: str
    label: int
    name: str
    dsc: float
    nsd: float


@dataclass(frozen=True)
class Summary:
    """The result of :func:`evaluate_folder`.

    Attributes:
        rows: every (case, class) score, in case then label order.
        stats: the dict of :func:`summarize` (also written as ``summary.json``).
        per_case_csv, summary_md, summary_json: the written files.
    """

    rows: tuple[CaseScore, ...]
    stats: dict
    per_case_csv: Path
    summary_md: Path
    summary_json: Path
    missing: tuple[str, ...] = field(default=())

    @property
    def organ_dsc(self) -> float | None:
        return self.stats["organ"]["dsc"] if self.stats["organ"] else None

    @property
    def organ_nsd(self) -> float | None:
        return self.stats["organ"]["nsd"] if self.stats["organ"] else None

    @property
    def lesion_dsc(self) -> float | None:
        return self.stats["lesion"]["dsc"] if self.stats["lesion"] else None

    @property
    def lesion_nsd(self) -> float | None:
        return self.stats["lesion"]["nsd"] if self.stats["lesion"] else None


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _strip_label_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_label_array(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a NIfTI label map as the official scorer does.

    Returns:
        ``(labels, spacing, affine)``: the voxel array in nibabel order cast to int8 (as
        ``get_fdata().astype(np.int8)``), the header zooms of the first three axes, and the affine.

    Raises:
        InputError: missing, unreadable or not a 3-D volume; the message names the file.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        image = nib.load(str(path))
        shape = image.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise InputError(f"{path}: expected a 3-D label map, got shape {image.shape}")
        proxy = image.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        if np.issubdtype(image.get_data_dtype(), np.integer) and slope == 1 and inter == 0:
            # Integer ids cast to int8 exactly as float64 copies of them would be, without the float64 copy.
            array = np.asanyarray(proxy)
        else:
            array = image.get_fdata()
        array = as_official_labels(np.asarray(array).reshape(shape))
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        affine = np.asarray(image.affine, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise InputError(f"{path}: cannot read the label map ({type(exc).__name__}: {exc})") from None
    return array, spacing, affine  # type: ignore[return-value]


def find_cases(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, *, missing: str = "error") -> list[tuple[str, Path, Path | None]]:
    """Pair every reference file with the prediction of the same file name.

    Returns:
        ``[(file name, reference path, prediction path or None), ...]`` sorted by file name; None only
        with ``missing="empty"``.

    Raises:
        InputError: a folder is missing, the reference folder holds no label map, or (``missing="error"``)
            a prediction is missing; the message names the missing files.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for kind, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if not folder.is_dir():
            raise InputError(f"{folder}: the {kind} folder does not exist")
    refs = sorted(p for p in ref_dir.iterdir() if p.is_file() and _strip_label_suffix(p.name) is not None)
    if not refs:
        raise InputError(f"{ref_dir}: no reference label maps (*.nii.gz, *.nii) found")
    cases, absent = [], []
    for ref in refs:
        pred = pred_dir / ref.name
        if not pred.is_file():
            absent.append(pred)
            cases.append((ref.name, ref, None))
        else:
            cases.append((ref.name, ref, pred))
    if absent and missing == "error":
        shown = ", ".join(str(p) for p in absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise InputError(f"{len(absent)} of {len(refs)} predictions missing: {shown}")
    ref_names = {r.name for r in refs}
    extra = sorted(p.name for p in pred_dir.iterdir() if _strip_label_suffix(p.name) is not None and p.name not in ref_names)
    if extra:
        log.info("%d predictions without a reference are ignored (e.g. %s)", len(extra), extra[0])
    return cases


def score_case_files(
    pred_path: str | os.PathLike | None,
    ref_path: str | os.PathLike,
    *,
    label_ids: Iterable[int] = ALL_FOREGROUND_IDS,
    nsd_gate: float = DEFAULT_NSD_GATE,
) -> CaseScores:
    """Score one prediction file against its reference file (``pred_path=None``: an empty prediction).

    Raises:
        InputError: a file is unreadable.
        GeometryError: the two label maps differ in shape; the message names both files.
    """
    ref, spacing, ref_affine = read_label_array(ref_path)
    if pred_path is None:
        pred = np.zeros_like(ref)
    else:
        pred, pred_spacing, pred_affine = read_label_array(pred_path)
        if pred.shape != ref.shape:
            raise GeometryError(
                f"{pred_path}: prediction shape {pred.shape} differs from reference {ref_path} shape {ref.shape}"
            )
        if not np.allclose(pred_affine, ref_affine, atol=1e-3):
            log.warning(
                "%s: the affine differs from the reference %s (orientation, origin or spacing); scoring the voxel "
                "arrays as they are, like the official scorer", pred_path, ref_path,
            )
    return score_case(ref, pred, spacing, label_ids=label_ids, nsd_gate=nsd_gate)


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def _r(value: float) -> float:
    return float(np.round(np.float64(value), DECIMALS))


def summarize(rows: Iterable[CaseScore], *, nsd_gate: float | None = None) -> dict:
    """Aggregate per-case rows as the official scorer does.

    Class means are means over cases of the rounded per-case values, rounded to 4 decimals; the organ
    score is the mean of the rounded organ class means (all 13 organs when present), rounded; the lesion
    is reported apart. Standard deviations are population std (numpy's default) over cases; the organ
    std is over the per-case means of the organs.

    Returns:
        A JSON-ready dict: ``n_cases``, ``nsd_gate``, ``cases``, ``classes`` (one entry per label),
        ``organ`` and ``lesion`` (``{"dsc", "dsc_std", "nsd", "nsd_std"}`` or None) and ``official``
        (the keys of the official ``scores.txt``: ``Liver_DSC`` ... ``Tumor_NSD``, ``Organ_DSC``, ``Organ_NSD``).
    """
    rows = list(rows)
    cases = list(dict.fromkeys(r.case for r in rows))
    by_label: dict[int, list[CaseScore]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
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
                "dsc_mean": _r(np.mean(dsc)),
                "dsc_std": _r(np.std(dsc)),
                "nsd_mean": _r(np.mean(nsd)),
                "nsd_std": _r(np.std(nsd)),
            }
        )
    organ_classes = [c for c in classes if c["label"] in ORGAN_IDS]
    organ = None
    if organ_classes:
        # Spread over cases of the per-case organ average (cases that have every organ row).
        organ_ids = {c["label"] for c in organ_classes}
        per_case: dict[str, list[CaseScore]] = {}
        for r in rows:
            if r.label in organ_ids:
                per_case.setdefault(r.case, []).append(r)
        complete = [v for v in per_case.values() if len(v) == len(organ_ids)]
        case_dsc = [np.mean([r.dsc for r in v]) for v in complete]
        case_nsd = [np.mean([r.nsd for r in v]) for v in complete]
        organ = {
            "n_classes": len(organ_classes),
            "dsc": _r(np.mean([c["dsc_mean"] for c in organ_classes])),
            "dsc_std": _r(np.std(case_dsc)) if case_dsc else None,
            "nsd": _r(np.mean([c["nsd_mean"] for c in organ_classes])),
            "nsd_std": _r(np.std(case_nsd)) if case_nsd else None,
        }
    lesion = next(
        (
            {"dsc": c["dsc_mean"], "dsc_std": c["dsc_std"], "nsd": c["nsd_mean"], "nsd_std": c["nsd_std"]}
            for c in classes
            if c["label"] == LESION
        ),
        None,
    )
    official: dict[str, float] = {}
    for c in classes:
        official[f"{OFFICIAL_KEYS[c['label']]}_DSC"] = c["dsc_mean"]
    for c in classes:
        official[f"{OFFICIAL_KEYS[c['label']]}_NSD"] = c["nsd_mean"]
    if organ is not None:
        official["Organ_DSC"] = organ["dsc"]
        official["Organ_NSD"] = organ["nsd"]
    return {
        "n_cases": len(cases),
        "nsd_gate": nsd_gate,
        "cases": cases,
        "classes": classes,
        "organ": organ,
        "lesion": lesion,
        "official": official,
    }


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary_markdown(summary: dict) -> str:
    """Render a :func:`summarize` dict as a Markdown table (values in %, mean ± std over cases)."""
    gate = summary.get("nsd_gate")
    lines = [
        "# FLARE23 evaluation",
        "",
        f"{summary['n_cases']} cases. DSC and NSD in %, mean ± std over cases (population std)."
        + (f" NSD gate {gate}: NSD = 0 when DSC < {gate}." if gate is not None else ""),
        "",
        "| Class | NSD tolerance (mm) | DSC (%) | NSD (%) |",
        "|---|---:|---:|---:|",
    ]
    classes = summary["classes"]
    for c in classes:
        if c["label"] in ORGAN_IDS:
            tol = f"{c['tolerance_mm']:g}"
            lines.append(f"| {c['name']} | {tol} | {_pct(c['dsc_mean'], c['dsc_std'])} | {_pct(c['nsd_mean'], c['nsd_std'])} |")
    organ = summary.get("organ")
    if organ:
        label = f"**Organ mean ({organ['n_classes']} organs)**"
        lines.append(f"| {label} | | **{_pct(organ['dsc'], organ['dsc_std'])}** | **{_pct(organ['nsd'], organ['nsd_std'])}** |")
    lesion = next((c for c in classes if c["label"] == LESION), None)
    if lesion:
        lines += [
            "",
            "| Lesion | NSD tolerance (mm) | DSC (%) | NSD (%) |",
            "|---|---:|---:|---:|",
            f"| {lesion['name']} | {lesion['tolerance_mm']:g} | {_pct(lesion['dsc_mean'], lesion['dsc_std'])} | "
            f"{_pct(lesion['nsd_mean'], lesion['nsd_std'])} |",
        ]
    official = summary.get("official") or {}
    if official:
        lines += ["", "Official scorer keys (fractions, as in its `scores.txt`):", "", "```"]
        lines += [f"{k}: {v:.4f}" for k, v in official.items()]
        lines.append("```")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def per_case_csv_text(rows: Iterable[CaseScore]) -> str:
    """The ``per_case.csv`` text: header ``case,label,name,dsc,nsd``, values with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.case, r.label, r.name, f"{r.dsc:.4f}", f"{r.nsd:.4f}"])
    return buffer.getvalue()


def read_per_case_csv(path: str | os.PathLike) -> list[CaseScore]:
    """Read back a ``per_case.csv`` written by :func:`evaluate_folder`."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise InputError(f"{path}: expected the columns {','.join(CSV_COLUMNS)}, got {reader.fieldnames}")
        return [CaseScore(r["case"], int(r["label"]), r["name"], float(r["dsc"]), float(r["nsd"])) for r in reader]


def evaluate_folder(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    nsd_gate: float = DEFAULT_NSD_GATE,
    missing: str = "error",
    label_ids: Sequence[int] = ALL_FOREGROUND_IDS,
    progress: bool = True,
) -> Summary:
    """Score every reference label map in `ref_dir` against the prediction of the same name in `pred_dir`.

    Args:
        pred_dir: predicted label maps, ``<case>.nii.gz``.
        ref_dir: reference label maps, ``<case>.nii.gz`` (``.nii`` also accepted).
        out_dir: where ``per_case.csv``, ``summary.md`` and ``summary.json`` are written (created).
        nsd_gate: NSD = 0 when DSC < gate (0.1: FLARE23 test phase, the default; 0.2: later versions).
        missing: ``"error"`` (the official behaviour) or ``"empty"``: score a missing prediction as an
            all-background label map.
        label_ids: classes to score (default 1-14).
        progress: show a progress bar on stderr.

    Returns:
        A :class:`Summary`.

    Raises:
        InputError: a folder or a prediction is missing, or a file is unreadable (named in the message).
        GeometryError: a prediction's shape differs from its reference's (both files named).
    """
    if not 0 <= nsd_gate <= 1:
        raise ConfigError(f"nsd_gate must lie in [0, 1], got {nsd_gate}")
    label_ids = tuple(label_ids)
    cases = find_cases(pred_dir, ref_dir, missing=missing)
    absent = tuple(name for name, _, pred in cases if pred is None)
    if absent:
        log.warning("%d predictions missing, scored as empty: %s", len(absent), ", ".join(absent[:5]))
    iterator = tqdm(cases, desc="evaluate", unit="case", disable=not progress)
    rows: list[CaseScore] = []
    for name, ref, pred in iterator:
        scores = score_case_files(pred, ref, label_ids=label_ids, nsd_gate=nsd_gate)
        for label, (dsc, nsd) in scores.items():
            rows.append(CaseScore(name, label, BY_ID[label].name, dsc, nsd))
        log.debug("%s: %s", name, scores)
    stats = summarize(rows, nsd_gate=nsd_gate)
    stats["missing_predictions"] = list(absent)
    out = Path(out_dir)
    csv_path = atomic_write_text(out / "per_case.csv", per_case_csv_text(rows))
    md_path = atomic_write_text(out / "summary.md", summary_markdown(stats))
    json_path = atomic_write_text(out / "summary.json", json.dumps(stats, indent=2) + "\n")
    return Summary(tuple(rows), stats, csv_path, md_path, json_path, absent)
