"""Pseudo-labels: the merge rule with known answers, `flareseg pseudolabel` on a toy cohort (FLARE layout,
provenance, kill -9 and rerun), `prepare --pseudo-labels` and its refusals, and a student trained on the output."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flareseg.cli import main
from flareseg.config import get_preset
from flareseg.data.cohort import prepare_cohort
from flareseg.data.pseudo import CASES_DIR, LABELS_DIR, PROVENANCE_FILE
from flareseg.errors import ConfigError, GeometryError, InputError
from flareseg.inference.pseudolabel import merge_teacher, plausible_ranges, pseudolabel_cohort
from flareseg.io import Volume, read_image, read_label, write_volume
from flareseg.labels import LESION, LIVER, RIGHT_KIDNEY, SPLEEN
from flareseg.model.folder import WEIGHTS_FILE, ModelConfig, channel_labels_for, read_model_config, save_tensors, write_model_config
from flareseg.model.network import build_network
from flareseg.training import train
from flareseg.training.data import load_training_data

from test_pipeline import IDENTITY_FP, threshold_predictor
from test_training import toy_case

# --------------------------------------------------------------------------- the merge rule


def test_human_labels_win_and_implausible_organs_stay_unlabelled():
    teacher = np.zeros((10, 10, 10), np.uint8)
    teacher[0:4] = LIVER  # 400 voxels of liver, partly where the human labelled the spleen
    teacher[5:7] = RIGHT_KIDNEY  # 200 voxels: outside the plausible range below
    teacher[8, :5] = SPLEEN  # teacher spleen outside the human spleen: dropped (the human labelled spleen)
    human = np.zeros_like(teacher)
    human[3:5] = SPLEEN
    ranges = {LIVER: (100.0, 400.0), RIGHT_KIDNEY: (10.0, 50.0), SPLEEN: (50.0, 500.0)}
    merged, record = merge_teacher(teacher, human, voxel_ml=1.0, ranges=ranges, min_confidence=0.5, min_lesion_confidence=0.9)
    assert record["human_classes"] == [SPLEEN]
    assert record["teacher_classes"] == [LIVER] and record["implausible"] == [RIGHT_KIDNEY]
    assert record["confidence"] == 0.5 and record["accepted"]
    assert record["volumes_ml"] == {str(LIVER): 400.0, str(RIGHT_KIDNEY): 200.0}
    assert np.array_equal(merged == SPLEEN, human == SPLEEN)  # exactly the human voxels
    assert (merged == LIVER).sum() == 300 and not (merged == RIGHT_KIDNEY).any()


def test_lesions_need_the_stricter_confidence():
    teacher = np.zeros((10, 10, 10), np.uint8)
    teacher[0:4] = LIVER
    teacher[1, 1, 1] = LESION
    ranges = {LIVER: (100.0, 500.0), SPLEEN: (10.0, 50.0)}  # spleen missed: confidence 1/2
    merged, record = merge_teacher(teacher, None, voxel_ml=1.0, ranges=ranges, min_confidence=0.5, min_lesion_confidence=0.9)
    assert record["accepted"] and record["confidence"] == 0.5 and LESION not in record["teacher_classes"]
    assert record["lesion"].startswith("dropped") and not (merged == LESION).any()
    merged, record = merge_teacher(teacher, None, voxel_ml=1.0, ranges={LIVER: (100.0, 500.0)}, min_lesion_confidence=0.9)
    assert record["teacher_classes"] == [LIVER, LESION] and merged[1, 1, 1] == LESION
    _, record = merge_teacher(teacher, None, voxel_ml=1.0, ranges=ranges, min_confidence=0.6)
    assert not record["accepted"]  # below the case threshold: rejected


def test_plausible_ranges_come_from_the_human_volumes():
    assert plausible_ranges([{LIVER: 100.0}, {LIVER: 300.0, SPLEEN: 50.0}, {}]) == {LIVER: (50.0, 600.0), SPLEEN: (25.0, 100.0)}


# --------------------------------------------------------------------------- a toy cohort and teachers


def write_cohort(root: Path) -> Path:
    """Toy_0000-0001: all five toy organs and the lesion labelled; Toy_0002-0003: the liver only (its
    lesion inside its outline); Toy_0004-0007: no label (unlabeledTr/)."""
    for i in range(8):
        name = f"Toy_{i:04d}"
        image, label = toy_case(300 + i)
        image = Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction)
        if i < 4:
            write_volume(image, root / "imagesTr" / f"{name}_0000.nii.gz")
            array = label.array if i < 2 else np.where(np.isin(label.array, (LIVER, LESION)), LIVER, 0).astype(np.uint8)
            write_volume(label.with_array(array), root / "labelsTr" / f"{name}.nii.gz")
        else:
            write_volume(image, root / "unlabeledTr" / f"{name}_0000.nii.gz")
    return root


def random_teacher(folder: Path, task: str, seed: int) -> Path:
    """A random tiny model folder at 4 mm, 32^3 tiles: a few dozen tile evaluations per toy case."""
    p = get_preset("tiny", task)
    torch.manual_seed(seed)
    cfg = ModelConfig(task, "tiny", p.network, p.preprocess, IDENTITY_FP, p.train, channel_labels_for(task))
    save_tensors(build_network(p.network).state_dict(), folder / WEIGHTS_FILE)
    write_model_config(folder, cfg)
    return folder


def intensity_teacher():
    # toy HU: spleen 60, liver 110, kidneys 180, aorta 250 (noise 15): four organs told apart by intensity
    return threshold_predictor("organ", {SPLEEN: 40.0, LIVER: 90.0, RIGHT_KIDNEY: 160.0, 5: 220.0}, spacing=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    cohort = write_cohort(root / "cohort")
    report = pseudolabel_cohort(cohort, root / "pseudo", organ_model=intensity_teacher(), min_confidence=0.3, progress=False)
    return cohort, root / "pseudo", report


def test_pseudolabel_writes_flare_layout_labels_with_provenance(pseudo):
    cohort, out, report = pseudo
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert sorted(provenance["cases"]) == [f"Toy_{i:04d}" for i in range(8)] and not report.failed
    assert sorted(report.accepted + report.rejected) == sorted(provenance["cases"])
    # the fully labelled toy cases hold every organ a human labelled anywhere: nothing to teach
    assert {"Toy_0000", "Toy_0001"} <= set(report.rejected) and provenance["cases"]["Toy_0000"]["teacher_classes"] == []
    for name in ("Toy_0002", "Toy_0004"):
        record = provenance["cases"][name]
        assert record["accepted"] and {SPLEEN, 5} <= set(record["teacher_classes"]) and 13 in record["implausible"]
        folder = "imagesTr" if name == "Toy_0002" else "unlabeledTr"
        image = read_image(cohort / folder / f"{name}_0000.nii.gz")
        label = read_label(out / LABELS_DIR / f"{name}.nii.gz", image).array  # on the image's grid
        assert set(np.unique(label)) - {0} <= set(record["teacher_classes"]) | set(record["human_classes"])
    assert LIVER in provenance["cases"]["Toy_0004"]["teacher_classes"]
    human = read_label(cohort / "labelsTr" / "Toy_0002.nii.gz").array
    label = read_label(out / LABELS_DIR / "Toy_0002.nii.gz").array
    assert np.array_equal(label == LIVER, human == LIVER)  # the human liver, voxel for voxel
    assert not (out / LABELS_DIR / "Toy_0000.nii.gz").exists()
    # a rerun does nothing
    again = pseudolabel_cohort(cohort, out, organ_model=intensity_teacher(), min_confidence=0.3, progress=False)
    assert sorted(again.skipped) == sorted(provenance["cases"]) and not again.accepted


def _records(out: Path) -> set[str]:
    """The finished cases: their records (hidden files are a writer's temporaries)."""
    return {p.name[: -len(".json")] for p in (out / CASES_DIR).glob("*.json") if not p.name.startswith(".")}


def test_kill_9_then_rerun_does_only_the_missing_cases(tmp_path):
    cohort = write_cohort(tmp_path / "cohort")
    organ, tumor = random_teacher(tmp_path / "organ", "organ", 0), random_teacher(tmp_path / "tumor", "tumor", 1)
    out = tmp_path / "out"
    args = ["pseudolabel", "--data", cohort, "--out", out, "--organ-model", organ, "--tumor-model", tumor]
    proc = subprocess.Popen([sys.executable, "-m", "flareseg.cli", "-q", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _records(out):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = _records(out)
    assert 1 <= len(done) < 8
    report = pseudolabel_cohort(cohort, out, organ_model=organ, tumor_model=tumor, min_confidence=0.0, progress=False)
    assert set(report.skipped) == done
    assert set(report.accepted + report.rejected) == {f"Toy_{i:04d}" for i in range(8)} - done and not report.failed
    assert sorted(json.loads((out / PROVENANCE_FILE).read_text())["cases"]) == [f"Toy_{i:04d}" for i in range(8)]
    assert not [p for p in (out / LABELS_DIR).iterdir() if p.name.startswith(".")]  # the killed run's temporaries are gone
    assert not [p for p in (out / CASES_DIR).iterdir() if p.name.endswith(".json") and p.name.startswith(".")]


def test_pseudolabel_output_trains_a_student_through_prepare_and_train(pseudo, tmp_path):
    cohort, out, report = pseudo
    prepared = tmp_path / "prepared"
    cohort_summary = prepare_cohort(cohort, prepared, pseudo_labels=out, progress=False)
    manifest = json.loads((prepared / "manifest.json").read_text())
    cases = {c["case"]: c for c in manifest["cases"]}
    record = json.loads((out / PROVENANCE_FILE).read_text())["cases"]["Toy_0004"]
    assert cases["Toy_0004"]["regime"] == "none" and cases["Toy_0004"]["labelled"] == record["teacher_classes"]
    assert cases["Toy_0002"]["labelled"] == sorted({LIVER, *cases["Toy_0002"]["teacher_labels"]})
    assert cases["Toy_0004"]["label"].startswith(str(out.resolve()))
    assert set(report.accepted) <= set(manifest["organ_partial"]["train"]) and manifest["organ"]["train"] == []
    assert manifest["pseudo_labels"] == str(out.resolve()) and "pseudo-labels" in cohort_summary.summary()
    data = load_training_data(prepared, "organ", "partial")
    assert data.labelled["Toy_0004"] == tuple(c == 0 or c in record["teacher_classes"] for c in range(14))
    student = train(
        prepared, tmp_path / "student", task="organ", preset="tiny", epochs=2, progress=False, num_workers=0,
        overrides={"train.iterations_per_epoch": 2, "train.case_selection": "partial"},
    )
    cfg = read_model_config(student)
    assert cfg.train.case_selection == "partial" and cfg.data["n_train"] == len(manifest["organ_partial"]["train"])
    assert (student / WEIGHTS_FILE).is_file()


# --------------------------------------------------------------------------- bad pseudo-label folders


def _prepare_cli(capsys, cohort, prepared, pseudo_dir) -> tuple[int, str]:
    code = main(["-q", "prepare", "--data", str(cohort), "--out", str(prepared), "--pseudo-labels", str(pseudo_dir)])
    return code, capsys.readouterr().err


def _copy(pseudo_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pseudo_dir, tmp_path / "copy"))


def test_a_pseudo_label_off_the_image_grid_is_refused(pseudo, tmp_path, capsys):
    cohort, out, _ = pseudo
    bad = _copy(out, tmp_path)
    path = bad / LABELS_DIR / "Toy_0004.nii.gz"
    label = read_label(path)
    write_volume(dataclasses.replace(label, spacing=(2.0, 2.0, 2.0)), path)
    with pytest.raises(GeometryError, match="Toy_0004.nii.gz"):
        prepare_cohort(cohort, tmp_path / "prepared", pseudo_labels=bad, progress=False)
    code, err = _prepare_cli(capsys, cohort, tmp_path / "prepared", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "prepared").exists()


def test_label_ids_outside_the_schema_are_refused(pseudo, tmp_path, capsys):
    cohort, out, _ = pseudo
    bad = _copy(out, tmp_path)
    path = bad / LABELS_DIR / "Toy_0005.nii.gz"
    label = read_label(path)
    array = label.array.copy()
    array[0, 0, 0] = 20
    write_volume(label.with_array(array), path)
    code, err = _prepare_cli(capsys, cohort, tmp_path / "prepared", bad)
    assert code == 2 and str(path) in err and "[20]" in err and "Traceback" not in err
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("problem", ["unknown case", "missing file"])
def test_a_provenance_naming_missing_cases_is_refused(pseudo, tmp_path, capsys, problem):
    cohort, out, _ = pseudo
    bad = _copy(out, tmp_path)
    provenance = json.loads((bad / PROVENANCE_FILE).read_text())
    if problem == "unknown case":
        provenance["cases"]["Ghost_0001"] = dict(provenance["cases"]["Toy_0004"], case="Ghost_0001")
        (bad / PROVENANCE_FILE).write_text(json.dumps(provenance))
        expected = "Ghost_0001"
    else:
        (bad / LABELS_DIR / "Toy_0004.nii.gz").unlink()
        expected = "Toy_0004"
    with pytest.raises(InputError, match=expected):
        prepare_cohort(cohort, tmp_path / "prepared", pseudo_labels=bad, progress=False)
    code, err = _prepare_cli(capsys, cohort, tmp_path / "prepared", bad)
    assert code == 2 and PROVENANCE_FILE in err and expected in err
    assert not (tmp_path / "prepared").exists()


def test_bad_thresholds_are_config_errors(pseudo, tmp_path):
    cohort, _, _ = pseudo
    with pytest.raises(ConfigError, match="min_lesion_confidence"):
        pseudolabel_cohort(cohort, tmp_path / "x", organ_model=intensity_teacher(), min_confidence=0.8, min_lesion_confidence=0.5)
    assert not (tmp_path / "x").exists()
