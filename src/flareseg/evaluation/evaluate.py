"""Folder evaluation with the FLARE23 scorer: per-case CSVs, summary table and JSON.

``evaluate_folder(pred_dir, ref_dir, out_dir)`` scores every reference label map
``ref_dir/<case>.nii.gz`` against ``pred_dir/<case>.nii.gz`` exactly as the official
``FLARE23_DSC_NSD_Eval.py`` does (see :mod:`flareseg.evaluation.metrics` and ``docs/evaluation.md``),
adds beside the official numbers what they cover (:mod:`flareseg.evaluation.summary`,
:mod:`flareseg.evaluation.lesions`) and writes

* ``per_case.csv``: long form, columns ``case,label,name,dsc,nsd`` (``case`` is the file name);
* ``cases.csv``: one row per case: organ classes in the reference, organ means over all scored and over
  present classes, lesion presence, DSC and lesion-wise counts;
* ``summary.md``: the headline, per class mean +- std of DSC and NSD, the organ mean, the lesion apart,
  the scores over present classes and cases with lesions, lesion-wise detection, a per-case table;
* ``summary.json``: the same numbers, plus the official scorer's keys (``Liver_DSC`` ... ``Organ_NSD``).

Nothing here imports torch.
"""

from __future__ import annotations

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
from flareseg.io.read import check_declared_size
from flareseg.io.output import check_output_folder
from flareseg.labels import ALL_FOREGROUND_IDS, BY_ID, LESION
from flareseg.evaluation.metrics import DEFAULT_NSD_GATE, CaseScores, as_official_labels, score_case
from flareseg.evaluation.summary import CaseScore, case_facts, summarize
from flareseg.evaluation.tables import cases_csv_text, per_case_csv_text, summary_markdown

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".nii.gz", ".nii")
"""Reference files that are scored (the official scorer globs ``*.nii.gz``)."""
MISSING_POLICIES = ("error", "empty")


@dataclass(frozen=True)
class Summary:
    """The result of :func:`evaluate_folder`.

    Attributes:
        rows: every (case, class) score, in case then label order.
        stats: the dict of :func:`~flareseg.evaluation.summary.summarize` (also written as ``summary.json``).
        per_case_csv, cases_csv, summary_md, summary_json: the written files.
        missing: the predictions scored as empty (``missing="empty"``).
    """

    rows: tuple[CaseScore, ...]
    stats: dict
    per_case_csv: Path
    cases_csv: Path
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

    @property
    def organ_dsc_present(self) -> float | None:
        """Mean over cases of the organ DSC over the classes present in each reference."""
        return self.stats["organ_present"]["dsc"] if self.stats["organ_present"] else None

    @property
    def lesion_dsc_present(self) -> float | None:
        """Lesion DSC over the cases whose reference holds lesion voxels (None when there is none)."""
        return self.stats["lesion_present"]["dsc"] if self.stats["lesion_present"] else None

    @property
    def lesion_sensitivity(self) -> float | None:
        """Detected / all reference lesions, pooled (None when no reference holds a lesion)."""
        return self.stats["lesion_detection"]["sensitivity"] if self.stats["lesion_detection"] else None


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
        InputError: missing, unreadable, not a 3-D volume, or a header declaring more voxels than flareseg
            reads or than the file holds (checked before the voxels are read); the message names the file.
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
        check_declared_size(path, shape)
        proxy = image.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        if np.issubdtype(image.get_data_dtype(), np.integer) and slope == 1 and inter == 0:
            # Integer ids cast to int8 exactly as float64 copies of them would be, without the float64 copy.
            array = np.asanyarray(proxy)
        else:
            array = image.get_fdata()
        array = np.asarray(array).reshape(shape)
        _warn_unscored_values(path, array)
        array = as_official_labels(array)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        affine = np.asarray(image.affine, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise InputError(f"{path}: cannot read the label map ({type(exc).__name__}: {exc})") from None
    return array, spacing, affine  # type: ignore[return-value]


def _warn_unscored_values(path: Path, array: np.ndarray) -> None:
    """Warn when label map `array` (of `path`) holds values that are not the ids 0-14: the official scorer
    casts them to int8 (fractions truncated, ids wrapped modulo 256) and scores only 1-14, so such a file is
    most likely not a label map (probabilities, another label table)."""
    if np.issubdtype(array.dtype, np.floating) and bool(np.any(array != np.trunc(array))):
        log.warning("%s: holds non-integer values (a probability map?); scored as the official scorer does, truncated to integers", path)
    outside = (array < 0) | (array > LESION)
    if bool(outside.any()):
        values = np.unique(array[outside])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        log.warning("%s: holds %d voxel(s) of values outside the ids 0-14 (%s); the official scorer ignores them unless the int8 cast wraps them into 1-14",
                    path, int(outside.sum()), shown)


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


def read_case_pair(
    pred_path: str | os.PathLike | None, ref_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a reference and its prediction as the official scorer does (``pred_path=None``: all background).

    Returns:
        ``(reference, prediction, spacing)``: two (I, J, K) int8 label maps and the reference's zooms (mm).

    Raises:
        InputError: a file is unreadable, or the reference's spacing is not positive and finite.
        GeometryError: the two label maps differ in shape; the message names both files.
    """
    ref, spacing, ref_affine = read_label_array(ref_path)
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:  # the NSD distances are in these units
        raise InputError(f"{ref_path}: the reference's voxel spacing (header zooms) must be positive and finite, got {spacing}")
    if pred_path is None:
        return ref, np.zeros_like(ref), spacing
    pred, _, pred_affine = read_label_array(pred_path)
    if pred.shape != ref.shape:
        raise GeometryError(f"{pred_path}: prediction shape {pred.shape} differs from reference {ref_path} shape {ref.shape}")
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        log.warning(
            "%s: the affine differs from the reference %s (orientation, origin or spacing); scoring the voxel "
            "arrays as they are, like the official scorer", pred_path, ref_path,
        )
    return ref, pred, spacing


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
    ref, pred, spacing = read_case_pair(pred_path, ref_path)
    return score_case(ref, pred, spacing, label_ids=label_ids, nsd_gate=nsd_gate)


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
        out_dir: where ``per_case.csv``, ``cases.csv``, ``summary.md`` and ``summary.json`` are written (created).
        nsd_gate: NSD = 0 when DSC < gate (0.1: FLARE23 test phase, the default; 0.2: later versions).
        missing: ``"error"`` (the official behaviour) or ``"empty"``: score a missing prediction as an
            all-background label map.
        label_ids: classes to score (default 1-14).
        progress: show a progress bar on stderr.

    Returns:
        A :class:`Summary`.

    Raises:
        InputError: a folder or a prediction is missing, a file is unreadable (named in the message), or
            `out_dir` is a file or not writable.
        GeometryError: a prediction's shape differs from its reference's (both files named).
    """
    if not 0 <= nsd_gate <= 1:
        raise ConfigError(f"nsd_gate must lie in [0, 1], got {nsd_gate}")
    label_ids = tuple(label_ids)
    check_output_folder(out_dir)
    cases = find_cases(pred_dir, ref_dir, missing=missing)
    absent = tuple(name for name, _, pred in cases if pred is None)
    if absent:
        log.warning("%d predictions missing, scored as empty: %s", len(absent), ", ".join(absent[:5]))
    iterator = tqdm(cases, desc="evaluate", unit="case", disable=not progress)
    rows: list[CaseScore] = []
    facts = []
    for name, ref_path, pred_path in iterator:
        ref, pred, spacing = read_case_pair(pred_path, ref_path)
        scores = score_case(ref, pred, spacing, label_ids=label_ids, nsd_gate=nsd_gate)
        for label, (dsc, nsd) in scores.items():
            rows.append(CaseScore(name, label, BY_ID[label].name, dsc, nsd))
        facts.append(case_facts(name, ref, pred, label_ids=label_ids))
        log.debug("%s: %s %s", name, scores, facts[-1])
    stats = summarize(rows, facts, nsd_gate=nsd_gate)
    stats["missing_predictions"] = list(absent)
    out = Path(out_dir)
    csv_path = atomic_write_text(out / "per_case.csv", per_case_csv_text(rows))
    cases_path = atomic_write_text(out / "cases.csv", cases_csv_text(stats["per_case"]))
    md_path = atomic_write_text(out / "summary.md", summary_markdown(stats))
    json_path = atomic_write_text(out / "summary.json", json.dumps(stats, indent=2) + "\n")
    return Summary(tuple(rows), stats, csv_path, cases_path, md_path, json_path, absent)
