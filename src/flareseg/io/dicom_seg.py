"""DICOM SEG output (the ``dicom`` extra: highdicom, pydicom): a label map as a binary Segmentation
object that references its source CT series.

One segment per label present, described by its SNOMED CT code (:data:`flareseg.labels.SNOMED_TYPES`;
paired organs with a laterality modifier), category organ or morphologically abnormal structure, and
the algorithm (flareseg, its version, the models). The mask's frames follow the series' slices as
:func:`flareseg.io.read_image` reads them, so the SEG equals the NIfTI output voxel for voxel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flareseg.errors import InputError
from flareseg.io.atomic import atomic_output
from flareseg.io.read import dicom_series_files
from flareseg.labels import BY_ID, LESION, SNOMED_LATERALITY, SNOMED_TYPES

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _libraries():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise InputError("DICOM SEG output needs highdicom and pydicom: pip install 'flareseg[dicom]'") from None
    return highdicom, pydicom


def _source(pydicom, path: str):
    """A slice's header as a SEG references it; the SOP UIDs of an emptied dataset come from its file meta."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if not ds.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet  # empty: the default repertoire
    return ds


def _description(hd, number: int, label_id: int, algorithm):
    from pydicom.sr.codedict import codes

    code, meaning, laterality = SNOMED_TYPES[label_id]
    category = codes.SCT.MorphologicallyAbnormalStructure if label_id == LESION else codes.SCT.Organ
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=BY_ID[label_id].name,
        segmented_property_category=category,
        segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    if laterality is not None:
        modifier = hd.sr.CodedConcept(SNOMED_LATERALITY[laterality], "SCT", laterality)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def dicom_seg_sources(series: str | os.PathLike, output: str | os.PathLike) -> list:
    """The headers of `series`' slices (in :func:`flareseg.io.read_image`'s order) that a SEG written to
    `output` references; checks first that a SEG can be written at all.

    Raises:
        InputError: highdicom or pydicom is missing, `series` is not a DICOM series folder, or a slice
            lacks a UID the SEG must reference (the message names the slice and the UIDs).
    """
    _, pydicom = _libraries()
    series = Path(series)
    if not series.is_dir():
        raise InputError(f"{output}: DICOM SEG output needs a DICOM series as input; {series} is a file")
    sources = [_source(pydicom, f) for f in dicom_series_files(series)]
    for ds in sources:
        missing = [uid for uid in REQUIRED_UIDS if not getattr(ds, uid, None)]
        if missing:
            raise InputError(f"{series}: slice {Path(ds.filename).name} lacks {', '.join(missing)} (an anonymised export?): a DICOM SEG cannot reference it")
    return sources


def read_dicom_seg(path: str | os.PathLike, series: str | os.PathLike) -> np.ndarray:
    """A SEG written by :func:`write_dicom_seg` read back as an (I, J, K) uint8 FLARE label map on `series`' grid.

    Segments are identified by their label (the class names of :mod:`flareseg.labels`).

    Raises:
        InputError: the file is not a Segmentation of `series`, or a segment's label is not a FLARE class.
    """
    hd, pydicom = _libraries()
    from flareseg.labels import BY_NAME

    uids = [ds.SOPInstanceUID for ds in dicom_seg_sources(series, path)]
    try:
        seg = hd.seg.segread(path)
        numbers = list(seg.get_segment_numbers())
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=False)
    except (OSError, ValueError, AttributeError, KeyError) as exc:
        raise InputError(f"{path}: not a DICOM SEG of the series {series} ({type(exc).__name__}: {exc})") from None
    out = np.zeros(pixels.shape[:3], np.uint8)
    for k, number in enumerate(numbers):
        name = seg.get_segment_description(number).segment_label
        if name not in BY_NAME:
            raise InputError(f"{path}: segment {number} is {name!r}, not a flareseg label")
        out[pixels[..., k] > 0] = BY_NAME[name].id
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def write_dicom_seg(
    label: np.ndarray, series: str | os.PathLike, output: str | os.PathLike, *, version: str, models: Sequence[str] = ()
) -> Path:
    """Write the (I, J, K) label map `label` (on `series`' grid as read_image reads it) as a DICOM SEG.

    Raises:
        InputError: `series` is not a DICOM series, a slice lacks a UID the SEG must reference, the
            label map does not fit the series, or it holds no label (an empty SEG is not valid).
    """
    hd, pydicom = _libraries()
    series, output = Path(series), Path(output)
    sources = dicom_seg_sources(series, output)
    mask = np.ascontiguousarray(label.transpose(2, 1, 0))  # (slices, rows, columns), the series' order
    if mask.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise InputError(f"{output}: the label map {label.shape} does not fit the series {series} ({len(sources)} slices)")
    present = [int(v) for v in np.unique(mask) if v]
    if not present:
        raise InputError(f"{output}: the label map is empty; a DICOM SEG needs at least one segment (write .nii.gz instead)")
    numbered = np.zeros_like(mask)
    for number, label_id in enumerate(present, start=1):
        numbered[mask == label_id] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="flareseg" + (f" ({', '.join(models)})" if models else ""), family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"), version=version
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(hd, n, i, algorithm) for n, i in enumerate(present, start=1)],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="flareseg",
        manufacturer_model_name="flareseg two-step FLARE23 segmentation",
        software_versions=version,
        device_serial_number="none",
        series_description="flareseg segmentation",
    )
    with atomic_output(output, verify=lambda tmp: pydicom.dcmread(tmp)) as tmp:
        seg.save_as(tmp)
    return output
