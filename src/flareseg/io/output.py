"""Output paths decided before any work: what will be written, and whether it can be.

A prediction that runs for minutes must not end in a traceback because its output path was unusable,
nor overwrite its input. :func:`check_output_file` and :func:`check_output_folder` raise
:class:`~flareseg.errors.InputError` naming the path and the problem; :func:`is_complete_volume`
tells a finished output from a truncated or empty one without decoding it.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

from flareseg.errors import InputError
from flareseg.io.layout import OUTPUT_SUFFIXES, VOLUME_OUTPUT_TYPES

DICOM_SEG_SUFFIX = ".dcm"
"""An output path ending so is written as a DICOM SEG object (:mod:`flareseg.io.dicom_seg`)."""
DICOM_SEG = "dicom-seg"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
"""DICOM's Segmentation Storage SOP class."""
OUTPUT_TYPES: dict[str, tuple[str, ...]] = {**VOLUME_OUTPUT_TYPES, DICOM_SEG: (DICOM_SEG_SUFFIX,)}
"""Output type -> the suffixes that name it; the first is the one a folder run writes."""

_NIFTI_BYTES_PER_VOXEL = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
"""NIfTI-1 datatype code -> bytes per voxel (uint8, int16, int32, float32, float64, int8, uint16, uint32, int64, uint64)."""


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_input(output: Path, source: Path | None) -> None:
    """An output that is the input (the same file through any path or link) would destroy it."""
    if source is not None and (_same_path(output, source) or output.resolve() == source.resolve()):
        raise InputError(f"{output}: the output is the input {source}; choose another output path")


def _check_writable_folder(folder: Path, output: Path) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{output}: cannot create it: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{output}: cannot write there: {probe} is not writable (read-only file system or permissions)")


def output_type_of(path: str | os.PathLike) -> str | None:
    """The output type (a key of :data:`OUTPUT_TYPES`) that `path`'s suffix names, or None."""
    name = Path(path).name.lower()
    return next((kind for kind, suffixes in OUTPUT_TYPES.items() if name.endswith(suffixes)), None)


def check_output_type(output_type: str | None) -> str | None:
    """`output_type` itself when it is None or a known type.

    Raises:
        InputError: an unknown output type (the message lists the known ones).
    """
    if output_type is not None and output_type not in OUTPUT_TYPES:
        raise InputError(f"unknown output type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
    return output_type


def check_dicom_seg_source(source: str | os.PathLike | None, output: Path) -> None:
    """A DICOM SEG needs a DICOM series whose slices carry the UIDs it references, and highdicom.

    Raises:
        InputError: `source` is not a DICOM series folder (a file, a volume in memory), a slice lacks a
            UID, or the ``dicom`` extra is not installed.
    """
    if source is None or not Path(source).is_dir():
        raise InputError(f"{output}: a DICOM SEG output needs a DICOM series as input (it references the series' slices); write .nii.gz for {source or 'a volume'}")
    from flareseg.io.dicom_seg import dicom_seg_sources

    dicom_seg_sources(source, output)


def check_output_file(output: str | os.PathLike, *, source: str | os.PathLike | None = None, output_type: str | None = None) -> Path:
    """Check that a single label map can be written at `output`; returns it as a Path.

    The output type is `output`'s suffix (:data:`OUTPUT_TYPES`); `output_type`, when given, must agree
    with it. ``.dcm`` asks for a DICOM SEG, which needs a DICOM series `source` whose slices carry
    their UIDs (checked here, before any work).

    Raises:
        InputError: `output` is the input, an existing folder, has no or an unknown suffix, a suffix
            that names another type than `output_type`, is a DICOM SEG for an input that is not a
            DICOM series or a series without its UIDs, or lies under a file or a read-only folder.
    """
    output = Path(output)
    check_output_type(output_type)
    _refuse_input(output, None if source is None else Path(source))
    if output.is_dir():
        raise InputError(f"{output}: is an existing folder; for a single input give a file name such as {output / 'case.nii.gz'}")
    kind = output_type_of(output)
    if kind is None:
        hint = f"; for output type {output_type} name it {output.name}{OUTPUT_TYPES[output_type][0]}" if output_type else ""
        raise InputError(
            f"{output}: unknown output type {output.suffix or '(no suffix)'!r}; the label map is written as one of "
            f"{', '.join(OUTPUT_SUFFIXES)}, or {DICOM_SEG_SUFFIX} (DICOM SEG) for a DICOM series input{hint}"
        )
    if output_type is not None and kind != output_type:
        raise InputError(
            f"{output}: its suffix means output type {kind} but output type {output_type} was asked for; "
            f"name it with {' or '.join(OUTPUT_TYPES[output_type])} or leave the output type to the suffix"
        )
    _check_writable_folder(output.parent, output)
    if kind == DICOM_SEG:
        check_dicom_seg_source(source, output)
    return output


def check_output_folder(output: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Path:
    """Check that an output folder (of label maps, tables, a model) can be written at `output`;
    returns it as a Path.

    Raises:
        InputError: `output` is the input folder `source`, an existing file, or lies under a file or a
            read-only folder.
    """
    output = Path(output)
    if source is not None and (output.resolve() == Path(source).resolve() or _same_path(output, Path(source))):
        raise InputError(f"{output}: the output folder must differ from the input folder (outputs would be read as inputs)")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: is a file; the output here is a folder (give a new or existing folder)")
    _check_writable_folder(output, output)
    return output


def is_complete_volume(path: str | os.PathLike) -> bool:
    """True when `path` is a non-empty volume file whose stored data are whole (not truncated).

    NIfTI is checked without decoding: an uncompressed file must be as long as its header says, a
    gzipped one must end in the gzip trailer whose size field equals the header's data size. Other
    formats are read through SimpleITK.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if size == 0 or not path.is_file():
        return False
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            with gzip.open(path, "rb") as fh:
                expected = _nifti1_total_bytes(fh.read(352))
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                stored = struct.unpack("<I", raw.read(4))[0]
            return expected is not None and stored == expected % 2**32
        if name.endswith(".nii"):
            with open(path, "rb") as fh:
                expected = _nifti1_total_bytes(fh.read(352))
            return expected is not None and size >= expected
        if name.endswith(DICOM_SEG_SUFFIX):  # written atomically and verified: whole when it parses
            import pydicom

            return pydicom.dcmread(path).SOPClassUID == SEGMENTATION_SOP_CLASS
        import SimpleITK as sitk

        sitk.ReadImage(str(path))
        return True
    except Exception:  # any failure to read means not complete
        return False


def _nifti1_total_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes of a NIfTI-1 header, or None when it is not one."""
    if len(header) < 348:
        return None
    for order in "<>":
        if struct.unpack(f"{order}i", header[:4])[0] != 348:
            continue
        dims = struct.unpack(f"{order}8h", header[40:56])
        datatype = struct.unpack(f"{order}h", header[70:72])[0]
        vox_offset = int(struct.unpack(f"{order}f", header[108:112])[0])
        per_voxel = _NIFTI_BYTES_PER_VOXEL.get(datatype)
        if per_voxel is None or not 1 <= dims[0] <= 7:
            return None
        count = 1
        for d in dims[1 : dims[0] + 1]:
            count *= max(int(d), 1)
        return vox_offset + count * per_voxel
    return None
