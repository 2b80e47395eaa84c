"""Writing volumes and label maps atomically, in an exact voxel grid, verified before they are published."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flareseg.errors import GeometryError, InputError
from flareseg.io.atomic import atomic_output
from flareseg.io.layout import IMAGE_SUFFIXES
from flareseg.io.output import DICOM_SEG, output_type_of
from flareseg.io.volume import Grid, Volume

def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write `volume` atomically: a temporary file in the destination folder, then a rename.

    Args:
        volume: what to write; its array dtype and geometry are kept exactly.
        path: destination file (.nii.gz, .nii, .nrrd, .mha).

    Returns:
        The written path. A failed write leaves no file behind.
    """
    path = Path(path)
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(f"{path}: unknown output type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    image = volume.to_sitk()
    with atomic_output(path, verify=lambda tmp: _verify_written(tmp, volume.shape, path)) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _verify_written(tmp: Path, shape: tuple[int, ...], path: Path) -> None:
    """Read back a written volume's voxels: a short write (full disk) must not be published.

    SimpleITK does not raise on a short write and reads a truncated file back with zeros, so the
    check decompresses the whole stream (nibabel raises on a truncated one) and compares the shape.
    """
    try:
        if tmp.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            back = np.asanyarray(nib.load(str(tmp)).dataobj)
            ok = tuple(back.shape[:3]) == tuple(shape)
        else:
            ok = tuple(sitk.ReadImage(str(tmp)).GetSize()) == tuple(shape)
    except Exception as exc:  # any reader failure means the file is not whole
        raise OSError(errno.EIO, f"the written file does not read back ({type(exc).__name__}: {exc}); disk full?", str(path)) from None
    if not ok:
        raise OSError(errno.EIO, "the written file reads back with another shape; disk full?", str(path))


def write_label(label: np.ndarray, grid: Grid | Volume, path: str | os.PathLike) -> Path:
    """Write an (I, J, K) label array in exactly `grid`'s geometry (a Grid or a Volume's), atomically, as uint8."""
    grid = grid.grid if isinstance(grid, Volume) else grid
    if tuple(label.shape) != tuple(grid.shape):
        raise GeometryError(f"{path}: label shape {label.shape} differs from the reference image's {grid.shape}")
    return write_volume(Volume.on_grid(label.astype(np.uint8, copy=False), grid), path)


def write_segmentation(
    label: np.ndarray,
    grid: Grid | Volume,
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | Volume | None = None,
    version: str,
    models: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write an (I, J, K) label map in the output type `path`'s suffix names (:data:`flareseg.io.output.OUTPUT_TYPES`).

    A volume type (NIfTI, NRRD, MHA) is written on `grid` (:func:`write_label`); a DICOM SEG
    (``.dcm``) references the DICOM series folder `source`, naming flareseg `version` and the `models`
    as its algorithm. Either way atomically, read back before it is published.

    Raises:
        InputError: an unknown suffix, or a DICOM SEG that cannot be written (see
            :func:`flareseg.io.dicom_seg.write_dicom_seg`).
        GeometryError: `label` does not have `grid`'s shape.
    """
    if output_type_of(path) == DICOM_SEG:
        from flareseg.io.dicom_seg import write_dicom_seg

        if source is None or isinstance(source, Volume):
            raise InputError(f"{path}: a DICOM SEG output needs a DICOM series as input (it references the series' slices)")
        return write_dicom_seg(label, source, path, version=version, models=models)
    return write_label(label, grid, path)
