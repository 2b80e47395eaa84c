"""What is written beside a label map on request: statistics (JSON, CSV), a preview PNG, label tables.

``<output>`` ``seg.nii.gz`` gets ``seg_statistics.json``, ``seg_statistics.csv`` and ``seg_preview.png``
beside it; the label tables (:mod:`flareseg.io.label_tables`) go once into the output's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flareseg.evaluation.statistics import segmentation_statistics, statistics_csv
from flareseg.io import Volume, atomic_write_text, read_image, read_label
from flareseg.io.label_tables import write_label_tables
from flareseg.io.output import DICOM_SEG, OUTPUT_TYPES, output_type_of


PREVIEW_VIEWS = ("axial", "coronal", "sagittal")
"""The rows of ``<output>_preview.png``, as TotalSegmentator's preview shows them."""


def output_stem(output: Path) -> str:
    """``seg.nii.gz``, ``seg.nrrd``, ``seg.dcm`` -> ``seg``: the name without its output type's suffix."""
    kind = output_type_of(output)
    suffix = next((s for s in OUTPUT_TYPES[kind] if output.name.lower().endswith(s)), "") if kind else ""
    return output.name[: len(output.name) - len(suffix)]


def companion(output: Path, what: str) -> Path:
    """``seg.nii.gz`` (or ``seg.nrrd``, ``seg.dcm``) + ``statistics.json`` -> ``seg_statistics.json`` in the same folder."""
    return output.with_name(f"{output_stem(output)}_{what}")


def write_case_outputs(
    image: str | os.PathLike | Volume,
    output: str | os.PathLike,
    *,
    statistics: bool = False,
    preview: bool = False,
    label_tables: bool = False,
) -> list[Path]:
    """Write the asked-for companions of the label map `output` of the CT `image`; returns their paths.

    `output` is any output type; a DICOM SEG is read back on its series `image` (:func:`flareseg.io.dicom_seg.read_dicom_seg`).

    Raises:
        InputError: the CT or the label map cannot be read, or they lie on different grids.
    """
    output = Path(output)
    written: list[Path] = []
    if not (statistics or preview or label_tables):
        return written
    ct = image if isinstance(image, Volume) else read_image(image)
    if output_type_of(output) == DICOM_SEG:
        from flareseg.io.dicom_seg import read_dicom_seg

        label = ct.with_array(read_dicom_seg(output, image))
    else:
        label = read_label(output, ct, reference_path=None if isinstance(image, Volume) else image)
    if statistics:
        stats = segmentation_statistics(label.array, ct.array, spacing=ct.spacing, origin=ct.origin, direction=ct.direction)
        written.append(atomic_write_text(companion(output, "statistics.json"), json.dumps(stats, indent=2)))
        written.append(atomic_write_text(companion(output, "statistics.csv"), statistics_csv(stats)))
    if preview:
        from flareseg.report import overlay_figure

        name = output_stem(output)
        written.append(overlay_figure(ct, None, label.array, companion(output, "preview.png"), title=f"{name}: flareseg segmentation",
                                      views=PREVIEW_VIEWS))
    if label_tables:
        written += write_label_tables(output.parent)
    return written
