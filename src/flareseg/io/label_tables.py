"""Label description files for viewers, written from the one label schema (:mod:`flareseg.labels`).

- 3D Slicer colour table (``.ctbl``): ``id name R G B A`` per line, names without spaces.
- ITK-SNAP label description (``.txt``): ``IDX -R- -G- -B- -A-- VIS MSH "LABEL"`` per line.
"""

from __future__ import annotations

import os
from pathlib import Path

from flareseg.io.atomic import atomic_write_text
from flareseg.labels import LABELS

LABEL_TABLE_NAMES = {"slicer": "flareseg_labels.ctbl", "itksnap": "flareseg_labels_itksnap.txt"}
"""File name of each label table, written beside the outputs."""


def slicer_color_table() -> str:
    """The labels as a 3D Slicer colour table (background transparent)."""
    lines = ["# flareseg FLARE23 labels: 3D Slicer color table", f"# {len(LABELS)} values"]
    for c in LABELS:
        alpha = 0 if c.id == 0 else 255
        lines.append(f"{c.id} {c.name.replace(' ', '_')} {c.color[0]} {c.color[1]} {c.color[2]} {alpha}")
    return "\n".join(lines) + "\n"


def itksnap_label_description() -> str:
    """The labels as an ITK-SNAP label description file (background hidden)."""
    lines = ["################################################", "# ITK-SnAP Label Description File (flareseg FLARE23 labels)",
             "# Columns: IDX -R- -G- -B- -A-- VIS MSH LABEL", "################################################"]
    for c in LABELS:
        visible = 0 if c.id == 0 else 1
        name = "Clear Label" if c.id == 0 else c.name
        lines.append(f'{c.id:5d} {c.color[0]:5d} {c.color[1]:5d} {c.color[2]:5d} {float(visible):8.2f} {visible:2d} {visible:2d}    "{name}"')
    return "\n".join(lines) + "\n"


def write_label_tables(folder: str | os.PathLike) -> list[Path]:
    """Write both label tables into `folder` (atomically); returns their paths."""
    folder = Path(folder)
    return [
        atomic_write_text(folder / LABEL_TABLE_NAMES["slicer"], slicer_color_table()),
        atomic_write_text(folder / LABEL_TABLE_NAMES["itksnap"], itksnap_label_description()),
    ]
