"""Volumes in and out: voxel grids, validated readers, atomic verified writers, the FLARE file layout."""

from flareseg.io.atomic import atomic_output, atomic_write_bytes, atomic_write_text, remove_stale_temporaries, save_figure
from flareseg.io.layout import (
    IMAGE_SUFFIXES,
    OUTPUT_SUFFIXES,
    CaseInput,
    case_name,
    find_cases,
    find_training_cases,
    image_files,
    is_image_path,
    is_single_series,
    label_file_name,
    strip_image_suffix,
)
from flareseg.io.read import read_image, read_image_header, read_json, read_label
from flareseg.io.volume import GEOMETRY_ATOL, Grid, Volume, orientation_code
from flareseg.io.write import write_label, write_volume

__all__ = [
    "GEOMETRY_ATOL", "IMAGE_SUFFIXES", "OUTPUT_SUFFIXES", "CaseInput", "Grid", "Volume", "atomic_output",
    "atomic_write_bytes", "atomic_write_text", "case_name", "find_cases", "find_training_cases", "image_files",
    "is_image_path", "is_single_series", "label_file_name", "orientation_code", "read_image", "read_image_header", "read_json",
    "read_label", "remove_stale_temporaries", "save_figure", "strip_image_suffix", "write_label", "write_volume",
]
