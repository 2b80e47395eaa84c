import json
import subprocess
import sys

import numpy as np
import pytest

from flareseg.data.cohort import prepare_cohort, regime_of, split_cases
from flareseg.io import case_name
from flareseg.errors import InputError
from flareseg.io import Volume, write_volume
from flareseg.labels import LESION, ORGAN_IDS

from conftest import phantom_ct, write_case


def _label_with(ids, shape=(40, 36, 30)):
    """A label map holding exactly `ids`, one small block each."""
    array = np.zeros(shape, np.uint8)
    for n, value in enumerate(ids):
        x = 2 + (n % 7) * 5
        y = 2 + (n // 7) * 5
        array[x : x + 3, y : y + 3, 10:14] = value
    return array


@pytest.fixture
def cohort(tmp_path):
    """3 full, 2 lesion-only, 2 partial, 1 empty label, 2 unlabelled, 1 truncated, 1 mismatched label."""
    root = tmp_path / "cohort"
    image, _ = phantom_ct()
    regimes = {"full": 3, "lesion": 2, "partial": 2}
    ids = {"full": list(ORGAN_IDS) + [LESION], "lesion": [LESION], "partial": [1, 3, 13]}
    n = 0
    for regime, count in regimes.items():
        for _ in range(count):
            n += 1
            label = Volume(_label_with(ids[regime] if n != 1 else list(ORGAN_IDS)), image.spacing, image.origin, image.direction)
            write_case(root, f"Case_{n:03d}", image, label)
    n += 1
    write_case(root, f"Case_{n:03d}", image, Volume(np.zeros(image.shape, np.uint8), image.spacing, image.origin, image.direction))
    for k in range(2):
        write_volume(Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), root / "unlabeledTr" / f"Unl_{k}_0000.nii.gz")
    bad_image, _ = write_case(root, "Broken_001", image, Volume(_label_with([1]), image.spacing, image.origin, image.direction))
    bad_image.write_bytes(bad_image.read_bytes()[:300])
    moved = Volume(_label_with([1]), image.spacing, (0.0, 0.0, 9.0), image.direction)
    write_case(root, "Mismatch_001", image, moved)
    return root


def test_case_name_strips_channel():
    from pathlib import Path

    assert case_name(Path("FLARE23_0001_0000.nii.gz")) == "FLARE23_0001"
    assert case_name(Path("scan.nii")) == "scan"


def test_regimes():
    assert regime_of(set(ORGAN_IDS)) == "full"
    assert regime_of(set(ORGAN_IDS) | {LESION}) == "full"
    assert regime_of({LESION}) == "lesion"
    assert regime_of({1, LESION}) == "partial"
    assert regime_of(set()) == "none"


def test_split_is_8_to_2_and_deterministic():
    names = [f"c{i}" for i in range(10)]
    a, b = split_cases(names, seed=3), split_cases(names, seed=3)
    assert a == b and len(a["train"]) == 8 and len(a["val"]) == 2
    assert set(a["train"]).isdisjoint(a["val"]) and set(a["train"]) | set(a["val"]) == set(names)
    assert split_cases(names, seed=4) != a
    assert len(split_cases(["x", "y"], seed=0)["val"]) == 1


def test_prepare_counts_regimes_and_skips_bad_cases(cohort, tmp_path):
    out = tmp_path / "prepared"
    result = prepare_cohort(cohort, out, seed=0, progress=False)
    assert result.regime_counts() == {"full": 3, "lesion": 2, "partial": 2, "none": 3}
    problems = {c.case: c.problem for c in result.cases if c.problem}
    assert set(problems) == {"Broken_001", "Mismatch_001"}
    assert "Broken_001_0000.nii.gz" in problems["Broken_001"]
    assert "geometry" in problems["Mismatch_001"]
    organ = result.organ["train"] + result.organ["val"]
    assert sorted(organ) == ["Case_001", "Case_002", "Case_003"]
    tumor = result.tumor["train"] + result.tumor["val"]
    assert sorted(tumor) == ["Case_002", "Case_003", "Case_004", "Case_005"]  # Case_001 is full without lesion
    # case_selection="partial": every case with an organ labelled, the paper's held-out organ cases kept apart
    partial = set(c.case for c in result.cases if c.problem is None and set(c.labelled) & set(ORGAN_IDS)) - set(result.organ["val"])
    assert set(result.organ_partial["train"]) == partial and result.organ_partial["val"] == result.organ["val"]
    assert set(result.organ["train"]) < partial and not partial & {"Case_004", "Case_005"}  # lesion-only cases label no organ
    assert sorted(result.tumor_partial["train"] + result.tumor_partial["val"]) == sorted(tumor)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["organ_partial"] == result.organ_partial and manifest["tumor_partial"] == result.tumor_partial
    assert set(manifest["fingerprints"]) == {"organ", "tumor"} and all(fp["std"] > 0 for fp in manifest["fingerprints"].values())
    assert manifest["regime_counts"]["none"] == 3
    text = result.summary()
    assert "SKIPPED Broken_001" in text and "organ model" in text


def test_each_model_gets_the_fingerprint_of_its_own_foreground(tmp_path):
    """Organ voxels at 40 HU, lesion voxels at 140 HU: the organ model is normalised by the first,
    the tumour model by the second (as nnU-Net would for two datasets), each from its training cases."""
    root = tmp_path / "cohort"
    image, _ = phantom_ct()
    for n, ids in enumerate([list(ORGAN_IDS)] * 3 + [[LESION]] * 3, start=1):
        label = _label_with(ids)
        hu = np.where(label == LESION, 140, np.where(label > 0, 40 + n, -900)).astype(np.int16)
        write_case(root, f"Case_{n:03d}", Volume(hu, image.spacing, image.origin, image.direction), Volume(label, image.spacing, image.origin, image.direction))
    result = prepare_cohort(root, tmp_path / "prepared", seed=0, progress=False)
    organ, tumor = result.fingerprints["organ"], result.fingerprints["tumor"]
    organ_train = {int(c[-3:]) for c in result.organ["train"]}
    assert organ.mean == pytest.approx(40 + np.mean(sorted(organ_train)), abs=1e-3)
    assert tumor.mean == pytest.approx(140) and tumor.percentile_00_5 == pytest.approx(140) and tumor.std == pytest.approx(1e-3)
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["fingerprints"]["tumor"]["mean"] == pytest.approx(140)


def test_training_refuses_a_manifest_without_per_model_fingerprints(cohort, tmp_path):
    from flareseg.training.data import load_training_data

    out = tmp_path / "prepared"
    prepare_cohort(cohort, out, seed=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["fingerprint"] = manifest.pop("fingerprints")["organ"]  # the layout before per-model fingerprints
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="prepare` again"):
        load_training_data(out, "organ")


def test_prepare_rejects_non_cohort(tmp_path):
    with pytest.raises(InputError, match="FLARE-layout"):
        prepare_cohort(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "ct.nii.gz").write_bytes(b"not a folder")
    with pytest.raises(InputError, match="ct.nii.gz: is a file, not a cohort folder"):
        prepare_cohort(tmp_path / "ct.nii.gz", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="nowhere: no such cohort folder"):
        prepare_cohort(tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_cli_prepare(cohort, tmp_path):
    out = tmp_path / "prep"
    run = subprocess.run([sys.executable, "-m", "flareseg.cli", "-q", "prepare", "--data", str(cohort), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "SKIPPED Broken_001" in run.stdout
    missing = subprocess.run([sys.executable, "-m", "flareseg.cli", "prepare", "--data", str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_synth_then_prepare_counts_match_and_truncated_case_is_named(tmp_path):
    from flareseg.data.synthetic import SynthConfig, generate_cohort, regime_counts

    config = SynthConfig(cases=10, val_cases=1, seed=5, size="small", proportions={"full": 0.4, "lesion": 0.2, "partial": 0.2, "none": 0.2})
    generate_cohort(tmp_path / "cohort", config, progress=False)
    victim = sorted((tmp_path / "cohort" / "imagesTr").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:2000])
    result = prepare_cohort(tmp_path / "cohort", tmp_path / "prepared", progress=False)
    expected = regime_counts(10, config.proportions)
    bad = [c for c in result.cases if c.problem]
    assert [c.case + "_0000.nii.gz" for c in bad] == [victim.name]
    counts = result.regime_counts()
    bad_regime = next(e["regime"] for e in json.loads((tmp_path / "cohort" / "synth_manifest.json").read_text())["cases"] if e["case"] == bad[0].case)
    expected[bad_regime] -= 1
    assert counts == expected
    assert f"SKIPPED {bad[0].case}" in result.summary()


def test_labels_that_no_image_uses_are_named(tmp_path, caplog):
    """A label map whose image is missing had been dropped without a word; so had a labelsTr that is a file."""
    from flareseg.io import find_training_cases

    for i in range(2):
        write_case(tmp_path, f"c{i}", *phantom_ct(seed=i))
    (tmp_path / "imagesTr" / "c1_0000.nii.gz").rename(tmp_path / "c1_image.nii.gz")  # the image moved away
    with caplog.at_level("WARNING", logger="flareseg.io.layout"):
        cases = find_training_cases(tmp_path)
    assert [(name, label is not None) for name, _, label in cases] == [("c0", True)]
    assert "1 label map(s) without an image in imagesTr/ (expected imagesTr/<case>_0000.nii.gz) are not used: c1.nii.gz" in caplog.text
    caplog.clear()
    import shutil

    shutil.rmtree(tmp_path / "labelsTr")
    (tmp_path / "labelsTr").write_text("oops")
    with caplog.at_level("WARNING", logger="flareseg.io.layout"):
        find_training_cases(tmp_path)
    assert "labelsTr: is a file, not a folder of label maps: every case is read as unlabelled" in caplog.text
