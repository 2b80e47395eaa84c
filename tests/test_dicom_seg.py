"""DICOM SEG output from the real DICOM samples: valid (dciodvfy), and equal to the NIfTI output."""

import shutil
import subprocess

import numpy as np
import pytest

from flareseg.errors import InputError
from flareseg.io import read_image, read_label

from test_pipeline import FAST, TwoStepPredictor, organ_thresholds, tumor_thresholds

pytest.importorskip("highdicom")


def _seg_labels(path, series_folder):
    """The SEG read back with highdicom as an (I, J, K) FLARE label map on the series' grid."""
    import highdicom as hd
    import pydicom

    from flareseg.io.read import dicom_series_files
    from flareseg.labels import BY_NAME

    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_series_files(series_folder)]
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=False)
    out = np.zeros(pixels.shape[:3], np.uint8)
    for k, number in enumerate(numbers):
        out[pixels[..., k] > 0] = BY_NAME[seg.get_segment_description(number).segment_label].id
    return out.transpose(2, 1, 0)


@pytest.mark.real
def test_an_anonymised_series_without_study_and_series_uids_is_refused(real_data, tmp_path):
    """The JPEG 2000 sample's Study/Series/SOP Instance UIDs are empty: a SEG could reference nothing."""
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    with pytest.raises(InputError, match="lacks StudyInstanceUID, SeriesInstanceUID"):
        predictor.predict(real_data / "totalsegmentator_dicom" / "dicom", tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
def test_dicom_seg_is_valid_and_equals_the_nifti_output(real_data, tmp_path):
    series = real_data / "dcmqi_ct3slice" / "dicom"
    predictor = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST)
    predictor.predict(series, tmp_path / "seg.nii.gz")
    predictor.predict(series, tmp_path / "seg.dcm")
    nifti = read_label(tmp_path / "seg.nii.gz", read_image(series)).array
    assert nifti.any()
    np.testing.assert_array_equal(_seg_labels(tmp_path / "seg.dcm", series), nifti)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed")
    check = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_dicom_seg_for_a_nifti_input_is_refused_before_any_work(tmp_path):
    from conftest import phantom_ct
    from flareseg.io import write_volume

    image = write_volume(phantom_ct()[0], tmp_path / "ct.nii.gz")
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    with pytest.raises(InputError, match="DICOM series"):
        predictor.predict(image, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.real
def test_a_series_missing_its_uids_is_refused(real_data, tmp_path):
    from conftest import edited_dicom_copy

    series = edited_dicom_copy(real_data, tmp_path / "series", lambda ds: delattr(ds, "FrameOfReferenceUID"))
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    with pytest.raises(InputError, match="FrameOfReferenceUID"):
        predictor.predict(series, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.real
def test_the_public_predict_writes_a_dicom_seg_too(real_data, tmp_path):
    import flareseg

    series = real_data / "dcmqi_ct3slice" / "dicom"
    seg = flareseg.predict(series, tmp_path / "seg.dcm", organ_model=organ_thresholds(), mode="fast")
    np.testing.assert_array_equal(_seg_labels(tmp_path / "seg.dcm", series), seg.label.array)
