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
from flareseg.labels import AORTA, BY_ID, LESION, LIVER, ORGAN_IDS, SPLEEN

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


def test_values_that_are_not_label_ids_are_scored_officially_and_named(tmp_path, caplog):
    gt = np.zeros((8, 8, 8), np.int16)
    gt[2:5, 2:5, 2:5] = LIVER
    _save(tmp_path / "ref" / "a.nii.gz", gt, dtype=np.int16)
    fractional = np.where(gt == LIVER, 1.4, 0.0)  # a probability-like map: truncated to 1, as the scorer does
    _save(tmp_path / "pred" / "a.nii.gz", fractional, dtype=np.float32)
    assert evaluate.score_case_files(tmp_path / "pred" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz")[LIVER][0] == 1.0
    assert "pred/a.nii.gz: holds non-integer values" in caplog.text
    caplog.clear()
    foreign = gt.copy()
    foreign[0, 0, :3] = 99
    _save(tmp_path / "pred" / "a.nii.gz", foreign, dtype=np.int16)
    evaluate.score_case_files(tmp_path / "pred" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz")
    assert "holds 3 voxel(s) of values outside the ids 0-14 (99)" in caplog.text
    caplog.clear()
    evaluate.score_case_files(tmp_path / "ref" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz")
    assert caplog.text == ""


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


def test_a_label_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))  # 64e9 voxels declared, 1 kB stored
    header.set_data_dtype(np.uint8)
    (tmp_path / "ref" / "a.nii").write_bytes(header.binaryblock + b"\0" * 1024)
    _save(tmp_path / "pred" / "a.nii", _case(0)[0])
    with pytest.raises(InputError, match=r"ref/a.nii: the header declares \(4000, 4000, 4000\)"):
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


# --------------------------------------------------------------------------------------------------
# Beside the official numbers: classes present in the reference, lesions where there are lesions,
# lesion-wise detection. Crafted cohorts of known answers.
# --------------------------------------------------------------------------------------------------

ONE_MM = (1.0, 1.0, 1.0)


def _cases_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CASE_COLUMNS
        return list(reader)


def _organ_blocks(labels: np.ndarray, ids, *, shift_liver: int = 0) -> np.ndarray:
    """Organ `i` as a 4x4x6 block at its own place in a (30, 30, 10) map; the liver moved by `shift_liver`."""
    for i in ids:
        x, y = 6 * ((i - 1) % 4), 6 * ((i - 1) // 4)
        dx = shift_liver if i == LIVER else 0
        labels[x + dx : x + dx + 4, y : y + 4, 2:8] = i
    return labels


def test_case_facts_presence_follows_the_int8_cast():
    ref = np.zeros((10, 10, 10), np.int16)
    ref[1:3, 1:3, 1:3] = LIVER
    ref[6:8, 6:8, 6:8] = 270  # int8 14: a lesion, as the official cast reads it
    ref[0, 9, 9] = 200  # int8 -56: no class
    pred = np.zeros_like(ref)
    pred[6, 6, 6] = LESION
    facts = case_facts("a", ref, pred, label_ids=range(1, 15))
    assert facts == CaseFacts("a", (LIVER, LESION), LesionCounts(1, 1, 1, 0))
    assert case_facts("a", ref, pred, label_ids=[LIVER, SPLEEN]) == CaseFacts("a", (LIVER,), None)


def test_reference_lacking_six_organs(tmp_path):
    # Both references hold organs 1-7 only. Case a's prediction adds organs 8-13 (each scored 0), case b's
    # leaves them empty (each scored 1) and shifts the liver by half its length (DSC 0.5).
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    gt = _organ_blocks(np.zeros((30, 30, 10), np.uint8), range(1, 8))
    _save(ref / "a.nii.gz", gt, spacing=ONE_MM)
    _save(ref / "b.nii.gz", gt, spacing=ONE_MM)
    _save(pred / "a.nii.gz", _organ_blocks(np.zeros_like(gt), range(1, 14)), spacing=ONE_MM)
    _save(pred / "b.nii.gz", _organ_blocks(np.zeros_like(gt), range(1, 8), shift_liver=2), spacing=ONE_MM)
    summary = evaluate_folder(pred, ref, tmp_path / "out", progress=False)
    stats = summary.stats
    # The official numbers, unchanged: liver (1 + 0.5) / 2, organs 2-7 1, organs 8-13 (0 + 1) / 2.
    assert stats["official"]["Liver_DSC"] == 0.75 and stats["official"]["LK_DSC"] == 0.5
    assert stats["official"]["Organ_DSC"] == summary.organ_dsc == 0.75  # (0.75 + 6 + 3) / 13
    # Beside them: 7 classes present per case, the mean over them.
    present = stats["organ_present"]
    assert present["n_classes"] == 13 and present["n_cases"] == 2 and present["classes_per_case"] == 7.0
    assert present["absent_classes"] == [BY_ID[i].name for i in range(8, 14)]
    assert [c["n_present"] for c in stats["classes"]] == [2] * 7 + [0] * 6 + [0]
    a, b = stats["per_case"]
    assert (a["organs_in_reference"], a["organ_dsc"], a["organ_dsc_present"]) == (7, 0.5385, 1.0)  # 7/13
    assert (b["organs_in_reference"], b["organ_dsc"], b["organ_dsc_present"]) == (7, 0.9615, 0.9286)  # 12.5/13, 6.5/7
    assert b["organ_nsd_present"] == 1.0  # a 2 mm shift, 5 mm liver tolerance
    assert present["dsc"] == summary.organ_dsc_present == 0.9643 and present["dsc_std"] == 0.0357
    assert headline_lines(stats)[0] == (
        "organ DSC 0.7500 (official, 13 classes, 2 cases) | 0.9643 over the classes present in each reference "
        "(7.0 of 13 per case) | 6 of 13 classes in no reference"
    )
    rows = _cases_csv(tmp_path / "out" / "cases.csv")
    assert [(r["case"], r["organs_in_reference"], r["organ_dsc"], r["organ_dsc_present"]) for r in rows] == [
        ("a.nii.gz", "7", "0.5385", "1.0000"), ("b.nii.gz", "7", "0.9615", "0.9286"),
    ]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["organ_present"] == present and saved["per_case"] == stats["per_case"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| Organ mean over the classes present in each reference | 2 | 96.43 ± 3.57 |" in md
    assert "| left kidney | 3 | 50.00 ± 50.00 | 50.00 ± 50.00 | 0/2 |" in md
    assert "Organ classes in no reference (each scored 1 where the prediction is empty too): left adrenal gland," in md


def test_model_predicting_no_lesion_on_a_mixed_cohort(tmp_path):
    # Four cases, one with two lesions; the model never predicts a lesion: official lesion DSC 0.75, sensitivity 0.
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for i in range(4):
        gt = np.zeros((20, 20, 10), np.uint8)
        gt[2:12, 2:12, 2:8] = LIVER
        _save(pred / f"c{i}.nii.gz", gt)
        if i == 0:
            gt[3:5, 3:5, 3:5] = LESION
            gt[8:10, 8:10, 4:6] = LESION
        _save(ref / f"c{i}.nii.gz", gt)
    summary = evaluate_folder(pred, ref, tmp_path / "out", progress=False)
    stats = summary.stats
    assert summary.lesion_dsc == stats["official"]["Tumor_DSC"] == 0.75
    assert stats["lesion_present"] == {"n_cases": 1, "dsc": 0.0, "dsc_std": 0.0, "nsd": 0.0, "nsd_std": 0.0}
    assert summary.lesion_dsc_present == 0.0 and summary.lesion_sensitivity == 0.0
    found = stats["lesion_detection"]
    assert (found["reference_lesions"], found["detected"], found["missed"], found["false_positives"]) == (2, 0, 2, 0)
    assert found["f1"] == 0.0 and found["fp_per_case"] == 0.0
    line = "lesion DSC 0.7500 (official, 4 cases) | 0.0000 on the 1 case with lesions | sensitivity 0/2, 0 FP (0.00 per case), F1 0.0000"
    assert headline_lines(stats)[1] == line
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"- {line}" in md.split("| Class |")[0]  # the headline comes before the tables
    assert "| lesion | 2 | 75.00 ± 43.30 | 75.00 ± 43.30 | 1/4 |" in md
    rows = _cases_csv(tmp_path / "out" / "cases.csv")
    assert [(r["lesion_in_reference"], r["lesion_dsc"], r["reference_lesions"], r["missed_lesions"]) for r in rows] == [
        ("1", "0.0000", "2", "2"), ("0", "1.0000", "0", "0"), ("0", "1.0000", "0", "0"), ("0", "1.0000", "0", "0"),
    ]


def _lesion_cohort(lesion_dsc, counts):
    rows, facts = [], []
    for case, (dsc, c) in enumerate(zip(lesion_dsc, counts)):
        rows += [CaseScore(f"c{case}", label, "x", 1.0, 1.0) for label in ORGAN_IDS]
        rows.append(CaseScore(f"c{case}", LESION, "lesion", dsc, dsc))
        facts.append(CaseFacts(f"c{case}", ORGAN_IDS + ((LESION,) if c.reference else ()), c))
    return summarize(rows, facts, nsd_gate=0.1)


def test_headline_missed_lesions_and_false_positives():
    # One case with 2 reference lesions and 3 predicted lesions elsewhere (DSC 0); two cases without any lesion.
    stats = _lesion_cohort([0.0, 1.0, 1.0], [LesionCounts(2, 0, 3, 3), LesionCounts(0, 0, 0, 0), LesionCounts(0, 0, 0, 0)])
    assert stats["lesion"]["dsc"] == 0.6667
    assert headline_lines(stats)[1] == (
        "lesion DSC 0.6667 (official, 3 cases) | 0.0000 on the 1 case with lesions | sensitivity 0/2, 3 FP (1.00 per case), F1 0.0000"
    )
    assert "2 reference lesions, 0 detected, 2 missed; 3 predicted lesions, 3 false positives;" in summary_markdown(stats)


def test_no_lesion_anywhere_in_the_cohort():
    stats = _lesion_cohort([1.0, 1.0], [LesionCounts(0, 0, 0, 0)] * 2)
    assert stats["lesion"]["dsc"] == 1.0
    assert stats["lesion_present"] == {"n_cases": 0, "dsc": None, "dsc_std": None, "nsd": None, "nsd_std": None}
    assert stats["lesion_detection"]["sensitivity"] is None and stats["lesion_detection"]["f1"] is None
    assert headline_lines(stats)[1] == (
        "lesion DSC 1.0000 (official, 2 cases) | no case with lesions in the reference | "
        "sensitivity n/a (no reference lesion), 0 FP (0.00 per case), F1 n/a"
    )
    md = summary_markdown(stats)
    assert "| Lesion, cases whose reference holds lesion voxels | 0 | - | - |" in md
    assert "sensitivity n/a, FP per case 0.0000, F1 n/a." in md
    json.dumps(stats, allow_nan=False)  # None, never NaN, in summary.json


def test_case_without_any_organ_in_the_reference():
    rows = [CaseScore("a", label, "x", 1.0, 1.0) for label in ORGAN_IDS]
    stats = summarize(rows, [CaseFacts("a", (), None)])
    assert stats["per_case"][0]["organ_dsc_present"] is None and stats["per_case"][0]["organs_in_reference"] == 0
    assert stats["organ_present"]["n_cases"] == 0 and stats["organ_present"]["dsc"] is None
    assert headline_lines(stats) == [
        "organ DSC 1.0000 (official, 13 classes, 1 case) | no organ class in any reference | 13 of 13 classes in no reference"
    ]


def test_lesion_not_scored(folders):
    ref, pred, out, _ = folders
    summary = evaluate_folder(pred, ref, out, label_ids=ORGAN_IDS, progress=False)
    assert summary.stats["lesion_present"] is None and summary.stats["lesion_detection"] is None
    assert summary.lesion_sensitivity is None and len(headline_lines(summary.stats)) == 1
    rows = _cases_csv(out / "cases.csv")
    assert rows[0]["lesion_dsc"] == "" and rows[0]["reference_lesions"] == "" and rows[0]["organs_scored"] == "13"


def test_summarize_needs_facts_for_the_same_cases():
    rows = [CaseScore("a", LIVER, "liver", 1.0, 1.0)]
    with pytest.raises(InputError, match="'b'"):
        summarize(rows, [CaseFacts("a", (LIVER,), None), CaseFacts("b", (), None)])
    with pytest.raises(InputError, match="'a'"):
        summarize(rows, [])


def test_cli_prints_the_headline_last(folders, capsys):
    from flareseg.cli import main

    ref, pred, out, _ = folders
    assert main(["-q", "evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert printed[-2].startswith("organ DSC ") and printed[-1].startswith("lesion DSC ")
    assert "sensitivity 3/3" in printed[-1]


def test_a_reference_with_a_nan_spacing_is_an_input_error_exit_2(tmp_path, capsys):
    """NaN zooms (pixdim) in the reference had ended in metrics' ValueError: an internal error, exit code 1."""
    import struct

    from flareseg.cli import main

    gt, pr = _case(0)
    _save(tmp_path / "pred" / "a.nii", pr)
    ref = _save(tmp_path / "ref" / "a.nii", gt)
    raw = bytearray(ref.read_bytes())
    raw[80:84] = struct.pack("<f", float("nan"))  # pixdim[1]
    raw[252:256] = struct.pack("<hh", 0, 0)  # no qform or sform: the affine comes from pixdim alone
    ref.write_bytes(bytes(raw))
    code = main(["-q", "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{ref}: the reference's voxel spacing (header zooms) must be positive and finite, got (nan, " in err[0]
    assert not (tmp_path / "out" / "summary.json").exists()
