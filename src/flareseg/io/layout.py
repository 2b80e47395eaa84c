"""The FLARE / nnU-Net file layout: one home for case naming and case discovery.

Images are ``<case>_0000.nii.gz`` (the channel suffix of nnU-Net naming), labels and predictions
``<case>.nii.gz``; a training cohort has ``imagesTr/``, ``labelsTr/`` and ``unlabel*/`` folders; an
input folder for prediction holds image files and/or DICOM series sub-folders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from flareseg.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_CHANNEL_SUFFIX = "_0000"
"""nnU-Net's channel suffix of image file names: ``<case>_0000.nii.gz``."""
LABEL_SUFFIX = ".nii.gz"
"""Labels and predictions are ``<case>.nii.gz``."""
VOLUME_OUTPUT_TYPES: dict[str, tuple[str, ...]] = {"nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",), "mha": (".mha",)}
"""Volume formats flareseg writes, by output type; the first suffix is the one a folder run writes.
(Single files only: an .mhd header would lose its separate .raw on a rename.)"""
OUTPUT_SUFFIXES = tuple(suffix for suffixes in VOLUME_OUTPUT_TYPES.values() for suffix in suffixes)


def label_file_name(case: str) -> str:
    """The label / prediction file name of `case`: ``<case>.nii.gz``."""
    return case + LABEL_SUFFIX


def _has_image_suffix(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def is_image_path(path: Path) -> bool:
    """True when `path` names a file of a supported volume format."""
    return path.is_file() and _has_image_suffix(path)


def _further_channel(stem: str, stems: set[str]) -> bool:
    """True when `stem` is ``<case>_000N`` with N >= 1 and ``<case>_0000`` is among `stems`."""
    case, sep, channel = stem.rpartition("_")
    return bool(sep) and len(channel) == 4 and channel.isdigit() and channel != "0000" and f"{case}{IMAGE_CHANNEL_SUFFIX}" in stems


def strip_image_suffix(name: str) -> str:
    """Return `name` without its volume-format suffix ('case_0000.nii.gz' -> 'case_0000')."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_name(image_path: Path) -> str:
    """'FLARE23_0001_0000.nii.gz' -> 'FLARE23_0001' (the channel suffix of nnU-Net naming dropped); other names lose only their suffix."""
    stem = strip_image_suffix(image_path.name)
    if stem.endswith(IMAGE_CHANNEL_SUFFIX) and len(stem) > len(IMAGE_CHANNEL_SUFFIX):
        return stem[: -len(IMAGE_CHANNEL_SUFFIX)]
    return stem


def find_training_cases(data_dir: Path) -> list[tuple[str, Path, Path | None]]:
    """(case, image path, label path or None) for every training image of a FLARE-layout cohort.

    Raises:
        InputError: the folder does not exist or holds no ``imagesTr`` nor ``unlabel*`` folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: " + ("is a file, not a cohort folder" if data_dir.exists() else "no such cohort folder"))
    folders = [data_dir / "imagesTr"] if (data_dir / "imagesTr").is_dir() else []
    folders += sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name.lower().startswith("unlabel"))
    if not folders:
        raise InputError(f"{data_dir}: not a FLARE-layout cohort (expected an imagesTr/ folder and/or unlabeled*/ folders)")
    labels_dir = data_dir / "labelsTr"
    if labels_dir.exists() and not labels_dir.is_dir():
        log.warning("%s: is a file, not a folder of label maps: every case is read as unlabelled", labels_dir)
    cases = []
    for folder in folders:
        for image in image_files(folder):
            name = case_name(image)
            label = labels_dir / label_file_name(name) if folder.name == "imagesTr" else None
            cases.append((name, image, label if label is not None and label.exists() else None))
    if labels_dir.is_dir():  # a label whose image is missing or named otherwise would be dropped without a word
        used = {label.name for _, _, label in cases if label is not None}
        orphans = sorted(p.name for p in labels_dir.iterdir() if p.name.lower().endswith(LABEL_SUFFIX) and p.name not in used)
        if orphans:
            shown = ", ".join(orphans[:3]) + (f" and {len(orphans) - 3} more" if len(orphans) > 3 else "")
            log.warning("%s: %d label map(s) without an image in imagesTr/ (expected imagesTr/<case>_0000.nii.gz) are not used: %s",
                        labels_dir, len(orphans), shown)
    return cases


@dataclass(frozen=True)
class CaseInput:
    """One case of an input folder: its name, its image (file or DICOM folder) and the output file name."""

    name: str
    path: Path

    @property
    def output_name(self) -> str:
        """The default (NIfTI) output file name, ``<case>.nii.gz``."""
        return self.output_name_with(LABEL_SUFFIX)

    def output_name_with(self, suffix: str) -> str:
        """The output file name for an output type's `suffix` (``.nrrd``, ``.dcm``, ...): ``<case><suffix>``."""
        return self.name + suffix


def is_dicom_folder(folder: Path) -> bool:
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return False


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_path(p) and not p.name.startswith("."))


def is_single_series(folder: Path) -> bool:
    """True when `folder` is itself one DICOM series (and holds no image file): one case, not a batch."""
    return not image_files(folder) and is_dicom_folder(folder)


def find_cases(input_dir: str | os.PathLike) -> list[CaseInput]:
    """The cases of an input folder, sorted by name.

    Every image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``) is a case, and so is every
    sub-folder holding a DICOM series. A folder that is itself a DICOM series (and holds no image
    file) is one case named after the folder. Other files are ignored, except two kinds that are
    named in a warning rather than lost silently: a link named like an image whose target is missing
    stays a case (it fails by name when read), and a further input channel of a case in nnU-Net naming
    (``<case>_0001.nii.gz`` beside ``<case>_0000.nii.gz``) is skipped: flareseg reads one CT channel.

    Raises:
        InputError: the folder does not exist or holds no case.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    if is_single_series(input_dir):
        return [CaseInput(input_dir.name, input_dir)]
    entries = sorted(p for p in input_dir.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if is_image_path(p)]
    dangling = [p for p in entries if p.is_symlink() and not p.exists() and _has_image_suffix(p)]
    if dangling:
        log.warning("%s: %d link(s) to missing files, each reported as a failed case: %s", input_dir, len(dangling), ", ".join(p.name for p in dangling[:5]))
    stems = {p: strip_image_suffix(p.name) for p in files}
    present = set(stems.values())
    extra = [p for p in files if _further_channel(stems[p], present)]
    if extra:
        log.warning(
            "%s: skipped %d further input channel(s) in nnU-Net naming (flareseg reads one CT channel, <case>_0000): %s",
            input_dir, len(extra), ", ".join(p.name for p in extra[:5]),
        )
    folders = [p for p in entries if p.is_dir()]
    cases = [CaseInput(case_name(p), p) for p in files if p not in extra] + [CaseInput(case_name(p), p) for p in dangling]
    cases += [CaseInput(p.name, p) for p in folders if is_dicom_folder(p)]
    if not cases:
        raise InputError(f"{input_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) or DICOM series found")
    return sorted(cases, key=lambda c: c.name)
