"""Cohort preparation: scan a FLARE-layout cohort, record labels per case, build the paper's training sets.

Layout read (DESIGN section 2): ``imagesTr/<case>_0000.nii.gz`` with ``labelsTr/<case>.nii.gz`` (a
case without a label file counts as unlabelled), plus any folder whose name starts with ``unlabel``
holding images only. The organ set is every case with all 13 organs labelled, the tumour set every
case with lesion voxels (label 14); each is split 8:2 with a fixed seed. The foreground intensity
fingerprint (DESIGN section 3) is computed from the training splits. No torch here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flareseg.config import Fingerprint, to_dict
from flareseg.errors import FlaresegError, InputError
from flareseg.io import Volume, atomic_write_bytes, find_training_cases, orientation_code, read_image, read_label
from flareseg.labels import LESION, ORGAN_IDS
from flareseg.transforms.preprocessing import compute_fingerprint, sample_foreground

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
REGIMES = ("full", "lesion", "partial", "none")
"""Label regimes: all 13 organs; lesions only; some organs; no label."""
VAL_FRACTION = 0.2


@dataclass
class CaseRecord:
    """What `prepare` learnt about one case (a row of the manifest)."""

    case: str
    image: str
    label: str | None
    labels_present: list[int] = field(default_factory=list)
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
            unknown = [v for v in record.labels_present if v > LESION]
            if unknown:
                raise InputError(f"{label_path}: label ids {unknown} are outside the FLARE schema (0-{LESION})")
        record.regime = regime_of(set(record.labels_present))
        return record, image, label
    except FlaresegError as exc:
        record.problem = str(exc)
        return record, None, None


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
    fingerprint: Fingerprint | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "seed": self.seed,
                "fingerprint": to_dict(self.fingerprint) if self.fingerprint else None,
                "regime_counts": self.regime_counts(),
                "organ": self.organ,
                "tumor": self.tumor,
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
        ]
        if self.fingerprint:
            fp = self.fingerprint
            lines.append(
                f"\nForeground fingerprint (HU): 0.5%={fp.percentile_00_5:.1f} 99.5%={fp.percentile_99_5:.1f} "
                f"mean={fp.mean:.1f} std={fp.std:.1f}"
            )
        for c in bad:
            lines.append(f"SKIPPED {c.case}: {c.problem}")
        return "\n".join(lines)


def prepare_cohort(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0, progress: bool = True) -> PreparedCohort:
    """Scan a FLARE-layout cohort, select and split the organ and tumour sets, write ``manifest.json``.

    A case that cannot be read, or whose label does not fit its image, is recorded with its problem
    and skipped; the others are prepared.

    Raises:
        InputError: the cohort folder is missing or not FLARE-layout.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    found = find_training_cases(data_dir)
    records: list[CaseRecord] = []
    samples: dict[str, np.ndarray] = {}
    for index, (name, image_path, label_path) in enumerate(tqdm(found, desc="prepare", unit="case", disable=not progress)):
        record, image, label = _inspect_case(name, image_path, label_path)
        records.append(record)
        if record.problem:
            log.warning("skipping %s: %s", name, record.problem)
        elif image is not None and label is not None and record.labels_present:
            samples[name] = sample_foreground(image.array, label.array, seed=seed + index)
    good = [r for r in records if r.problem is None]
    organ = split_cases([r.case for r in good if r.regime == "full"], seed=seed)
    tumor = split_cases([r.case for r in good if LESION in r.labels_present], seed=seed)
    train_names = set(organ["train"]) | set(tumor["train"])
    pooled = [samples[n] for n in sorted(train_names) if n in samples]
    fingerprint = compute_fingerprint(np.concatenate(pooled)) if pooled else None
    if fingerprint is None:
        log.warning("no labelled training case: no intensity fingerprint")
    cohort = PreparedCohort(str(data_dir.resolve()), seed, records, organ, tumor, fingerprint)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / MANIFEST_FILE, cohort.to_json().encode())
    return cohort
