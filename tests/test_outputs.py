"""Clinical outputs (issue 13): the organ subset, the output types, one DICOM SEG per series in folder runs.

The threshold 'networks' of test_pipeline make every answer known: a voxel is an organ where its HU
exceeds a threshold, whatever the tile it lies in, so a subset run must equal the full run restricted
to the subset voxel for voxel.
"""

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.errors import ConfigError, InputError
from flareseg.inference import InferenceConfig, TwoStepPredictor, run_folder
from flareseg.inference.config import parse_label_selection
from flareseg.inference.folder import plan_folder
from flareseg.io import read_image, read_label, write_volume
from flareseg.io.output import check_output_file, output_type_of
from flareseg.labels import LESION, LIVER, RIGHT_KIDNEY

from conftest import edited_dicom_copy, phantom_ct
from test_pipeline import FAST, organ_thresholds, tumor_thresholds


# ---------------------------------------------------------------------------------------------- organ subset
def test_label_selection_by_names_ids_and_short_names():
    assert parse_label_selection("liver, Right-Kidney,ivc,14") == (LIVER, RIGHT_KIDNEY, 6, LESION)
    assert parse_label_selection(["right kidney", 3, "LK", "lesion", "liver"]) == (1, 2, 3, 13, 14)
    assert parse_label_selection("inferior_vena_cava") == (6,)
    assert InferenceConfig.for_mode("fast", organs=["spleen", "liver"]).organs == (1, 3)
    assert InferenceConfig().organs is None


@pytest.mark.parametrize("selection", ["livr", "liver,0", "15", "background", ""])
def test_an_unknown_organ_is_refused_with_the_valid_names(selection):
    with pytest.raises(ConfigError) as info:
        InferenceConfig(organs=selection)
    message = str(info.value)
    assert "\n" not in message
    assert "liver, right_kidney, spleen" in message and "left_kidney, lesion" in message


def _big_phantom():
    """240 x 200 x 120 mm at 2 mm: on the 4 mm network grid (60 x 50 x 30) 4 tiles of 32^3, so the
    fine organ box of one organ (its extent + 20 mm, at least a patch) is smaller than the grid."""
    return phantom_ct(shape=(120, 100, 60), spacing=(2.0, 2.0, 2.0))


def test_a_subset_equals_the_full_map_restricted_to_it_and_runs_fewer_tiles():
    image, truth = _big_phantom()
    full = TwoStepPredictor(organ_thresholds(), None, config=FAST).segment(image)
    subset = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=dataclasses.replace(FAST, organs=(RIGHT_KIDNEY,))).segment(image)
    expected = np.where(full.label.array == RIGHT_KIDNEY, RIGHT_KIDNEY, 0)
    assert (expected == RIGHT_KIDNEY).sum() > 1000
    np.testing.assert_array_equal(subset.label.array, expected)
    assert subset.label.grid.matches(image.grid)
    assert subset.report.tiles["organ"] < full.report.tiles["organ"]
    assert "tumor" not in subset.report.timings  # no lesion asked for: the tumour model did not run
    assert any("tumour model was not run" in note for note in subset.report.notes)
    # the fine box covers the kidney (high I), not the liver (low I)
    (i0, i1), _, _ = subset.report.organ_box
    assert i1 - i0 < subset.report.network_shape[0]


def test_a_subset_with_lesions_equals_the_two_step_map_restricted_to_it():
    image, _ = _big_phantom()
    full = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST).segment(image)
    subset = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=dataclasses.replace(FAST, organs="liver,lesion")).segment(image)
    expected = np.where(np.isin(full.label.array, [LIVER, LESION]), full.label.array, 0)
    assert (expected == LESION).any() and (expected == LIVER).any()
    np.testing.assert_array_equal(subset.label.array, expected)
    assert subset.report.tumor_box == full.report.tumor_box  # the lesion hosts were searched as in the full run


def test_the_subset_holds_in_accurate_mode_and_through_the_public_api(tmp_path):
    import flareseg

    image, _ = phantom_ct()
    accurate = InferenceConfig.for_mode("accurate", step=1.0)
    full = TwoStepPredictor(organ_thresholds(), None, config=accurate).segment(image).label.array
    seg = flareseg.predict(image, tmp_path / "liver.nii.gz", organ_model=organ_thresholds(), config=accurate, organs="liver")
    np.testing.assert_array_equal(seg.label.array, np.where(full == LIVER, LIVER, 0))
    np.testing.assert_array_equal(read_label(tmp_path / "liver.nii.gz", image).array, seg.label.array)


def test_lesions_asked_for_without_a_tumour_model_are_refused():
    with pytest.raises(ConfigError, match="no tumour model"):
        TwoStepPredictor(organ_thresholds(), None, config=dataclasses.replace(FAST, organs="liver,lesion"))


# ---------------------------------------------------------------------------------------------- output types
def test_output_types_from_suffix_and_conflicts(tmp_path):
    assert [output_type_of(n) for n in ("a.nii.gz", "a.NII", "a.nrrd", "a.mha", "a.dcm", "a.png")] == ["nifti", "nifti", "nrrd", "mha", "dicom-seg", None]
    assert check_output_file(tmp_path / "a.nrrd", output_type="nrrd") == tmp_path / "a.nrrd"
    with pytest.raises(InputError, match=r"a.nii.gz: its suffix means output type nifti but output type nrrd was asked for; name it with .nrrd"):
        check_output_file(tmp_path / "a.nii.gz", output_type="nrrd")
    with pytest.raises(InputError, match=r"for output type nrrd name it seg.nrrd"):
        check_output_file(tmp_path / "seg", output_type="nrrd")
    with pytest.raises(InputError, match=r"unknown output type 'png'; choose one of nifti, nrrd, mha, dicom-seg"):
        check_output_file(tmp_path / "a.nii.gz", output_type="png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
@pytest.mark.parametrize("case", ["deeplesion_ct", "totalsegmentator_ct"])
def test_nrrd_output_has_the_input_geometry_and_equals_the_nifti_output(real_data, tmp_path, case):
    """The PLI DeepLesion slab and the RAS TotalSegmentator CT: the NRRD read back with SimpleITK."""
    ct_path = real_data / case / "ct.nii.gz"
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    predictor.predict(ct_path, tmp_path / "seg.nii.gz")
    predictor.predict(ct_path, tmp_path / "seg.nrrd")
    source, nrrd = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(tmp_path / "seg.nrrd"))
    assert nrrd.GetSize() == source.GetSize()
    np.testing.assert_allclose(nrrd.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(nrrd.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(nrrd.GetDirection(), source.GetDirection(), atol=1e-6)
    nifti = read_label(tmp_path / "seg.nii.gz", read_image(ct_path)).array
    assert nifti.any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0), nifti)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz", "seg.nrrd"]  # no temporaries left


# ---------------------------------------------------------------------------------------------- folder runs
def _dciodvfy_errors(path) -> list[str]:
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.real
def test_a_folder_run_writes_one_dicom_seg_per_series(real_data, tmp_path):
    pytest.importorskip("highdicom")
    from flareseg.io.dicom_seg import read_dicom_seg

    series = real_data / "dcmqi_ct3slice" / "dicom"
    inputs = tmp_path / "in"
    shutil.copytree(series, inputs / "ct3")
    edited_dicom_copy(real_data, inputs / "ct3_flipped", lambda ds: setattr(ds, "PixelData", ds.pixel_array[::-1].tobytes()))
    edited_dicom_copy(real_data, inputs / "anonymised", lambda ds: setattr(ds, "StudyInstanceUID", ""))
    write_volume(phantom_ct()[0], inputs / "volume_0000.nii.gz")
    plan = plan_folder(inputs, tmp_path / "out", output_type="dicom-seg")  # decided before any model runs
    assert [c.name for c in plan.todo] == ["ct3", "ct3_flipped"] and sorted(plan.failed) == ["anonymised", "volume"]
    predictor = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST)
    batch = run_folder(predictor, inputs, tmp_path / "out", progress=False, output_type="dicom-seg")
    assert sorted(r.case for r in batch.predicted) == ["ct3", "ct3_flipped"]
    assert sorted(batch.failed) == ["anonymised", "volume"]
    assert "lacks StudyInstanceUID" in batch.failed["anonymised"] and "needs a DICOM series" in batch.failed["volume"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct3.dcm", "ct3_flipped.dcm"]
    for name in ("ct3", "ct3_flipped"):
        nifti = tmp_path / f"{name}.nii.gz"
        predictor.predict(inputs / name, nifti)
        expected = read_label(nifti, read_image(inputs / name)).array
        assert expected.any()
        np.testing.assert_array_equal(read_dicom_seg(tmp_path / "out" / f"{name}.dcm", inputs / name), expected)
        if shutil.which("dciodvfy"):
            assert not _dciodvfy_errors(tmp_path / "out" / f"{name}.dcm"), name
    # the two series differ, so each SEG really is its own series'
    assert not np.array_equal(read_dicom_seg(tmp_path / "out" / "ct3.dcm", inputs / "ct3"), read_dicom_seg(tmp_path / "out" / "ct3_flipped.dcm", inputs / "ct3_flipped"))
    again = run_folder(predictor, inputs, tmp_path / "out", progress=False, output_type="dicom-seg")
    assert sorted(again.skipped) == ["ct3", "ct3_flipped"] and not again.predicted


def test_a_folder_run_in_nrrd_names_its_outputs_so(tmp_path):
    inputs = tmp_path / "in"
    image, _ = phantom_ct()
    write_volume(image, inputs / "a_0000.nii.gz")
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    batch = run_folder(predictor, inputs, tmp_path / "out", progress=False, output_type="nrrd")
    assert batch.ok and [p.name for p in (tmp_path / "out").iterdir()] == ["a.nrrd"]
    assert read_image(tmp_path / "out" / "a.nrrd", check_ct=False).same_grid(image)


# ---------------------------------------------------------------------------------------------- command line
def _main(capsys, *args):
    from flareseg.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture()
def ct_file(tmp_path):
    return write_volume(phantom_ct()[0], tmp_path / "ct.nii.gz")


def test_cli_refuses_bad_organs_and_output_types_with_one_line(ct_file, tmp_path, capsys):
    missing_model = tmp_path / "no_model"  # every refusal comes before the models are loaded
    cases = {
        "unknown organ": (["-o", tmp_path / "s.nii.gz", "--organs", "liver,livr"], "unknown organ 'livr'"),
        "lesion without a tumour model": (["-o", tmp_path / "s.nii.gz", "--organs", "liver,lesion"], "no tumour model"),
        "suffix vs type": (["-o", tmp_path / "s.nii.gz", "--output-type", "nrrd"], "its suffix means output type nifti"),
        "unknown type": (["-o", tmp_path / "s.nii.gz", "--output-type", "png"], "unknown output type 'png'"),
        "SEG of a NIfTI": (["-o", tmp_path / "s.dcm"], "needs a DICOM series"),
    }
    for problem, (args, words) in cases.items():
        code, err = _main(capsys, "predict", "-i", ct_file, *args, "--organ-model", missing_model)
        assert code == 2 and len(err) == 1 and words in err[0], (problem, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


@pytest.mark.real
def test_cli_refuses_a_series_without_uids_before_loading_models(real_data, tmp_path, capsys):
    series = edited_dicom_copy(real_data, tmp_path / "series", lambda ds: delattr(ds, "SeriesInstanceUID"))
    code, err = _main(capsys, "predict", "-i", series, "-o", tmp_path / "seg.dcm", "--organ-model", tmp_path / "no_model")
    assert code == 2 and len(err) == 1 and "lacks SeriesInstanceUID" in err[0] and "series" in err[0]
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.real
def test_a_subset_as_dicom_seg_with_its_statistics_and_preview(real_data, tmp_path):
    import json

    pytest.importorskip("highdicom")
    from flareseg.io.dicom_seg import read_dicom_seg
    from flareseg.outputs import write_case_outputs

    series = real_data / "dcmqi_ct3slice" / "dicom"
    out = tmp_path / "out" / "seg.dcm"
    full = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST).segment(series).label.array
    TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=dataclasses.replace(FAST, organs="liver")).predict(series, out)
    write_case_outputs(series, out, statistics=True, preview=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.dcm", "seg_preview.png", "seg_statistics.csv", "seg_statistics.json"]
    label = read_dicom_seg(out, series)
    assert set(np.unique(label)) == {0, LIVER}
    assert (label == LIVER).sum() >= (full == LIVER).sum() > 0  # without the tumour model no lesion is cut out of the liver
    stats = json.loads((out.parent / "seg_statistics.json").read_text())
    assert list(stats["organs"]) == ["liver"] and stats["organs"]["liver"]["voxels"] == int((label == LIVER).sum())
