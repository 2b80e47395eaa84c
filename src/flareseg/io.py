"""Volumes in and out: NIfTI, NRRD, MHA and DICOM series, with validation.

A :class:`Volume` holds a voxel array in ITK/NIfTI index order ``(I, J, K)`` (the order nibabel
returns; SimpleITK's ``GetArrayFromImage`` returns the transpose ``(K, J, I)``) together with the
physical geometry in ITK's LPS convention: ``spacing`` in mm per index axis, ``origin`` in mm of voxel
``(0, 0, 0)`` and ``direction`` a 3x3 matrix whose column ``c`` is the unit vector of index axis ``c``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import FlaresegError, GeometryError, InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CT_MIN_PLAUSIBLE_RANGE_HU = 200.0
"""A CT spans air to soft tissue or bone: an image whose intensity range is narrower is not HU."""
GEOMETRY_ATOL = 1e-3
"""Absolute tolerance (mm, or unit-less for direction) when comparing two voxel grids."""


@dataclass(frozen=True)
class Volume:
    """A 3-D voxel array with its physical geometry.

    Attributes:
        array: (I, J, K) voxel array, ITK/NIfTI index order.
        spacing: (3,) voxel size in mm along I, J, K.
        origin: (3,) LPS position in mm of voxel (0, 0, 0).
        direction: (3, 3) direction cosines; column c is index axis c in LPS.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """Return a volume on the same grid holding `array` (same shape required)."""
        if array.shape != self.array.shape:
            raise GeometryError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return replace(self, array=array)

    def same_grid(self, other: "Volume", atol: float = GEOMETRY_ATOL) -> bool:
        """True when `other` has the same shape, spacing, origin and direction within `atol`."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def describe_grid(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        org = ", ".join(f"{o:.1f}" for o in self.origin)
        return f"shape {self.shape}, spacing ({sp}) mm, origin ({org}), orientation {orientation_code(self.direction)}"

    def to_sitk(self) -> sitk.Image:
        """Return a SimpleITK image with the same voxels and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array.transpose(2, 1, 0)))
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in np.asarray(self.direction).ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Return a volume from a 3-D SimpleITK image (the array is transposed to (I, J, K))."""
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        return cls(
            array=array,
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
        )


def orientation_code(direction: np.ndarray) -> str:
    """Return the three-letter ITK/DICOM orientation code (e.g. 'LPS', 'RAS', 'PLI') of a direction matrix."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(d) for d in np.asarray(direction).ravel())
    )


def is_image_path(path: Path) -> bool:
    """True when `path` names a file of a supported volume format."""
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """Return `name` without its volume-format suffix ('case_0000.nii.gz' -> 'case_0000')."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_volume(path: Path) -> Volume:
    """Read any supported file or DICOM folder into a validated, native-dtype :class:`Volume`.

    NIfTI voxels are read with nibabel (which detects truncated files and keeps NaN, where ITK's
    reader silently yields zeros) and the geometry with SimpleITK, as every other format.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom_series(path)
        _check_header(path, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing(), image.GetDirection())
        return Volume.from_sitk(image)
    name = path.name.lower()
    if not name.endswith(IMAGE_SUFFIXES):
        raise InputError(f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image (truncated or corrupt file?): {_first_line(exc)}") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    _check_header(path, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetSpacing(), image.GetDirection())
    return Volume.from_sitk(image)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the NIfTI header (corrupt file?): {_first_line(exc)}") from None
    dim, size = reader.GetDimension(), reader.GetSize()
    spacing, direction, origin = reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin()
    if dim == 4 and size[3] == 1:  # a trailing time axis of length 1
        dim, size, spacing, origin = 3, size[:3], spacing[:3], origin[:3]
        direction = tuple(np.array(direction).reshape(4, 4)[:3, :3].ravel())
    _check_header(path, dim, size, reader.GetNumberOfComponents(), spacing, direction)
    pixdim = _nifti_raw_pixdim(path)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(f"{path}: voxel spacing is missing or not positive in the header (pixdim {tuple(pixdim.tolist())})")
    try:
        array = np.asanyarray(nib.load(str(path)).dataobj)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read the voxel data (truncated or corrupt file?): {exc}") from None
    array = np.asarray(array.reshape(tuple(size)))
    return Volume(array, tuple(float(s) for s in spacing), tuple(float(o) for o in origin), np.array(direction, dtype=float).reshape(3, 3))


def _nifti_raw_pixdim(path: Path) -> np.ndarray:
    """pixdim[1:4] exactly as stored (nibabel and ITK silently replace 0 by 1)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(540)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the NIfTI header: {exc}") from None
    for order in "<>":
        size = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return np.frombuffer(header[76:108], dtype=f"{order}f4")[1:4].astype(float)
        if size == 540:
            return np.frombuffer(header[104:168], dtype=f"{order}f8")[1:4].astype(float)
    raise InputError(f"{path}: not a NIfTI file (bad header size)")


def _read_dicom_series(folder: Path) -> sitk.Image:
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot scan the folder for DICOM series: {_first_line(exc)}") from None
    if not series_ids:
        if not any(folder.iterdir()):
            raise InputError(f"{folder}: the folder is empty")
        raise InputError(f"{folder}: no DICOM series found in the folder")
    if len(series_ids) > 1:
        # Take the series with the most slices, as a person would.
        series_ids = sorted(
            series_ids, key=lambda s: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)), reverse=True
        )
        log.warning("%s: %d DICOM series found; reading the largest (%s)", folder, len(series_ids), series_ids[0])
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read the DICOM series: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file/line banner; the useful text is usually the last line.
    return lines[-1] if lines else type(exc).__name__


def _check_header(path: Path, dimension: int, size, components: int, spacing, direction) -> None:
    if dimension != 3:
        raise InputError(f"{path}: expected a 3-D volume, got a {dimension}-D image of size {tuple(size)}")
    if components != 1:
        raise InputError(f"{path}: expected one value per voxel, got {components} (vector or RGB image)")
    if min(size) < 1:
        raise InputError(f"{path}: the volume is empty (size {tuple(size)})")
    spacing = np.array(spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{path}: voxel spacing must be positive and finite, got {tuple(spacing)}")
    direction = np.array(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > 1e-2:
        raise InputError(f"{path}: the direction matrix is not a rotation: {direction.round(4).tolist()}")


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
    array = volume.array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: the image holds non-finite values (NaN or infinity)")
    if check_ct:
        lo, hi = float(array.min()), float(array.max())
        if hi - lo < CT_MIN_PLAUSIBLE_RANGE_HU:
            raise InputError(
                f"{path}: intensities span only [{lo:.3g}, {hi:.3g}]; a CT in Hounsfield units spans air (-1000) "
                "to soft tissue or bone. Is this a normalised image or a label map?"
            )
        if hi < 0 or lo > 0:
            raise InputError(f"{path}: intensities [{lo:.3g}, {hi:.3g}] are not Hounsfield units (no air or water values)")
    return replace(volume, array=array)


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


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write `volume` atomically: a temporary file in the destination folder, then a rename.

    Args:
        volume: what to write; its array dtype and geometry are kept exactly.
        path: destination file (.nii.gz, .nii, .nrrd, .mha).

    Returns:
        The written path. A failed write leaves no file behind.
    """
    path = Path(path)
    image = volume.to_sitk()
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp's files are 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual permissions and rename it onto `path` (atomic)."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 `text` atomically; returns `path`."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))
    return Path(path)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", **savefig_kwargs)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_label(label: np.ndarray, reference: Volume, path: str | os.PathLike) -> Path:
    """Write an (I, J, K) label array in exactly `reference`'s geometry, atomically, as uint8."""
    if label.shape != reference.shape:
        raise GeometryError(f"{path}: label shape {label.shape} differs from the reference image's {reference.shape}")
    return write_volume(reference.with_array(label.astype(np.uint8)), path)


def read_json(path: Path, error: type[FlaresegError] = InputError) -> Any:
    """Parse a JSON file; invalid JSON raises `error` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON: {exc}") from None
