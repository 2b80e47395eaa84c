"""What is written beside a label map on request: statistics (JSON, CSV), a preview PNG, label tables.

``<output>`` ``seg.nii.gz`` gets ``seg_statistics.json``, ``seg_statistics.csv`` and ``seg_preview.png``
beside it; the label tables (:mod:`flareseg.io.label_tables`) go once into the output's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flareseg.evaluation.statistics import segmentation_statistics, statistics_csv
from flareseg.io import Volume, atomic_write_text, read_image, read_label, strip_image_suffix
from flareseg.io.label_tables import write_label_tables


def companion(output: Path, what: str) -> Path:
    """``seg.nii.gz`` + ``statistics.json`` -> ``seg_statistics.json`` in the same folder."""
    return output.with_name(f"{strip_image_suffix(output.name)}_{what}")


def write_case_outputs(
    image: str | os.PathLike | Volume,
    output: str | os.PathLike,
    *,
    statistics: bool = False,
    preview: bool = False,
    label_tables: bool = False,
) -> list[Path]:
    """Write the asked-for companions of the label map `output` of the CT `image`; returns their paths.

    Raises:
        InputError: the CT or the label map cannot be read, or they lie on different grids.
    """
    output = Path(output)
    written: list[Path] = []
    if not (statistics or preview or label_tables):
        return written
    ct = image if isinstance(image, Volume) else read_image(image)
    label = read_label(output, ct, reference_path=None if isinstance(image, Volume) else image)
    if statistics:
        stats = segmentation_statistics(label.array, ct.array, spacing=ct.spacing, origin=ct.origin, direction=ct.direction)
        written.append(atomic_write_text(companion(output, "statistics.json"), json.dumps(stats, indent=2)))
        written.append(atomic_write_text(companion(output, "statistics.csv"), statistics_csv(stats)))
    if preview:
        from flareseg.report import overlay_figure

        name = strip_image_suffix(output.name)
        written.append(overlay_figure(ct, None, label.array, companion(output, "preview.png"), title=f"{name}: flareseg segmentation"))
    if label_tables:
        written += write_label_tables(output.parent)
    return written
