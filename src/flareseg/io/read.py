"""Reading CT volumes and label maps (NIfTI, NRRD, MHA, DICOM series), validated before use.

Every check names the file and the value, and the header is checked before the voxels are read: a
header that declares more voxels than :data:`MAX_VOXELS`, or than its file can hold, is refused
without allocating them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from flareseg.errors import FlaresegError, GeometryError, InputError
from flareseg.io.layout import IMAGE_SUFFIXES
from flareseg.io.volume import Volume

log = logging.getLogger(__name__)

CT_MAX_LOWEST_HU = -200.0
"""A CT of the abdomen always holds air, lung or fat: its lowest value lies below this."""
MAX_VOXELS = 2048 * 1024 * 1024
"""The largest volume read (2^31 voxels, 8 GiB as float32: e.g. 2048 x 1024 x 1024)."""
MAX_EXTENT_MM = 3000.0
"""The largest extent (mm) along any axis of an image read: a whole-body CT spans ~2,000 mm along the
table and at most ~780 mm across. A header whose spacing is in micrometres, or simply wrong, would
otherwise be resampled to billions of voxels over minutes before anything failed."""
MIN_SPACING_MM = 0.01
"""The smallest voxel spacing (mm) read: CT voxels are 0.2 mm and more; a header whose spacing is in
metres (0.0008 for 0.8 mm) would make the scan a millimetre across, resampled to a voxel or two."""
MAX_COMPRESSION_RATIO = 1100
"""An upper bound of the voxels a byte of a (compressed) image file can hold."""

MAX_ORIGIN_MM = 1e6
"""The farthest an image's origin may lie from the scanner's origin (mm): a header's origin beyond a
kilometre (or NaN) is damaged, and would turn every physical coordinate computed from it into noise."""
DIRECTION_ATOL = 1e-2
"""How far the direction matrix's columns may be from perpendicular unit vectors (max |D^T D - I|)."""

CT_MIN_PLAUSIBLE_RANGE_HU = 200.0
"""A CT spans air to soft tissue or bone: an image whose intensity range is narrower is not HU."""


def _read_volume(path: Path) -> Volume:
    """Read any supported file or DICOM folder into a validated, native-dtype :class:`Volume`.

    NIfTI voxels are read with nibabel (which detects truncated files and keeps NaN, where ITK's
    reader silently yields zeros) and the geometry with SimpleITK, as every other format.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom_series(path)
        _check_header(path, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing(), image.GetDirection(), image.GetOrigin())
        return Volume.from_sitk(image)
    name = path.name.lower()
    if not name.endswith(IMAGE_SUFFIXES):
        raise InputError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    reader = _header(path)  # the header alone: a declared size is checked before ITK allocates it
    dim, size, spacing, direction, origin = _header_geometry(reader)
    _check_header(path, dim, size, reader.GetNumberOfComponents(), spacing, direction, origin)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image (truncated or corrupt file?): {_first_line(exc)}") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return Volume.from_sitk(image)


def _header_geometry(reader: sitk.ImageFileReader) -> tuple[int, tuple, tuple, tuple, tuple]:
    """(dimension, size, spacing, direction, origin) of a header read by ReadImageInformation; a trailing
    time axis of length 1 is dropped (a 3-D volume stored as 4-D)."""
    dim, size = reader.GetDimension(), reader.GetSize()
    spacing, direction, origin = reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin()
    if dim == 4 and size[3] == 1:
        dim, size, spacing, origin = 3, size[:3], spacing[:3], origin[:3]
        direction = tuple(np.array(direction).reshape(4, 4)[:3, :3].ravel())
    if len(spacing) == len(direction) ** 0.5 and any(s < 0 for s in spacing):
        # As ITK's reader does when it reads the voxels: a negative spacing (MetaImage allows it) is an axis
        # that runs the other way, the same grid as |spacing| with that direction column negated.
        n = len(spacing)
        signs = np.where(np.asarray(spacing) < 0, -1.0, 1.0)
        spacing = tuple(abs(s) for s in spacing)
        direction = tuple((np.array(direction, dtype=float).reshape(n, n) * signs).ravel())
    return dim, size, spacing, direction, origin


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    header_size, pixdim, affine = _nifti_raw_header(path)  # raises, naming the problem, for a file that is not NIfTI
    if header_size == 540:
        raise InputError(f"{path}: a NIfTI-2 file, which flareseg's reader (ITK) does not read; save it as NIfTI-1 "
                         "(nibabel: nib.save(nib.Nifti1Image.from_image(nib.load(path)), 'ct.nii.gz'))")
    if not np.all(np.isfinite(affine)):  # before ITK, whose matrix code prints pages of NaN to stderr
        raise InputError(f"{path}: the header's orientation (qform/sform) holds NaN or infinity: {affine.round(4).tolist()}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if "orthonormal" in str(exc):
            raise InputError(f"{path}: the header's voxel axes are not perpendicular (a sheared affine); flareseg needs an "
                             "orthogonal voxel grid: resample the image onto one first") from None
        raise InputError(f"{path}: cannot read the NIfTI header (corrupt file?): {_first_line(exc)}") from None
    dim, size, spacing, direction, origin = _header_geometry(reader)
    _check_header(path, dim, size, reader.GetNumberOfComponents(), spacing, direction, origin)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(f"{path}: voxel spacing is missing or not positive in the header (pixdim {tuple(pixdim.tolist())})")
    open_gzip, gzip_errors = _gzip_reader()
    from nibabel.spatialimages import HeaderDataError

    try:
        if path.name.lower().endswith(".gz"):
            with open_gzip(path) as fh:  # nibabel's own reader is Python's gzip
                image = nib.Nifti1Image.from_stream(fh)
                _check_nibabel_shape(path, image.shape, size)
                array = np.asanyarray(image.dataobj)
        else:
            image = nib.load(str(path))
            _check_nibabel_shape(path, image.shape, size)
            array = np.asanyarray(image.dataobj)
    except InputError:  # a ValueError too: the shape check's own message
        raise
    except HeaderDataError as exc:  # e.g. a NaN intercept (scl_inter) beside a valid slope
        raise InputError(f"{path}: the header's intensity scaling is invalid: {_one_line(exc)}") from None
    except (EOFError, OSError, ValueError, zlib.error, *gzip_errors) as exc:
        raise InputError(f"{path}: cannot read the voxel data (truncated or corrupt file?): {_one_line(exc)}") from None
    array = np.asarray(array.reshape(tuple(size)))
    return Volume(array, tuple(float(s) for s in spacing), tuple(float(o) for o in origin), np.array(direction, dtype=float).reshape(3, 3))


def _check_nibabel_shape(path: Path, shape: Sequence[int], size: Sequence[int]) -> None:
    """The voxel shape nibabel reads must be the size ITK's header gave (ITK reads a zero dimension as 1)."""
    check_declared_size(path, shape)
    kept = tuple(int(s) for s in shape[:3]) + tuple(int(s) for s in shape[3:] if int(s) != 1)
    if kept != tuple(int(s) for s in size):
        raise InputError(f"{path}: the header's dimensions {tuple(int(s) for s in shape)} do not describe a {'x'.join(str(int(s)) for s in size)} volume (corrupt header?)")


def _gzip_reader() -> tuple[Any, tuple[type[Exception], ...]]:
    """(open(path) -> binary file, the errors it raises beyond OSError and EOFError): ISA-L's gzip reader
    where it is installed (``isal``, in ``flareseg[all]``: a 512x512x300 CT in 0.8 s instead of 1.45 s), else Python's."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        return (lambda path: gzip.open(path, "rb")), ()
    return (lambda path: igzip.open(path, "rb")), (isal_zlib.error,)


_NIFTI_DATATYPES = frozenset({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304})
"""The datatype codes NIfTI-1 defines (binary, integers, floats, complex, RGB, RGBA)."""


def _nifti_raw_header(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """(header size: 348 for NIfTI-1, 540 for NIfTI-2; pixdim[1:4] exactly as stored: nibabel and ITK silently
    replace 0 by 1; the numbers of the NIfTI-1 orientation in use: quaternion and offset where qform_code > 0,
    srow_x/y/z where sform_code > 0; none for NIfTI-2)."""
    open_gzip, gzip_errors = _gzip_reader()
    opener = open_gzip if path.name.lower().endswith(".gz") else (lambda p: open(p, "rb"))
    try:
        with opener(path) as fh:
            header = fh.read(540)
    except (OSError, EOFError, *gzip_errors) as exc:
        raise InputError(f"{path}: cannot read the NIfTI header: {exc}") from None
    if len(header) < 348:
        raise InputError(f"{path}: not a NIfTI file (a {len(header)}-byte header; NIfTI-1's has 348)")
    for order in "<>":
        size = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
        if size == 348:
            datatype = int(np.frombuffer(header[70:72], dtype=f"{order}i2")[0])
            if datatype not in _NIFTI_DATATYPES:  # else ITK's NIfTI library prints its own error to stderr
                raise InputError(f"{path}: unknown NIfTI datatype code {datatype} in the header (corrupt file?)")
            qform_code, sform_code = np.frombuffer(header[252:256], dtype=f"{order}i2")
            affine = np.concatenate([
                np.frombuffer(header[256:280], dtype=f"{order}f4") if qform_code > 0 else [],
                np.frombuffer(header[280:328], dtype=f"{order}f4") if sform_code > 0 else [],
            ]).astype(float)
            return size, np.frombuffer(header[76:108], dtype=f"{order}f4")[1:4].astype(float), affine
        if size == 540:
            return size, np.frombuffer(header[104:168], dtype=f"{order}f8")[1:4].astype(float), np.zeros(0)
    raise InputError(f"{path}: not a NIfTI file (bad header size)")


def _series_files(folder: Path) -> dict[str, list[str]]:
    """GDCM's scan of `folder`: each DICOM series' files in slice order, by Series Instance UID.

    Raises:
        InputError: the folder cannot be scanned, is empty, or holds no DICOM series.
    """
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot scan the folder for DICOM series: {_first_line(exc)}") from None
    if not series_ids:
        if not any(folder.iterdir()):
            raise InputError(f"{folder}: the folder is empty")
        raise InputError(f"{folder}: no DICOM series found in the folder")
    return {s: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series_ids}


def dicom_series_files(folder: Path, files: dict[str, list[str]] | None = None) -> list[str]:
    """The files of the series :func:`read_image` reads from `folder` (the largest), in slice order;
    `files` is the folder's :func:`_series_files` where it is already scanned."""
    files = _series_files(folder) if files is None else files
    series_ids = list(files)
    if len(series_ids) > 1:
        # Take the series with the most slices, as a person would.
        series_ids = sorted(series_ids, key=lambda s: len(files[s]), reverse=True)
        others = ", ".join(str(len(files[s])) for s in series_ids[1:])
        log.warning(
            "%s: %d DICOM series found; reading the largest (%d slices, Series Instance UID %r), not the others (%s slices)",
            folder, len(series_ids), len(files[series_ids[0]]), series_ids[0], others,
        )
    return list(files[series_ids[0]])


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = _series_files(folder)  # one GDCM scan of the folder serves both checks
    files = dicom_series_files(folder, series)
    _check_dicom_slices(folder, files)
    _check_no_unreadable_images(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read the DICOM series: {_first_line(exc)}") from None


_DICOM_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
"""Pixel Data (7FE0,0010) as little-endian DICOM stores it."""


def _check_no_unreadable_images(folder: Path, series: dict[str, list[str]]) -> None:
    """Refuse a folder holding a DICOM image (preamble ``DICM``, a Pixel Data element) that GDCM placed in
    no series: a truncated or corrupt slice, left out of the volume silently where no gap betrays it (a
    first or last slice, or a series too short for the spacing check). DICOM files without pixel data
    (a DICOMDIR, a dose report, a slice cut before its pixels) are ignored with a warning naming them.
    `series` is the folder's :func:`_series_files`."""
    in_series = {Path(f).name for files in series.values() for f in files}
    images, others = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in in_series):
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
                if head[128:132] != b"DICM":
                    continue
                body = fh.read()
        except OSError as exc:
            raise InputError(f"{folder}: cannot read {path.name}: {exc.strerror or exc}") from None
        (images if _DICOM_PIXEL_DATA_TAG in body else others).append(path.name)
    if images:
        shown = ", ".join(images[:3]) + (f" and {len(images) - 3} more" if len(images) > 3 else "")
        raise InputError(f"{folder}: {len(images)} DICOM image file(s) cannot be read (truncated or corrupt?) and would be "
                         f"left out of the volume: {shown}; restore or remove them")
    if others:
        log.warning("%s: ignoring %d DICOM file(s) that are in no image series (no pixel data, or unreadable): %s",
                    folder, len(others), ", ".join(others[:3]) + (" ..." if len(others) > 3 else ""))


def _dicom_tag(reader: sitk.ImageFileReader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


def _check_dicom_slices(folder: Path, files: Sequence[str]) -> None:
    """Check a series from its slice headers before its voxels are read.

    Refused with a message naming the folder: a modality other than CT, a volume over
    :data:`MAX_VOXELS`, an unreadable slice header, a first slice whose pixel spacing is not positive or
    whose orientation is not two perpendicular unit vectors, a slice whose size, orientation or pixel spacing
    differs from the first slice's or that lacks the position the others have (the series reader takes
    the first slice's geometry for all and would misplace it), two slices at one position, and slices
    whose spacing is not uniform (a missing slice: the series reader would assume uniform spacing and
    misplace every slice after the gap).
    """
    positions, normal, first = [], None, None
    for index, name in enumerate(files):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{folder}: slice {Path(name).name} cannot be read: {_first_line(exc)}") from None
        if index == 0:
            modality = _dicom_tag(reader, "0008|0060")
            if modality is not None and modality.upper() != "CT":
                raise InputError(f"{folder}: the series has modality {modality}; flareseg segments CT only")
            columns, rows = reader.GetSize()[:2]
            if int(columns) * int(rows) * len(files) > MAX_VOXELS:
                raise InputError(f"{folder}: {len(files)} slices of {columns} x {rows} voxels: more than the {MAX_VOXELS:,} flareseg reads")
        geometry = _slice_geometry(folder, name, reader)
        if first is None:
            _check_slice_geometry(folder, name, geometry)
            first = geometry
            if geometry["orientation"] is not None and len(geometry["orientation"]) == 6:
                row, col = np.reshape(geometry["orientation"], (2, 3))
                normal = np.cross(row, col)
        else:
            _check_same_geometry(folder, name, geometry, first, Path(files[0]).name)
        position = _tag_numbers(folder, name, reader, "0020|0032", "image position")
        if position is not None and normal is not None and len(position) == 3:
            positions.append(float(np.dot(position, normal)))
    if 0 < len(positions) < len(files):
        raise InputError(f"{folder}: {len(files) - len(positions)} of {len(files)} slices have no image position (0020,0032): "
                         "their place in the volume is unknown")
    if len(positions) < 3:
        return
    z = np.sort(np.asarray(positions))
    steps = np.diff(z)
    if np.any(steps < 1e-3):
        at = float(z[1:][steps < 1e-3][0])
        raise InputError(f"{folder}: two slices at the same position ({at:.2f} mm along the slice normal): a duplicated slice?")
    typical = float(np.median(steps))
    off = np.abs(steps - typical) > max(0.01 * typical, 0.01)
    if np.any(off):
        first = int(np.flatnonzero(off)[0])
        raise InputError(
            f"{folder}: slice spacing is not uniform: {steps[first]:.2f} mm between the slices at {z[first]:.2f} and "
            f"{z[first + 1]:.2f} mm, {typical:.2f} mm elsewhere (a missing slice?){_files_left_out(folder, files)}"
        )


def _tag_numbers(folder: Path, name: str, reader: sitk.ImageFileReader, tag: str, what: str) -> tuple[float, ...] | None:
    """The backslash-separated numbers of DICOM `tag` in slice `name` (None when absent); InputError naming
    the slice and `what` when they are not numbers."""
    text = _dicom_tag(reader, tag)
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split("\\"))
    except ValueError:
        raise InputError(f"{folder}: slice {Path(name).name} has an unreadable {what} ({text!r})") from None


def _slice_geometry(folder: Path, name: str, reader: sitk.ImageFileReader) -> dict[str, Any]:
    """A slice header's size (columns, rows), orientation cosines and pixel spacing (None where absent)."""
    return {
        "size": tuple(int(v) for v in reader.GetSize()[:2]),
        "orientation": _tag_numbers(folder, name, reader, "0020|0037", "orientation"),
        "pixel spacing": _tag_numbers(folder, name, reader, "0028|0030", "pixel spacing"),
    }


def _check_slice_geometry(folder: Path, name: str, geometry: dict[str, Any]) -> None:
    """Refuse a slice whose pixel spacing is not two positive numbers (GDCM reads 0 as 1 mm) or whose
    orientation is not two perpendicular unit vectors (all zeros, say: every slice would fall on one plane)."""
    spacing, orientation = geometry["pixel spacing"], geometry["orientation"]
    if spacing is not None and (len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0):
        raise InputError(f"{folder}: slice {Path(name).name} has pixel spacing {spacing}; it must be two positive numbers (mm)")
    if orientation is not None:
        axes = np.reshape(orientation, (2, 3)) if len(orientation) == 6 else None
        if axes is None or not np.all(np.isfinite(axes)) or np.abs(axes @ axes.T - np.eye(2)).max() > DIRECTION_ATOL:
            raise InputError(f"{folder}: slice {Path(name).name} has image orientation {orientation}; it must be two perpendicular unit vectors")


def _check_same_geometry(folder: Path, name: str, geometry: dict[str, Any], first: dict[str, Any], first_name: str) -> None:
    """Refuse slice `name` when its size, orientation or pixel spacing differs from the first slice's."""
    for key, value in geometry.items():
        ref = first[key]
        if key == "size" or value is None or ref is None or len(value) != len(ref):
            same = value == ref
        else:
            same = np.allclose(value, ref, rtol=1e-4, atol=1e-4)
        if not same:
            raise InputError(f"{folder}: slice {Path(name).name} has {key} {value}, the first slice ({first_name}) {ref}: "
                             "not one volume (a localiser or another series mixed in?)")


def _files_left_out(folder: Path, files: Sequence[str]) -> str:
    """A note naming the folder's files that the series does not include (a truncated or corrupt slice
    is one of them: GDCM leaves out what it cannot parse), or "" when there are none."""
    kept = {Path(f).name for f in files}
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in kept)
    if not others:
        return ""
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    return f"; {len(others)} file(s) of the folder are not part of the series (unreadable, or another series): {shown}"


def _one_line(exc: Exception) -> str:
    """`exc`'s message on one line (nibabel's span two: "... - could the file be damaged?")."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file/line banner; the useful text is usually the last line.
    return lines[-1] if lines else type(exc).__name__


def check_declared_size(path: Path, size: Sequence[int]) -> None:
    """Refuse, before any voxel is read, a header declaring an empty volume, more than :data:`MAX_VOXELS`
    voxels, or more voxels than its file can hold even compressed (InputError naming the file)."""
    if min(size) < 1:
        raise InputError(f"{path}: the volume is empty (size {tuple(size)})")
    voxels = int(np.prod([int(s) for s in size], dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise InputError(f"{path}: the header declares {tuple(int(s) for s in size)} = {voxels:,} voxels, more than the {MAX_VOXELS:,} flareseg reads")
    if path.is_file():
        stored = path.stat().st_size
        # gzip and zlib compress at most ~1032:1, so a file this small cannot hold the declared voxels.
        if voxels > MAX_COMPRESSION_RATIO * max(stored, 1):
            raise InputError(
                f"{path}: the header declares {tuple(int(s) for s in size)} voxels but the file has only {stored:,} bytes (truncated or corrupt file)"
            )


def _check_header(path: Path, dimension: int, size, components: int, spacing, direction, origin) -> None:
    """Validate a header before any voxel is read (dimension, size, spacing, origin, direction, declared bytes)."""
    if dimension != 3:
        raise InputError(f"{path}: expected a 3-D volume, got a {dimension}-D image of size {tuple(size)}")
    if components != 1:
        raise InputError(f"{path}: expected one value per voxel, got {components} (vector or RGB image)")
    check_declared_size(path, size)
    spacing = np.array(spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{path}: voxel spacing must be positive and finite, got {tuple(spacing.tolist())}")
    if np.any(spacing < MIN_SPACING_MM):
        raise InputError(f"{path}: voxel spacing {' x '.join(f'{s:g}' for s in spacing)} mm is below {MIN_SPACING_MM:g} mm "
                         "along an axis; a CT voxel is 0.2 mm or more: is the spacing in the header in mm (not metres)?")
    extent = spacing * np.array([int(s) for s in size], dtype=float)
    if np.any(extent > MAX_EXTENT_MM):
        raise InputError(
            f"{path}: the volume spans {' x '.join(f'{e:,.0f}' for e in extent)} mm ({tuple(int(s) for s in size)} voxels of "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm); a CT spans at most ~2,000 mm: is the spacing in the header in mm?"
        )
    origin = np.array(origin, dtype=float)
    if not np.all(np.isfinite(origin)) or np.any(np.abs(origin) > MAX_ORIGIN_MM):
        raise InputError(f"{path}: the origin must be finite and within {MAX_ORIGIN_MM:,.0f} mm of the scanner's centre, got {tuple(origin.tolist())}")
    direction = np.array(direction, dtype=float).reshape(3, 3)
    # Unit axes at right angles: a shear (|det| may still be 1) or a rescaled axis would misplace every voxel.
    if not np.all(np.isfinite(direction)) or np.abs(direction.T @ direction - np.eye(3)).max() > DIRECTION_ATOL:
        raise InputError(f"{path}: the direction matrix is not a rotation (its axes must be perpendicular unit vectors): {direction.round(4).tolist()}")


def read_image(path: str | os.PathLike, *, check_ct: bool = True) -> Volume:
    """Read a CT volume from a NIfTI/NRRD/MHA file or a DICOM series folder.

    Args:
        path: file or DICOM folder.
        check_ct: reject images whose intensities cannot be Hounsfield units.

    Returns:
        A float32 :class:`Volume` in HU.

    Raises:
        InputError: unreadable, truncated, not 3-D, bad spacing, non-finite values or non-CT intensities;
            the message names the file.
    """
    path = Path(path)
    volume = _read_volume(path)
    if not np.all(np.isfinite(volume.array)):
        raise InputError(f"{path}: the image holds non-finite values (NaN or infinity)")
    if volume.array.dtype.kind == "f" and volume.array.dtype.itemsize > 4 and np.abs(volume.array).max() > np.finfo(np.float32).max:
        raise InputError(f"{path}: the image holds values beyond the float32 range (|value| > 3.4e38); a CT in Hounsfield units spans about -1024 to 3071")
    array = volume.array.astype(np.float32, copy=False)
    if check_ct:
        lo, hi = float(array.min()), float(array.max())
        if hi - lo < CT_MIN_PLAUSIBLE_RANGE_HU:
            raise InputError(
                f"{path}: intensities span only [{lo:.3g}, {hi:.3g}]; a CT in Hounsfield units spans air (-1000) "
                "to soft tissue or bone. Is this a normalised image or a label map?"
            )
        if volume.array.dtype == np.uint8:
            raise InputError(f"{path}: an 8-bit image (values {lo:.3g}-{hi:.3g}) cannot hold Hounsfield units: a screenshot or a windowed export?")
        if hi < 0 or lo > CT_MAX_LOWEST_HU:
            raise InputError(
                f"{path}: intensities [{lo:.3g}, {hi:.3g}] are not Hounsfield units: a CT holds air, lung or fat below "
                f"{CT_MAX_LOWEST_HU:g} HU (an unrescaled or 8-bit export?)"
            )
    return replace(volume, array=array)


def read_image_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of an image from its header(s) alone: no voxel is decoded.

    A file (NIfTI, NRRD, MHA): SimpleITK's ``ImageFileReader.ReadImageInformation``; a trailing time
    axis of length 1 is dropped, as :func:`read_image` drops it. A DICOM folder: the file list of the
    series :func:`read_image` would read (the largest, in slice order) gives the slice count; the first
    slice's header gives the in-plane size and pixel spacing, and the first and last slices' positions
    the slice spacing (their distance along the slice normal over the gaps between them; a one-slice
    series, or slices without a 3-D position, keep the slice's own spacing).

    Returns:
        ((I, J, K) voxels, (I, J, K) spacing in mm), in the axis order of :class:`Volume` arrays.

    Raises:
        InputError: the path is missing, of an unsupported type, its header unreadable, or not 3-D;
            the message names the path.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = dicom_series_files(path)
        first = _header(Path(files[0]))
        three_d = first.GetDimension() == 3  # GDCM reports a slice as 3-D with one plane; 2-D is possible
        size = list(first.GetSize()[:2]) + [len(files)]
        spacing = list(first.GetSpacing()[:2]) + [first.GetSpacing()[2] if three_d else 1.0]
        if len(files) > 1 and three_d:
            last = _header(Path(files[-1]))
            normal = np.array(first.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
            gap = abs(float(np.dot(np.subtract(last.GetOrigin(), first.GetOrigin()), normal))) / (len(files) - 1)
            if gap > 0:
                spacing[2] = gap
        return (int(size[0]), int(size[1]), int(size[2])), (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder)")
    reader = _header(path)
    size, spacing = reader.GetSize(), reader.GetSpacing()
    if reader.GetDimension() == 4 and size[3] == 1:
        size, spacing = size[:3], spacing[:3]
    if len(size) != 3:
        raise InputError(f"{path}: expected a 3-D volume, got a {len(size)}-D image of size {tuple(size)}")
    return (int(size[0]), int(size[1]), int(size[2])), (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _header(path: Path) -> sitk.ImageFileReader:
    """An ImageFileReader of `path` after ReadImageInformation (the header only)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image header: {_first_line(exc)}") from None
    return reader


def read_label(path: str | os.PathLike, reference: Volume | None = None, *, reference_path: str | os.PathLike | None = None) -> Volume:
    """Read an integer label map, optionally checking it lies on `reference`'s voxel grid.

    Returns:
        A uint8 :class:`Volume` with values 0-255.

    Raises:
        InputError: unreadable, not 3-D, non-integer or out-of-range values.
        GeometryError: the grid differs from `reference`'s; the message names both files.
    """
    path = Path(path)
    volume = _read_volume(path)
    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: a label map must hold integers, found fractional or non-finite values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(f"{path}: label values must lie in 0-255, found [{array.min()}, {array.max()}]")
    volume = replace(volume, array=array.astype(np.uint8))
    if reference is not None and not volume.same_grid(reference):
        ref_name = reference_path if reference_path is not None else "the image"
        raise GeometryError(
            f"{path}: label geometry does not match {ref_name}: label {volume.describe_grid()}; "
            f"image {reference.describe_grid()}"
        )
    return volume


def read_json(path: Path, error: type[FlaresegError] = InputError, *, expect: type | None = dict) -> Any:
    """Parse a JSON file whose top level is an `expect` (a JSON object by default; None: anything).

    Raises:
        `error` naming the file: unreadable, not UTF-8 text (a binary file), invalid JSON, NaN or
        infinite numbers, or a top level of another type.
    """

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"), parse_constant=no_constants)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a JSON text file (binary content)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise error(f"{path}: invalid JSON: {exc}") from None
    if expect is not None and not isinstance(data, expect):
        kinds = {dict: "an object", list: "a list"}
        raise error(f"{path}: expected {kinds.get(expect, expect.__name__)} at the top level, got {type(data).__name__}")
    return data
