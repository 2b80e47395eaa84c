"""Tests of flareseg.evaluation.evaluate, .summary and .tables: folder evaluation on tiny NIfTI files, the written
tables, errors; the scores beside the official ones (classes present in the reference, lesion DSC on the cases with
lesions, lesion-wise detection) on crafted cohorts of known answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import flareseg.evaluation.evaluate as evaluate
import flareseg.evaluation.metrics as metrics
from flareseg.errors import GeometryError, InputError
from flareseg.evaluation.evaluate import evaluate_folder
from flareseg.evaluation.lesions import LesionCounts
from flareseg.evaluation.summary import CASE_COLUMNS, CaseFacts, CaseScore, case_facts, summarize
from flareseg.evaluation.tables import headline_lines, read_per_case_csv, summary_markdown
from flareseg.labels import AORTA, LESION, LIVER, ORGAN_IDS, SPLEEN

SPACING = (0.8, 0.8, 2.5)


def _save(path: Path, labels: np.ndarray, spacing=SPACING, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(dtype), np.diag(list(spacing) + [1.0])), str(path))
    return path


def _case(seed: int, shape=(24, 20, 12)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    gt[2:12, 2:12, 2:9] = LIVER
    gt[14:20, 3:9, 3:8] = SPLEEN
    gt[16:19, 13:16, 1:11] = AORTA
    gt[5:7, 5:7, 4:6] = LESION
    pred = gt.copy()
    pred[rng.random(shape) < 0.03] = 0
    pred = np.roll(pred, int(rng.integers(0, 2)), axis=0)
    return gt, pred


@pytest.fixture()
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    arrays = {}
    for i in range(3):
        gt, pr = _case(i)
        name = f"case_{i:03d}.nii.gz"
        _save(ref / name, gt)
        _save(pred / name, pr)
        arrays[name] = (gt, pr)
    return ref, pred, tmp_path / "out", arrays


def test_evaluate_folder_writes_tables(folders):
    ref, pred, out, arrays = folders
    summary = evaluate_folder(pred, ref, out, progress=False)
    assert summary.per_case_csv == out / "per_case.csv"
    with open(out / "per_case.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header == ["case", "label", "name", "dsc", "nsd"]
    assert len(rows) == 3 * 14
    assert rows[0][:3] == ["case_000.nii.gz", "1", "liver"]
    assert all(len(r[3].split(".")[1]) == 4 and len(r[4].split(".")[1]) == 4 for r in rows)
    # Values equal score_case on the arrays with the reference's spacing.
    for name, (gt, pr) in arrays.items():
        expected = metrics.score_case(gt, pr, SPACING)
        got = {r.label: (r.dsc, r.nsd) for r in summary.rows if r.case == name}
        assert got == expected
    # Summary numbers follow the official aggregation.
    stats = json.loads((out / "summary.json").read_text())
    liver = [r.dsc for r in summary.rows if r.label == LIVER]
    cls = next(c for c in stats["classes"] if c["label"] == LIVER)
    assert cls["dsc_mean"] == float(np.round(np.mean(liver), 4))
    assert cls["dsc_std"] == float(np.round(np.std(liver), 4))
    organ_means = [c["dsc_mean"] for c in stats["classes"] if c["label"] in ORGAN_IDS]
    assert len(organ_means) == 13
    assert stats["organ"]["dsc"] == float(np.round(np.mean(organ_means), 4))
    assert stats["official"]["Organ_DSC"] == stats["organ"]["dsc"]
    assert stats["official"]["Tumor_DSC"] == stats["lesion"]["dsc"]
    assert list(stats["official"])[:2] == ["Liver_DSC", "RK_DSC"]
    assert stats["n_cases"] == 3 and stats["nsd_gate"] == 0.1
    assert summary.organ_dsc == stats["organ"]["dsc"] and summary.lesion_nsd == stats["lesion"]["nsd"]
    md = (out / "summary.md").read_text()
    assert "| liver |" in md and "Organ mean (13 organs)" in md and "| lesion |" in md and "±" in md


def test_gate_option_is_recorded(folders):
    ref, pred, out, _ = folders
    summary = evaluate_folder(pred, ref, out, nsd_gate=0.2, progress=False)
    assert summary.stats["nsd_gate"] == 0.2
    assert "NSD gate 0.2" in (out / "summary.md").read_text()


def test_missing_prediction_is_an_error_naming_the_file(folders):
    ref, pred, out, _ = folders
    (pred / "case_001.nii.gz").unlink()
    with pytest.raises(InputError, match="case_001.nii.gz"):
        evaluate_folder(pred, ref, out, progress=False)
    assert not (out / "per_case.csv").exists()


def test_missing_prediction_scored_as_empty(folders):
    ref, pred, out, arrays = folders
    (pred / "case_001.nii.gz").unlink()
    summary = evaluate_folder(pred, ref, out, missing="empty", progress=False)
    gt, _ = arrays["case_001.nii.gz"]
    got = {r.label: (r.dsc, r.nsd) for r in summary.rows if r.case == "case_001.nii.gz"}
    assert got == metrics.score_case(gt, np.zeros_like(gt), SPACING)
    assert got[LIVER] == (0.0, 0.0) and got[2] == (1.0, 1.0)
    assert summary.missing == ("case_001.nii.gz",)


def test_shape_mismatch_names_both_files(tmp_path):
    gt, pr = _case(0)
    _save(tmp_path / "ref" / "a.nii.gz", gt)
    _save(tmp_path / "pred" / "a.nii.gz", pr[:, :, :-1])
    with pytest.raises(GeometryError) as info:
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    message = str(info.value)
    assert str(tmp_path / "pred" / "a.nii.gz") in message and str(tmp_path / "ref" / "a.nii.gz") in message


def test_spacing_comes_from_the_reference_and_dtype_does_not_matter(tmp_path):
    gt, pr = _case(1)
    _save(tmp_path / "ref" / "a.nii.gz", gt, spacing=(1.5, 0.7, 3.0), dtype=np.int16)
    _save(tmp_path / "pred" / "a.nii.gz", pr, spacing=(1.0, 1.0, 1.0), dtype=np.float32)
    scores = evaluate.score_case_files(tmp_path / "pred" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz")
    assert scores == metrics.score_case(gt, pr, (1.5, 0.7, 3.0))


def test_large_ids_wrap_like_the_official_int8_cast(tmp_path):
    gt = np.zeros((8, 8, 8), np.int16)
    gt[2:5, 2:5, 2:5] = LESION
    pred = np.where(gt == LESION, 270, 0)
    _save(tmp_path / "ref" / "a.nii.gz", gt, dtype=np.int16)
    _save(tmp_path / "pred" / "a.nii.gz", pred, dtype=np.int16)
    scores = evaluate.score_case_files(tmp_path / "pred" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz")
    assert scores[LESION] == (1.0, 1.0)


def test_unreadable_and_missing_inputs(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(InputError, match="no reference label maps"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folder(tmp_path / "nope", tmp_path / "ref", tmp_path / "out", progress=False)
    gt, _ = _case(0)
    _save(tmp_path / "ref" / "a.nii.gz", gt)
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="a.nii.gz"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)


def test_summarize_handmade_rows():
    rows = []
    for case, (d1, d14) in {"a": (0.9, 0.5), "b": (0.7, 0.0)}.items():
        for label in ORGAN_IDS:
            rows.append(CaseScore(case, label, "x", d1 if label == LIVER else 1.0, 1.0))
        rows.append(CaseScore(case, LESION, "lesion", d14, 0.25))
    facts = [CaseFacts(c, (LIVER, LESION), LesionCounts(1, 1, 1, 0)) for c in ("a", "b")]
    stats = summarize(rows, facts, nsd_gate=0.1)
    liver = stats["classes"][0]
    assert liver["label"] == LIVER and liver["dsc_mean"] == 0.8 and liver["dsc_std"] == 0.1
    assert stats["organ"]["dsc"] == float(np.round((0.8 + 12) / 13, 4))
    assert stats["lesion"] == {"dsc": 0.25, "dsc_std": 0.25, "nsd": 0.25, "nsd_std": 0.0}
    assert stats["official"]["Tumor_NSD"] == 0.25 and stats["official"]["Organ_NSD"] == 1.0
    md = summary_markdown(stats)
    assert "| liver | 5 | 80.00 ± 10.00 | 100.00 ± 0.00 | 2/2 |" in md
    assert "| lesion | 2 | 25.00 ± 25.00 | 25.00 ± 0.00 | 2/2 |" in md
    assert "| right kidney | 3 | 100.00 ± 0.00 | 100.00 ± 0.00 | 0/2 |" in md


def test_per_case_csv_round_trip(folders):
    ref, pred, out, _ = folders
    summary = evaluate_folder(pred, ref, out, progress=False)
    assert read_per_case_csv(out / "per_case.csv") == list(summary.rows)
