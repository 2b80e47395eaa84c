"""The command line: bad input gives exit code 2, one line on stderr, no traceback and no output file."""

import os
import subprocess
import sys

import numpy as np
import pytest

from flareseg.io import Volume, read_image, write_volume

from conftest import phantom_ct
from test_io import _mha, _nifti_with_sform, _patched_nifti
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
        # headers that are damaged in ways ITK or nibabel pass on (tests/test_io.py has each message)
        "MHA declaring 10^15 voxels": _mha(tmp_path / "bomb.mha", DimSize="100000 100000 100000", data=b"\0" * 64),
        "sheared MHA": _mha(tmp_path / "sheared.mha", TransformMatrix="1 0 0 0.5 1 0 0 0 1"),
        "origin beyond 1 km": _mha(tmp_path / "far.mha", Offset="0 1e30 0"),
        "spacing in metres": _mha(tmp_path / "metres.mha", ElementSpacing="0.0008 0.0008 0.002"),
        "NaN origin": _nifti_with_sform(tmp_path / "nan_origin.nii", [[2, 0, 0, np.nan], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]]),
        "zero dimension": _patched_nifti(tmp_path / "zerodim.nii.gz", [(44, "<h", (0,))]),
        "NaN intercept": _patched_nifti(tmp_path / "nan_inter.nii.gz", [(112, "<ff", (1.0, float("nan")))]),
        "NIfTI-2": _nifti2(tmp_path / "two.nii.gz"),
    }


def _nifti2(path):
    import nibabel as nib

    nib.save(nib.Nifti2Image(np.linspace(-1000, 1000, 8 * 8 * 6).astype(np.int16).reshape(8, 8, 6), np.eye(4)), str(path))
    return path


def test_predict_bad_inputs_exit_2_with_one_line(models, tmp_path, capsys):
    organ, tumor = models
    for problem, path in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{problem.replace(' ', '_')}.nii.gz"
        code, lines = _run_main(capsys, "-q", "predict", "-i", path, "-o", out, "--organ-model", organ, "--tumor-model", tumor)
        assert code == 2, (problem, lines)
        assert len(lines) == 1 and "Traceback" not in lines[0], (problem, lines)
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


def _run_main(capsys, *args):
    """The CLI in this process (fast): (exit code, stderr lines)."""
    from flareseg.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture()
def ct_file(tmp_path):
    image, _ = phantom_ct()
    return write_volume(image, tmp_path / "ct.nii.gz")


def test_output_paths_are_refused_before_any_work(models, ct_file, tmp_path, capsys):
    organ, _ = models
    folder = tmp_path / "existing"
    folder.mkdir()
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(ct_file)
    before = ct_file.read_bytes()
    cases = {
        "the input itself": (ct_file, "is the input"),
        "a link to the input": (link, "is the input"),
        "an existing folder": (folder, "existing folder"),
        "no suffix": (tmp_path / "seg", "unknown output type"),
        "DICOM": (tmp_path / "seg.dcm", "DICOM"),
        "parent is a file": (a_file / "seg.nii.gz", "is a file"),
    }
    for problem, (output, words) in cases.items():
        code, err = _run_main(capsys, "predict", "-i", ct_file, "-o", output, "--organ-model", organ, "--overwrite")
        assert code == 2 and len(err) == 1 and words in err[0], (problem, err)
    assert ct_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct.nii.gz", "existing", "a_file.txt", "link.nii.gz"])


@pytest.mark.parametrize("command", ["evaluate", "prepare", "train", "benchmark", "demo"])
def test_every_folder_output_that_is_a_file_is_refused_by_name(models, ct_file, tmp_path, capsys, command):
    organ, _ = models
    out = tmp_path / "taken"
    out.write_text("keep me")
    args = {
        "evaluate": ["--pred", tmp_path, "--ref", tmp_path],
        "prepare": ["--data", tmp_path],
        "train": ["--task", "organ", "--prepared", tmp_path],
        "benchmark": ["-i", ct_file.parent, "--organ-model", organ],
        "demo": [],
    }[command]
    ct_file.rename(ct_file.parent / "case_0000.nii.gz")
    code, err = _run_main(capsys, command, "-q", *args, "--out", out)
    assert code == 2 and err == [f"flareseg {command}: error: {out}: is a file; the output here is a folder (give a new or existing folder)"]
    assert out.read_text() == "keep me"


def test_folder_run_into_a_file_is_refused(models, tmp_path, capsys):
    organ, _ = models
    image, _ = phantom_ct()
    inputs = tmp_path / "in"
    write_volume(image, inputs / "a_0000.nii.gz")
    target = tmp_path / "out.nii.gz"
    target.write_text("x")
    code, err = _run_main(capsys, "predict", "-i", inputs, "-o", target, "--organ-model", organ)
    assert code == 2 and "is a file" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(models, ct_file, tmp_path, capsys):
    organ, _ = models
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = _run_main(capsys, "predict", "-i", ct_file, "-o", ro / "seg.nii.gz", "--organ-model", organ)
    assert code == 2 and "not writable" in err[0]


@pytest.mark.parametrize("value", ["0.01", "nan", "2", "x"])
def test_bad_step_values_are_refused_by_name(models, ct_file, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        _run_main(capsys, "predict", "-i", ct_file, "-o", tmp_path / "s.nii.gz", "--organ-model", models[0], "--step", value)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--step" in err and "Traceback" not in err


def test_a_misspelt_option_is_named_with_a_suggestion(models, ct_file, tmp_path, capsys):
    code, err = _run_main(capsys, "predict", "-i", ct_file, "-o", tmp_path / "s.nii.gz", "--orgn-model", models[0])
    assert code == 2 and len(err) == 1 and "did you mean --organ-model" in err[0]


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_train_refuses_bad_learning_rates(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        _run_main(capsys, "train", "--task", "organ", "--prepared", tmp_path, "--out", tmp_path / "m", "--lr", value)
    assert exit_info.value.code == 2 and "--lr" in capsys.readouterr().err


def test_verbosity_flags_work_after_the_subcommand(models, ct_file, tmp_path, capsys):
    organ, _ = models
    code, _ = _run_main(capsys, "predict", "-q", "-i", ct_file, "-o", tmp_path / "seg.nii.gz", "--organ-model", organ)
    assert code == 0 and (tmp_path / "seg.nii.gz").is_file()



def test_verbose_shows_flareseg_debug_lines_not_every_library_s(tmp_path):
    code = (
        "import logging; from flareseg.cli import main; "
        f"main(['evaluate', '-v', '--pred', {str(tmp_path / 'p')!r}, '--ref', {str(tmp_path / 'r')!r}, '--out', {str(tmp_path / 'o')!r}]); "
        "print(logging.getLogger('flareseg.io').getEffectiveLevel(), logging.getLogger('matplotlib.font_manager').getEffectiveLevel())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["10", "20"], run.stderr  # logging.DEBUG for flareseg, logging.INFO for the rest


def test_statistics_preview_and_label_tables_beside_the_output(models, ct_file, tmp_path, capsys):
    import json

    organ, tumor = models
    out = tmp_path / "res" / "seg.nii.gz"
    code, err = _run_main(capsys, "predict", "-q", "-i", ct_file, "-o", out, "--organ-model", organ, "--tumor-model", tumor,
                          "--statistics", "--preview", "--label-tables")
    assert code == 0, err
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["flareseg_labels.ctbl", "flareseg_labels_itksnap.txt", "seg.nii.gz", "seg_preview.png", "seg_statistics.csv", "seg_statistics.json"]
    stats = json.loads((out.parent / "seg_statistics.json").read_text())
    label = read_image(out, check_ct=False).array
    for name, organ_stats in stats["organs"].items():
        assert organ_stats["voxels"] == int((label == organ_stats["id"]).sum()), name


def test_no_postprocess_writes_the_raw_argmax_in_every_mode():
    """--no-postprocess turns every post-processing rule off (fast, accurate; paper has none); without it the mode's rules hold."""
    from flareseg.cli import _inference_config, build_parser

    for mode in ("fast", "accurate"):
        argv = ["predict", "-i", "ct.nii.gz", "-o", "out.nii.gz", "--organ-model", "m", "--mode", mode]
        assert _inference_config(build_parser().parse_args(argv)).postprocess.enabled
        assert not _inference_config(build_parser().parse_args(argv + ["--no-postprocess"])).postprocess.enabled
