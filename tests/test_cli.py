"""The command line: bad input gives exit code 2, one line on stderr, no traceback and no output file."""

import subprocess
import sys

import numpy as np
import pytest

from flareseg.io import Volume, read_image, write_volume

from conftest import phantom_ct
from test_pipeline import write_random_model


def flareseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flareseg.cli", "-q", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_models")
    return write_random_model(root / "organ", "organ", 0), write_random_model(root / "tumor", "tumor", 1)


def _nifti(path, array, spacing=(2.0, 2.0, 3.0)):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag(list(spacing) + [1.0])), str(path))
    return path


def _bad_inputs(tmp_path):
    image, _ = phantom_ct()
    good = write_volume(image, tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:1500])
    nan = np.linspace(-1000, 1000, 27000, dtype=np.float32).reshape(30, 30, 30)
    nan[1, 2, 3] = np.nan
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    return {
        "2-D": _nifti(tmp_path / "flat.nii.gz", np.zeros((30, 30), np.int16) - 1000),
        "4-D": _nifti(tmp_path / "four.nii.gz", np.zeros((30, 30, 30, 2), np.int16) - 1000),
        "not CT": _nifti(tmp_path / "unit.nii.gz", np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)),
        "non-finite": _nifti(tmp_path / "nan.nii.gz", nan),
        "truncated": truncated,
        "missing": tmp_path / "missing.nii.gz",
        "empty folder": empty_dir,
    }


def test_predict_bad_inputs_exit_2_with_one_line(models, tmp_path):
    organ, tumor = models
    for problem, path in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{problem.replace(' ', '_')}.nii.gz"
        run = flareseg("predict", "-i", path, "-o", out, "--organ-model", organ, "--tumor-model", tumor)
        assert run.returncode == 2, (problem, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, (problem, run.stderr)
        assert path.name in lines[0], (problem, lines[0])
        assert not out.exists(), problem
        assert not list(tmp_path.glob(f".{out.name}*")), problem


def test_predict_file_and_folder(models, tmp_path):
    organ, tumor = models
    image, _ = phantom_ct(direction=np.diag([-1.0, 1.0, -1.0]))
    inputs = tmp_path / "in"
    write_volume(image, inputs / "case1_0000.nii.gz")
    write_volume(image, inputs / "case2_0000.nii.gz")
    (inputs / "broken_0000.nii.gz").write_bytes(b"not a nifti at all")
    single = flareseg("predict", "-i", inputs / "case1_0000.nii.gz", "-o", tmp_path / "one.nii.gz", "--organ-model", organ, "--tumor-model", tumor)
    assert single.returncode == 0, single.stderr
    assert read_image(tmp_path / "one.nii.gz", check_ct=False).same_grid(image)
    batch = flareseg("predict", "-i", inputs, "-o", tmp_path / "out", "--organ-model", organ, "--tumor-model", tumor)
    assert batch.returncode == 2  # one case failed, the others were written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.nii.gz", "case2.nii.gz"]
    assert "broken" in batch.stdout + batch.stderr


def test_predict_missing_model_folder(tmp_path):
    image, _ = phantom_ct()
    path = write_volume(image, tmp_path / "ct.nii.gz")
    run = flareseg("predict", "-i", path, "-o", tmp_path / "seg.nii.gz", "--organ-model", tmp_path / "nope")
    assert run.returncode == 2 and "nope" in run.stderr and "Traceback" not in run.stderr


def test_evaluate_shape_mismatch_names_both_files(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _, label = phantom_ct()
    write_volume(label, ref / "a.nii.gz")
    write_volume(Volume(np.zeros((5, 5, 5), np.uint8), label.spacing, label.origin, label.direction), pred / "a.nii.gz")
    run = flareseg("evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "scores")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(pred / "a.nii.gz") in run.stderr and str(ref / "a.nii.gz") in run.stderr
    assert not (tmp_path / "scores" / "per_case.csv").exists()


def test_evaluate_writes_tables(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _, label = phantom_ct()
    write_volume(label, ref / "a.nii.gz")
    write_volume(label, pred / "a.nii.gz")
    run = flareseg("evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "scores")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "scores" / "per_case.csv").read_text().splitlines()[0] == "case,label,name,dsc,nsd"
