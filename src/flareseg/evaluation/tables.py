"""Rendering of evaluation results: the headline, ``summary.md``, ``per_case.csv`` and ``cases.csv``.

The headline puts each official score next to what it covers, e.g.::

    organ DSC 0.7500 (official, 13 classes, 2 cases) | 0.9643 over the classes present in each reference (7.0 of 13 per case) | 6 of 13 classes in no reference
    lesion DSC 0.6667 (official, 3 cases) | 0.0000 on the 1 case with lesions | sensitivity 0/2, 3 FP (1.00 per case), F1 0.0000

(the cohorts of ``tests/test_evaluate.py``: references lacking organs 8-13; one case whose two lesions
were missed while three were predicted elsewhere, and two cases without any lesion).

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable

from flareseg.errors import InputError
from flareseg.evaluation.summary import CASE_COLUMNS, CaseScore
from flareseg.labels import LESION, ORGAN_IDS

CSV_COLUMNS = ("case", "label", "name", "dsc", "nsd")
"""Columns of ``per_case.csv`` (long form, one row per case and class)."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _frac(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _organ_headline(summary: dict) -> str | None:
    organ, present = summary.get("organ"), summary.get("organ_present")
    if not organ or not present:
        return None
    n = organ["n_classes"]
    line = f"organ DSC {_frac(organ['dsc'])} (official, {n} classes, {_plural(summary['n_cases'], 'case')})"
    if present["n_cases"]:
        line += f" | {_frac(present['dsc'])} over the classes present in each reference ({present['classes_per_case']:.1f} of {n} per case)"
    else:
        line += " | no organ class in any reference"
    absent = len(present["absent_classes"])
    if absent:
        line += f" | {absent} of {n} classes in no reference"
    return line


def _lesion_headline(summary: dict) -> str | None:
    lesion, present, found = summary.get("lesion"), summary.get("lesion_present"), summary.get("lesion_detection")
    if not lesion or not present or not found:
        return None
    line = f"lesion DSC {_frac(lesion['dsc'])} (official, {_plural(summary['n_cases'], 'case')})"
    if present["n_cases"]:
        line += f" | {_frac(present['dsc'])} on the {_plural(present['n_cases'], 'case')} with lesions"
    else:
        line += " | no case with lesions in the reference"
    if found["reference_lesions"]:
        line += f" | sensitivity {found['detected']}/{found['reference_lesions']}"
    else:
        line += " | sensitivity n/a (no reference lesion)"
    return line + f", {found['false_positives']} FP ({found['fp_per_case']:.2f} per case), F1 {_frac(found['f1'])}"


def headline_lines(summary: dict) -> list[str]:
    """The headline of a :func:`~flareseg.evaluation.summary.summarize` dict: one line for the organs, one
    for the lesion (each only when scored), fractions with 4 decimals.

    The organ line shows the official organ mean, the mean over the classes present in each reference
    and how many organ classes no reference holds; the lesion line the official lesion DSC, the DSC on the
    cases with lesions, and lesion-wise sensitivity (detected / reference lesions), false positives and F1.
    """
    return [line for line in (_organ_headline(summary), _lesion_headline(summary)) if line]


def _class_tables(summary: dict) -> list[str]:
    n = summary["n_cases"]
    lines = ["| Class | NSD tolerance (mm) | DSC (%) | NSD (%) | Cases in reference |", "|---|---:|---:|---:|---:|"]
    classes = summary["classes"]
    for c in classes:
        if c["label"] in ORGAN_IDS:
            lines.append(
                f"| {c['name']} | {c['tolerance_mm']:g} | {_pct(c['dsc_mean'], c['dsc_std'])} | {_pct(c['nsd_mean'], c['nsd_std'])} | "
                f"{c['n_present']}/{n} |"
            )
    organ = summary.get("organ")
    if organ:
        label = f"**Organ mean ({organ['n_classes']} organs)**"
        lines.append(f"| {label} | | **{_pct(organ['dsc'], organ['dsc_std'])}** | **{_pct(organ['nsd'], organ['nsd_std'])}** | |")
    lesion = next((c for c in classes if c["label"] == LESION), None)
    if lesion:
        lines += [
            "",
            "| Lesion | NSD tolerance (mm) | DSC (%) | NSD (%) | Cases in reference |",
            "|---|---:|---:|---:|---:|",
            f"| {lesion['name']} | {lesion['tolerance_mm']:g} | {_pct(lesion['dsc_mean'], lesion['dsc_std'])} | "
            f"{_pct(lesion['nsd_mean'], lesion['nsd_std'])} | {lesion['n_present']}/{n} |",
        ]
    return lines


def _coverage_table(summary: dict) -> list[str]:
    organ, organ_present = summary.get("organ"), summary.get("organ_present")
    lesion, lesion_present = summary.get("lesion"), summary.get("lesion_present")
    n = summary["n_cases"]
    rows = []
    if organ and organ_present:
        rows.append((f"Organ mean, official ({organ['n_classes']} classes)", n, organ["dsc"], organ["dsc_std"], organ["nsd"], organ["nsd_std"]))
        p = organ_present
        rows.append(("Organ mean over the classes present in each reference", p["n_cases"], p["dsc"], p["dsc_std"], p["nsd"], p["nsd_std"]))
    if lesion and lesion_present:
        rows.append(("Lesion, official (all cases)", n, lesion["dsc"], lesion["dsc_std"], lesion["nsd"], lesion["nsd_std"]))
        p = lesion_present
        rows.append(("Lesion, cases whose reference holds lesion voxels", p["n_cases"], p["dsc"], p["dsc_std"], p["nsd"], p["nsd_std"]))
    if not rows:
        return []
    lines = ["", "**Beside the official numbers** (what they cover):", "", "| Score | Cases | DSC (%) | NSD (%) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {k} | {_pct(d, ds)} | {_pct(s, ss)} |" for name, k, d, ds, s, ss in rows]
    if organ_present and organ_present["absent_classes"]:
        lines += ["", f"Organ classes in no reference (each scored 1 where the prediction is empty too): {', '.join(organ_present['absent_classes'])}."]
    found = summary.get("lesion_detection")
    if found:
        lines += [
            "",
            f"Lesion-wise detection (26-connected components, pooled over {_plural(found['n_cases'], 'case')}): "
            f"{_plural(found['reference_lesions'], 'reference lesion')}, {found['detected']} detected, {found['missed']} missed; "
            f"{_plural(found['predicted_lesions'], 'predicted lesion')}, {_plural(found['false_positives'], 'false positive')}; "
            f"sensitivity {_frac(found['sensitivity'])}, FP per case {_frac(found['fp_per_case'])}, F1 {_frac(found['f1'])}.",
        ]
    return lines


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{100 * value:.2f}" if isinstance(value, float) else str(value)


def _per_case_table(summary: dict) -> list[str]:
    details = summary.get("per_case") or []
    if not details:
        return []
    columns = (
        ("case", "Case"), ("organs_in_reference", "Organ classes in reference"), ("organ_dsc", "Organ DSC (%), official"),
        ("organ_dsc_present", "Organ DSC (%), present classes"), ("lesion_in_reference", "Lesion in reference"),
        ("lesion_dsc", "Lesion DSC (%)"), ("reference_lesions", "Reference lesions"), ("detected_lesions", "Detected"),
        ("false_positive_lesions", "False positives"),
    )
    lines = ["", "**Per case:**", "", "| " + " | ".join(title for _, title in columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(_cell(d[key]) for key, _ in columns) + " |" for d in details]
    return lines


def summary_markdown(summary: dict) -> str:
    """Render a :func:`~flareseg.evaluation.summary.summarize` dict as Markdown: the headline, the class
    tables (values in %, mean ± std over cases), the scores beside the official ones, lesion-wise
    detection, a per-case table and the official scorer's keys."""
    gate = summary.get("nsd_gate")
    lines = [
        "# FLARE23 evaluation",
        "",
        f"{summary['n_cases']} cases. DSC and NSD in %, mean ± std over cases (population std)."
        + (f" NSD gate {gate}: NSD = 0 when DSC < {gate}." if gate is not None else ""),
    ]
    headline = headline_lines(summary)
    if headline:
        lines += ["", "**Headline** (official score first, then what it covers):", ""] + [f"- {line}" for line in headline]
    lines += [""] + _class_tables(summary) + _coverage_table(summary) + _per_case_table(summary)
    official = summary.get("official") or {}
    if official:
        lines += ["", "Official scorer keys (fractions, as in its `scores.txt`):", "", "```"]
        lines += [f"{k}: {v:.4f}" for k, v in official.items()]
        lines.append("```")
    return "\n".join(lines) + "\n"


def per_case_csv_text(rows: Iterable[CaseScore]) -> str:
    """The ``per_case.csv`` text: header ``case,label,name,dsc,nsd``, values with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.case, r.label, r.name, f"{r.dsc:.4f}", f"{r.nsd:.4f}"])
    return buffer.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cases_csv_text(details: Iterable[dict]) -> str:
    """The ``cases.csv`` text: one row per case with the columns of
    :data:`~flareseg.evaluation.summary.CASE_COLUMNS`; fractions with 4 decimals, ``lesion_in_reference``
    as 0/1, an empty cell for a value that is None (a class not scored, or no class present)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    for d in details:
        writer.writerow([_csv_value(d[key]) for key in CASE_COLUMNS])
    return buffer.getvalue()


def read_per_case_csv(path: str | os.PathLike) -> list[CaseScore]:
    """Read back a ``per_case.csv`` written by :func:`~flareseg.evaluation.evaluate.evaluate_folder`.

    Raises:
        InputError: the header is not ``case,label,name,dsc,nsd`` (the file is named).
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise InputError(f"{path}: expected the columns {','.join(CSV_COLUMNS)}, got {reader.fieldnames}")
        return [CaseScore(r["case"], int(r["label"]), r["name"], float(r["dsc"]), float(r["nsd"])) for r in reader]
