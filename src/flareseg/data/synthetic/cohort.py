"""Synthetic FLARE23-style cohorts: the configuration, the label regimes, the folder and the manifest."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import flareseg.labels as L
from flareseg.data.synthetic.case import (
    DEFAULT_FOV_CUT_FRACTION,
    DEFAULT_LESION_FREE_FRACTION,
    DEFAULT_ORIENTED_FRACTION,
    Case,
    synthesize,
)
from flareseg.data.synthetic.lesions import draw_lesion_count
from flareseg.data.synthetic.scanner import ORIENTATIONS, check_size
from flareseg.errors import ConfigError
from flareseg.io import atomic_write_text, write_volume

log = logging.getLogger(__name__)

MANIFEST_NAME = "synth_manifest.json"
MANIFEST_FORMAT = "flareseg-synth/1"
REGIMES: tuple[str, ...] = ("full", "lesion", "partial", "none")
"""Label regimes of training cases: all organs (+ lesions), lesions only, a subset of organs, no label."""

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

_DEFAULT_PROPORTIONS = (("full", 0.3), ("lesion", 0.3), ("partial", 0.2), ("none", 0.2))
MAX_CASES = 100_000
"""Most cases of either kind a cohort may ask for (100,000 small phantoms are ~0.4 TB)."""
BYTES_PER_CASE = {"full": 50e6, "small": 5e6}
"""Disk a phantom's image and label take, rounded up (measured: ~44 MB full, ~4 MB small)."""


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic FLARE23-style cohort (serialised into the manifest).

    Attributes:
        cases: number of training cases (labelled by regime, or unlabelled), 0 to :data:`MAX_CASES`.
        val_cases: number of validation cases (always completely labelled), 0 to :data:`MAX_CASES`.
        seed: master seed; case ``i`` draws from :func:`case_rng` ``(seed, i)``.
        size: voxel-grid profile, ``"full"`` (512 x 512 at 0.6-1.0 mm, 1-5 mm slices) or ``"small"``
            (192-256 in-plane at 1.5-2.0 mm, 2-5 mm slices). The anatomy in mm is the same.
        proportions: (regime, fraction) pairs over :data:`REGIMES` (a mapping is accepted), fractions
            >= 0 summing to 1. Counts are exact by largest-remainder rounding (:func:`regime_counts`).
        lesion_free_fraction: probability that a case other than a ``lesion``-regime case has no lesion.
        fov_cut_fraction: probability that a case other than a ``full``-regime case has its field of
            view cut at the top and/or bottom, so that some organs are partly or wholly out of view.
        oriented_fraction: probability that a case is stored in an orientation other than LPS
            (:data:`ORIENTATIONS`).
        partial_lesion_fraction: probability that a ``partial``-regime case with lesions has them labelled.
        prefix: case names are ``<prefix>_<nnnn>``, numbered from 1 over training then validation cases.
    """

    cases: int = 20
    val_cases: int = 4
    seed: int = 0
    size: str = "full"
    proportions: tuple[tuple[str, float], ...] = _DEFAULT_PROPORTIONS
    lesion_free_fraction: float = DEFAULT_LESION_FREE_FRACTION
    fov_cut_fraction: float = DEFAULT_FOV_CUT_FRACTION
    oriented_fraction: float = DEFAULT_ORIENTED_FRACTION
    partial_lesion_fraction: float = 0.5
    prefix: str = "FLARESynth"

    def __post_init__(self) -> None:
        props = self.proportions
        if isinstance(props, Mapping):
            props = tuple(props.items())
        try:
            props = tuple((str(name), float(frac)) for name, frac in props)
        except (TypeError, ValueError):
            raise ConfigError(f"proportions must be (regime, fraction) pairs, got {self.proportions!r}") from None
        object.__setattr__(self, "proportions", props)
        for name in ("cases", "val_cases", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
            if name != "seed" and value > MAX_CASES:
                raise ConfigError(f"{name} must be at most {MAX_CASES:,}, got {value:,}")
            object.__setattr__(self, name, int(value))
        if self.cases + self.val_cases == 0:
            raise ConfigError("cases and val_cases are both 0: nothing to generate")
        check_size(self.size)
        _check_proportions(props)
        for name in ("lesion_free_fraction", "fov_cut_fraction", "oriented_fraction", "partial_lesion_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if not self.prefix or not self.prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"prefix must be a non-empty alphanumeric name (- and _ allowed), got {self.prefix!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values (proportions as a mapping)."""
        out = asdict(self)
        out["proportions"] = dict(self.proportions)
        return out


def _check_proportions(props: Sequence[tuple[str, float]]) -> None:
    names = [name for name, _ in props]
    unknown = sorted(set(names) - set(REGIMES))
    if unknown:
        raise ConfigError(f"proportions: unknown regime(s) {unknown}; known: {', '.join(REGIMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"proportions: a regime is given twice in {props!r}")
    if any(not math.isfinite(f) or f < 0 for _, f in props):
        raise ConfigError(f"proportions must be finite and >= 0, got {dict(props)}")
    total = sum(f for _, f in props)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"proportions must sum to 1, got {total:.6g} ({dict(props)})")


def regime_counts(cases: int, proportions: Sequence[tuple[str, float]] | Mapping[str, float]) -> dict[str, int]:
    """Split `cases` training cases over the regimes exactly, by largest-remainder rounding.

    Every regime gets ``floor(cases * fraction)`` cases; the cases left over go one each to the
    regimes with the largest remainders (ties: in the order of :data:`REGIMES`).

    Returns:
        A mapping over all of :data:`REGIMES` (regimes not given get 0) whose values sum to `cases`.

    Raises:
        ConfigError: negative `cases`, unknown regime, fractions negative or not summing to 1.
    """
    props = tuple(proportions.items()) if isinstance(proportions, Mapping) else tuple(proportions)
    props = tuple((str(n), float(f)) for n, f in props)
    _check_proportions(props)
    if cases < 0:
        raise ConfigError(f"cases must be >= 0, got {cases}")
    frac = {name: 0.0 for name in REGIMES}
    frac.update(dict(props))
    exact = {name: cases * f for name, f in frac.items()}
    counts = {name: int(math.floor(v + 1e-9)) for name, v in exact.items()}
    left = cases - sum(counts.values())
    order = sorted(REGIMES, key=lambda n: (-(exact[n] - counts[n]), REGIMES.index(n)))
    for name in order[:left]:
        counts[name] += 1
    return counts


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case `index` of a cohort with master `seed` (independent of every other case)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0, int(index))))


# ---------------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------------


def _check_free_space(out: Path, config: SynthConfig) -> None:
    """Refuse a cohort larger than the free space of the disk that would hold `out`."""
    need = (config.cases + config.val_cases) * BYTES_PER_CASE[config.size]
    existing = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ConfigError(
            f"{out}: {config.cases + config.val_cases:,} {config.size} phantoms need about {need / 1e6:,.0f} MB; "
            f"the disk has {free / 1e6:,.0f} MB free"
        )


def _prepare_out_dir(out: Path) -> None:
    """Make `out` ready: new or empty, or a previous synthetic cohort whose listed files are removed."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        raise ConfigError(f"{out}: the folder is not empty and holds no {MANIFEST_NAME}; choose a new or empty folder")
    try:
        old = json.loads(manifest.read_text())
        entries = old["cases"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{manifest}: unreadable manifest; remove the folder or choose another") from None
    for entry in entries:
        for key in ("image", "label"):
            if entry.get(key):
                (out / entry[key]).unlink(missing_ok=True)
    manifest.unlink()
    log.info("%s: removed the previous synthetic cohort (%d cases)", out, len(entries))


def _annotate(case: Case, regime: str, rng: np.random.Generator, partial_lesion_fraction: float) -> tuple[np.ndarray | None, list[int]]:
    """The label array written for `regime` and the ids it annotates (absent voxels = absent structure).

    ``full`` and validation: the complete map. ``lesion``: lesions only (0/14). ``partial``: 1-12
    random organs; lesions labelled with probability `partial_lesion_fraction`, otherwise lesion voxels
    fall back to their host organ when that organ is labelled (an organ outline includes its tumours),
    else to 0. ``none``: no label.
    """
    complete = case.label.array
    if regime in ("full", "val"):
        return complete, list(L.ALL_FOREGROUND_IDS)
    if regime == "none":
        return None, []
    if regime == "lesion":
        return np.where(complete == L.LESION, np.uint8(L.LESION), np.uint8(0)), [L.LESION]
    organs = sorted(int(i) for i in rng.choice(L.ORGAN_IDS, size=int(rng.integers(1, 13)), replace=False))
    with_lesions = bool(rng.random() < partial_lesion_fraction)
    lut = np.zeros(256, np.uint8)
    lut[organs] = organs
    out = lut[case.organs]
    if with_lesions:
        out[complete == L.LESION] = L.LESION
    return out, organs + ([L.LESION] if with_lesions else [])


def _draw_case_options(choice: np.random.Generator, regime: str, config: SynthConfig) -> tuple[int, bool, str]:
    """Lesion count, field-of-view cut and storage orientation of a cohort case of `regime`."""
    if regime == "lesion":
        n_lesions = max(1, draw_lesion_count(choice, 0.0))
    else:
        n_lesions = draw_lesion_count(choice, config.lesion_free_fraction)
    cut = regime != "full" and bool(choice.random() < config.fov_cut_fraction)
    orientation = str(choice.choice(ORIENTATIONS)) if choice.random() < config.oriented_fraction else "LPS"
    return n_lesions, cut, orientation


def _write_case(out: Path, name: str, regime: str, case: Case, label_array: np.ndarray | None) -> tuple[str, str | None, list[int]]:
    """Write the image (and `label_array` unless `regime` is ``none``) of case `name` under `out`.

    Returns:
        (image path, label path or None, both relative to `out`; the label ids with voxels in the file).
    """
    if regime == "val":
        image_rel, label_rel = f"imagesVal/{name}_0000.nii.gz", f"labelsVal/{name}.nii.gz"
    elif regime == "none":
        image_rel, label_rel = f"unlabeledTr/{name}_0000.nii.gz", None
    else:
        image_rel, label_rel = f"imagesTr/{name}_0000.nii.gz", f"labelsTr/{name}.nii.gz"
    write_volume(case.image, out / image_rel)
    in_file: list[int] = []
    if label_rel is not None:
        write_volume(case.label.with_array(np.ascontiguousarray(label_array, dtype=np.uint8)), out / label_rel)
        present = np.bincount(label_array.ravel(), minlength=L.LESION + 1)
        in_file = [i for i in L.ALL_FOREGROUND_IDS if present[i] > 0]
    return image_rel, label_rel, in_file


def _make_case(out: Path, config: SynthConfig, index: int, regime: str) -> dict[str, Any]:
    """Synthesise and write case `index` of `regime`; its manifest entry. Depends on (seed, index) only."""
    name = f"{config.prefix}_{index + 1:04d}"
    choice = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2, index)))
    n_lesions, cut, orientation = _draw_case_options(choice, regime, config)
    case = synthesize(case_rng(config.seed, index), size=config.size, phase=None, lesions=n_lesions, fov_cut=cut, orientation=orientation, spacing=None)
    label_array, annotated = _annotate(case, regime, choice, config.partial_lesion_fraction)
    image_rel, label_rel, in_file = _write_case(out, name, regime, case, label_array)
    return {
        "case": name,
        "index": index,
        "split": "val" if regime == "val" else "train",
        "regime": "full" if regime == "val" else regime,
        "image": image_rel,
        "label": label_rel,
        "labels_annotated": annotated,
        "labels_in_file": in_file,
    } | case.meta


def _pool(workers: int) -> contextlib.AbstractContextManager:
    """A process pool of `workers` (spawned: no forked torch or OpenMP state), or None for 1."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return contextlib.nullcontext()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def generate_cohort(out_dir: str | os.PathLike, config: SynthConfig, *, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Write a synthetic FLARE23-style cohort under `out_dir` and return its manifest.

    Layout: ``imagesTr/<case>_0000.nii.gz`` with ``labelsTr/<case>.nii.gz`` for the ``full``,
    ``lesion`` and ``partial`` regimes, ``unlabeledTr/<case>_0000.nii.gz`` for ``none``,
    ``imagesVal/<case>_0000.nii.gz`` with complete labels in ``labelsVal/<case>.nii.gz``, and
    ``synth_manifest.json`` (seed, parameters, per-case regime, geometry, lesions and the label ids
    each label file annotates and contains). Images are int16 HU, labels uint8. ``full`` cases keep
    all 13 organs in view; the other cases may have a cut field of view (``fov_cut_fraction``).

    Args:
        out_dir: a new or empty folder, or one holding an earlier synthetic cohort (whose files, as
            listed in its manifest, are removed first).
        config: the cohort parameters.
        progress: show a progress bar (tqdm).
        workers: processes synthesising cases side by side (each case depends only on the seed and its
            index, so the cohort is the same for any number).

    Returns:
        The manifest (as written).

    Raises:
        ConfigError: `out_dir` is a file or a non-empty folder that is not a synthetic cohort, or its
            disk has less free space than the cohort needs (checked before anything is written or removed).
    """
    from tqdm.auto import tqdm

    from flareseg import __version__

    out = Path(out_dir)
    _check_free_space(out, config)
    _prepare_out_dir(out)
    counts = regime_counts(config.cases, config.proportions)
    regimes = [name for name in REGIMES for _ in range(counts[name])]
    np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1,))).shuffle(regimes)
    regimes += ["val"] * config.val_cases
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "generator": f"flareseg.data.synthetic {__version__}",
        "complete": False,
        "config": config.to_dict(),
        "regime_counts": counts,
        "val_cases": config.val_cases,
        "cases": [],
    }
    t0 = time.perf_counter()
    make = partial(_make_case, out, config)
    with _pool(workers) as pool:
        entries = (pool.map if pool is not None else map)(make, range(len(regimes)), regimes)  # in case order either way
        for entry in tqdm(entries, total=len(regimes), desc="synth", unit="case", disable=not progress):
            manifest["cases"].append(entry)
            atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            log.debug("%s: %s, %s, %d lesion(s)", entry["case"], entry["regime"], entry["orientation"], entry["lesion_count"])
    manifest["complete"] = True
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    log.info(
        "wrote %d synthetic cases (%s; %d validation) to %s in %.1f s",
        len(regimes),
        ", ".join(f"{k} {v}" for k, v in counts.items()),
        config.val_cases,
        out,
        time.perf_counter() - t0,
    )
    return manifest

