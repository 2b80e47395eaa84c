"""Cohort preparation: scan a FLARE-layout cohort, record labels per case, build the paper's training sets.

Layout read (DESIGN section 2): ``imagesTr/<case>_0000.nii.gz`` with ``labelsTr/<case>.nii.gz`` (a
case without a label file counts as unlabelled), plus any folder whose name starts with ``unlabel``
holding images only. The organ set is every case with all 13 organs labelled, the tumour set every
case with lesion voxels (label 14); each is split 8:2 with a fixed seed. The foreground intensity
fingerprint (DESIGN section 3) is computed per model from its training cases, as nnU-Net computes it
for a dataset: the organ model's from the organ voxels of the cases that train it, the tumour model's
from the lesion voxels of the cases that train it (so its window is the soft-tissue range lesions
lie in, not the air-to-bone range of the organs' stomach gas). No torch here.

Partial labels: a class is *labelled* in a case when its label map holds it (FLARE's partial labels
mark what was annotated). The manifest also holds the sets of ``case_selection="partial"``:
``organ_partial`` trains on every case with at least one organ labelled, ``tumor_partial`` on every
case with lesions labelled; both validate on the paper's held-out cases (the validation sets do not
change, so the selections compare on the same cases). A pseudo-label folder
(:mod:`flareseg.data.pseudo`, ``pseudo_labels=``) is another label source: an accepted case's
training label becomes the pseudo-label file (its human labels plus the teacher's), and its
``labelled`` classes are the human ones plus ``teacher_labels``. The regimes, the paper's sets and
the fingerprint stay those of the human labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flareseg.config import Fingerprint, to_dict
from flareseg.data.pseudo import PseudoLabel, read_pseudo_labels
from flareseg.errors import FlaresegError, InputError
from flareseg.io import Volume, atomic_write_bytes, find_training_cases, orientation_code, read_image, read_label
from flareseg.io.output import check_output_folder
from flareseg.labels import LESION, ORGAN_IDS
from flareseg.transforms.preprocessing import compute_fingerprint, sample_foreground

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
REGIMES = ("full", "lesion", "partial", "none")
"""Label regimes: all 13 organs; lesions only; some organs; no label."""
FINGERPRINT_IDS = {"organ": ORGAN_IDS, "tumor": (LESION,)}
"""Per task, the label ids whose voxels make its model's intensity fingerprint (its foreground)."""
VAL_FRACTION = 0.2


@dataclass
class CaseRecord:
    """What `prepare` learnt about one case (a row of the manifest).

    ``label`` is the file training reads (the pseudo-label file when the case has one, else the
    human label); ``labels_present`` and ``regime`` describe the human label (``human_label``);
    ``labelled`` is every class labelled for training (human + ``teacher_labels``).
    """

    case: str
    image: str
    label: str | None
    labels_present: list[int] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    teacher_labels: list[int] = field(default_factory=list)
    human_label: str | None = None
    regime: str = "none"
    shape: list[int] | None = None
    spacing: list[float] | None = None
    orientation: str | None = None
    problem: str | None = None


def regime_of(labels_present: set[int]) -> str:
    """Classify a case by the label ids its label map holds."""
    organs = labels_present & set(ORGAN_IDS)
    if organs == set(ORGAN_IDS):
        return "full"
    if organs:
        return "partial"
    if LESION in labels_present:
        return "lesion"
    return "none"


def _inspect_case(name: str, image_path: Path, label_path: Path | None) -> tuple[CaseRecord, Volume | None, Volume | None]:
    record = CaseRecord(case=name, image=str(image_path.resolve()), label=str(label_path.resolve()) if label_path else None)
    try:
        image = read_image(image_path)
        record.shape, record.spacing = list(image.shape), [round(s, 5) for s in image.spacing]
        record.orientation = orientation_code(image.direction)
        label = None
        if label_path is not None:
            label = read_label(label_path, image, reference_path=image_path)
            record.labels_present = sorted(int(v) for v in np.unique(label.array) if v != 0)
            _check_ids(label_path, record.labels_present)
        record.labelled = list(record.labels_present)
        record.human_label = record.label
        record.regime = regime_of(set(record.labels_present))
        return record, image, label
    except FlaresegError as exc:
        record.problem = str(exc)
        return record, None, None


def _check_ids(path: Path, ids: list[int]) -> None:
    unknown = [v for v in ids if v > LESION]
    if unknown:
        raise InputError(f"{path}: label ids {unknown} are outside the FLARE schema (0-{LESION})")


def _apply_pseudo_label(record: CaseRecord, image: Volume, image_path: Path, pseudo: PseudoLabel) -> None:
    """Make `pseudo`'s file the case's training label: check its grid and ids, record the labelled classes.

    Raises:
        GeometryError: the pseudo-label is not on the case image's grid (the message names both files).
        InputError: label ids outside 0-14.
    """
    label = read_label(pseudo.label, image, reference_path=image_path)
    _check_ids(pseudo.label, sorted(int(v) for v in np.unique(label.array) if v != 0))
    record.label = str(pseudo.label.resolve())
    record.teacher_labels = list(pseudo.teacher_classes)
    record.labelled = sorted(set(record.labels_present) | set(pseudo.teacher_classes))


def partial_split(records: list["CaseRecord"], ids: set[int], val: list[str]) -> dict[str, list[str]]:
    """The ``case_selection="partial"`` set: every case labelling one of `ids`, except the cases of `val`, which it keeps."""
    held_out = set(val)
    return {"train": sorted(r.case for r in records if set(r.labelled) & ids and r.case not in held_out), "val": list(val)}


def split_cases(names: list[str], *, seed: int, val_fraction: float = VAL_FRACTION) -> dict[str, list[str]]:
    """Shuffle `names` with `seed` and split them train:val = (1 - val_fraction):val_fraction.

    At least one validation case when there are two or more cases.
    """
    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    if len(order) >= 2:
        n_val = max(1, n_val)
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}


@dataclass(frozen=True)
class PreparedCohort:
    """The result of :func:`prepare_cohort` (also written as manifest.json)."""

    source: str
    seed: int
    cases: list[CaseRecord]
    organ: dict[str, list[str]]
    tumor: dict[str, list[str]]
    fingerprints: dict[str, Fingerprint]
    """Per task (``organ``, ``tumor``) the normalisation of its model; a task without labelled training voxels has none."""
    organ_partial: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "val": []})
    tumor_partial: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "val": []})
    pseudo_labels: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "seed": self.seed,
                "fingerprints": {task: to_dict(fp) for task, fp in self.fingerprints.items()},
                "regime_counts": self.regime_counts(),
                "organ": self.organ,
                "tumor": self.tumor,
                "organ_partial": self.organ_partial,
                "tumor_partial": self.tumor_partial,
                "pseudo_labels": self.pseudo_labels,
                "problems": {c.case: c.problem for c in self.cases if c.problem},
                "cases": [asdict(c) for c in self.cases],
            },
            indent=1,
        )

    def regime_counts(self) -> dict[str, int]:
        counts = {r: 0 for r in REGIMES}
        for c in self.cases:
            if c.problem is None:
                counts[c.regime] += 1
        return counts

    def summary(self) -> str:
        """A readable summary table of counts per regime, the training sets and the problems."""
        counts = self.regime_counts()
        lines = [f"Cohort {self.source}: {len(self.cases)} cases scanned", "", f"{'regime':<34}{'cases':>6}"]
        described = {
            "full": "all 13 organs labelled",
            "lesion": "lesions only",
            "partial": "some organs labelled",
            "none": "no label",
        }
        for regime in REGIMES:
            lines.append(f"{regime + ' (' + described[regime] + ')':<34}{counts[regime]:>6}")
        bad = [c for c in self.cases if c.problem]
        lines.append(f"{'skipped (problem)':<34}{len(bad):>6}")
        lines += [
            "",
            f"{'training set':<34}{'train':>6}{'val':>6}",
            f"{'organ model (all 13 organs)':<34}{len(self.organ['train']):>6}{len(self.organ['val']):>6}",
            f"{'tumour model (lesions labelled)':<34}{len(self.tumor['train']):>6}{len(self.tumor['val']):>6}",
            f"{'organ, partial (any organ)':<34}{len(self.organ_partial['train']):>6}{len(self.organ_partial['val']):>6}",
            f"{'tumour, partial (+ pseudo)':<34}{len(self.tumor_partial['train']):>6}{len(self.tumor_partial['val']):>6}",
        ]
        if self.pseudo_labels:
            teacher = sum(1 for c in self.cases if c.teacher_labels)
            lines.append(f"\npseudo-labels from {self.pseudo_labels}: {teacher} case(s) with teacher classes")
        if self.fingerprints:
            lines.append("")
        for task, fp in self.fingerprints.items():
            lines.append(
                f"{task} model's foreground fingerprint (HU): 0.5%={fp.percentile_00_5:.1f} 99.5%={fp.percentile_99_5:.1f} "
                f"mean={fp.mean:.1f} std={fp.std:.1f}"
            )
        for c in bad:
            lines.append(f"SKIPPED {c.case}: {c.problem}")
        return "\n".join(lines)


def prepare_cohort(
    data_dir: str | Path, out_dir: str | Path, *, seed: int = 0, progress: bool = True, pseudo_labels: str | Path | None = None
) -> PreparedCohort:
    """Scan a FLARE-layout cohort, select and split the organ and tumour sets, write ``manifest.json``.

    A case that cannot be read, or whose label does not fit its image, is recorded with its problem
    and skipped; the others are prepared.

    Args:
        pseudo_labels: a folder written by ``flareseg pseudolabel`` for this cohort (see
            :mod:`flareseg.data.pseudo`): its accepted cases train on their pseudo-label files.

    Raises:
        InputError: the cohort folder is missing or not FLARE-layout; a bad pseudo-label folder (no
            provenance, a case not in the cohort, a missing label file, ids outside 0-14); `out_dir` is a
            file or not writable.
        GeometryError: a pseudo-label file not on its case image's grid.
        On an error nothing is written.
    """
    data_dir, out_dir = Path(data_dir), check_output_folder(out_dir)
    found = find_training_cases(data_dir)
    pseudo = read_pseudo_labels(pseudo_labels, {name for name, _, _ in found}) if pseudo_labels is not None else {}
    records: list[CaseRecord] = []
    samples: dict[str, dict[str, np.ndarray]] = {}
    for index, (name, image_path, label_path) in enumerate(tqdm(found, desc="prepare", unit="case", disable=not progress)):
        record, image, label = _inspect_case(name, image_path, label_path)
        records.append(record)
        if record.problem:
            log.warning("skipping %s: %s", name, record.problem)
            continue
        if image is not None and label is not None and record.labels_present:
            samples[name] = {task: sample_foreground(image.array, label.array, ids, seed=seed + index) for task, ids in FINGERPRINT_IDS.items()}
        if name in pseudo and image is not None:
            _apply_pseudo_label(record, image, image_path, pseudo[name])
    unused = sorted(set(pseudo) - {r.case for r in records if r.problem is None})
    if unused:
        log.warning("pseudo-labels of case(s) %s not used: the case has a problem", unused[:5])
    good = [r for r in records if r.problem is None]
    organ = split_cases([r.case for r in good if r.regime == "full"], seed=seed)
    tumor = split_cases([r.case for r in good if LESION in r.labels_present], seed=seed)
    organ_partial = partial_split(good, set(ORGAN_IDS), organ["val"])
    tumor_partial = partial_split(good, {LESION}, tumor["val"])
    fingerprints = {}
    # The partial split's training cases hold the paper split's (every case labelling a class of the task).
    for task, split in (("organ", organ_partial), ("tumor", tumor_partial)):
        pooled = [samples[n][task] for n in sorted(split["train"]) if n in samples]
        if sum(p.size for p in pooled):
            fingerprints[task] = compute_fingerprint(np.concatenate(pooled))
        else:
            log.warning("no labelled %s training voxel: no intensity fingerprint for the %s model", task, task)
    cohort = PreparedCohort(
        str(data_dir.resolve()), seed, records, organ, tumor, fingerprints, organ_partial, tumor_partial,
        str(Path(pseudo_labels).resolve()) if pseudo_labels is not None else None,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / MANIFEST_FILE, cohort.to_json().encode())
    return cohort
