"""Shared test helpers: the real CT samples and small synthetic volumes written on the fly."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch is imported: idle OpenMP threads sleep instead of spinning (3x faster steps here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The default engine ('auto') would export every random test model to ONNX for OpenVINO: tests run
# torch unless they name an engine (tests/test_engine.py covers the others and 'auto' itself).
os.environ["FLARESEG_ENGINE"] = "torch"

import numpy as np
import pytest

from flareseg.io import Volume, write_volume

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """The real CT samples: $FLARESEG_REAL_DATA or ../shared/data/real beside the repository."""
    return Path(os.environ.get("FLARESEG_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if not (path / "totalsegmentator_ct" / "ct.nii.gz").exists():
        pytest.skip(f"real CT samples not found at {path} (set FLARESEG_REAL_DATA)")
    return path


REAL_CASES = {
    # name: (image path, label path, label value remap) relative to the real-data folder
    "totalsegmentator_ct": ("totalsegmentator_ct/ct.nii.gz", "totalsegmentator_ct/labels.nii.gz"),
    "totalsegmentator_dicom": ("totalsegmentator_dicom/dicom", "totalsegmentator_dicom/labels.nii.gz"),
    "deeplesion_ct": ("deeplesion_ct/ct.nii.gz", "deeplesion_ct/lesion.nii.gz"),
    "dcmqi_ct3slice": ("dcmqi_ct3slice/dicom", "dcmqi_ct3slice/labels.nii.gz"),
}


def phantom_ct(shape=(40, 36, 30), spacing=(2.0, 2.0, 3.0), *, seed: int = 0, direction=None, origin=(-40.0, -36.0, 0.0)):
    """A small CT-like volume (air outside an elliptic 'body' of ~40 HU, two bright 'organs') and its labels.

    Returns:
        (image Volume float32 HU, label Volume uint8 with ids 1 and 2, plus 14 for a small 'lesion').
    """
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2
    r = [(idx[a] - centre[a]) / (shape[a] / 2) for a in range(3)]
    body = r[0] ** 2 + r[1] ** 2 < 0.8
    organ1 = ((idx[0] - shape[0] * 0.35) ** 2 + (idx[1] - centre[1]) ** 2 + (idx[2] - centre[2]) ** 2) < (shape[0] * 0.15) ** 2
    organ2 = ((idx[0] - shape[0] * 0.68) ** 2 + (idx[1] - centre[1]) ** 2 + (idx[2] - centre[2]) ** 2) < (shape[0] * 0.1) ** 2
    lesion = ((idx[0] - shape[0] * 0.35) ** 2 + (idx[1] - centre[1]) ** 2 + (idx[2] - centre[2]) ** 2) < (shape[0] * 0.05) ** 2
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = 40
    image[organ1] = 120
    image[organ2] = 200
    image[lesion] = 60
    image += rng.normal(0, 10, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ1] = 1
    label[organ2] = 2
    label[lesion] = 14
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    return Volume(image, spacing, origin, direction), Volume(label, spacing, origin, direction)


def write_case(folder: Path, name: str, image: Volume, label: Volume | None = None) -> tuple[Path, Path | None]:
    """Write a case in FLARE layout under `folder` (imagesTr/<name>_0000.nii.gz, labelsTr/<name>.nii.gz)."""
    image_path = write_volume(Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), folder / "imagesTr" / f"{name}_0000.nii.gz")
    label_path = write_volume(label, folder / "labelsTr" / f"{name}.nii.gz") if label is not None else None
    return image_path, label_path


def edited_dicom_copy(real_data: Path, out: Path, edit) -> Path:
    """The real 3-slice DICOM series copied into `out`, each slice's dataset passed through `edit(ds)`."""
    import pydicom

    out.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in (real_data / "dcmqi_ct3slice" / "dicom").rglob("*") if p.is_file())):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(out / f"{i}.dcm")
    return out
