"""A cache of preprocessed training cases: each case is preprocessed once and read lazily.

Layout, under a prepared-cohort folder::

    PREPARED/cache/<key>/<case>.image.npy       (X, Y, Z) float16, normalised (preprocessing section 3)
    PREPARED/cache/<key>/<case>.label.npy       (X, Y, Z) uint8, FLARE ids 0-14 (absent for unlabelled cases)
    PREPARED/cache/<key>/<case>.locations.npy   (N, 2) int64 rows (label id, flat voxel index)
    PREPARED/cache/<key>/<case>.json            geometry, voxel counts per label, source file stamps

``<key>`` names the target spacing and hashes every value the arrays depend on (the whole
:class:`~flareseg.config.PreprocessConfig` and the :class:`~flareseg.config.Fingerprint`), e.g.
``2.5x2.5x2.5mm-3f9c01ab``, so one cache serves both tasks and every run with the same
preprocessing, and a changed setting never reads stale arrays. The ``.json`` file is written last:
its presence marks a complete entry, so a build killed halfway is redone, never half-read. A
source file whose size or modification time changed invalidates its entry.

Arrays are opened as memory maps: a worker touches only the pages of the patches it crops, the
operating system's page cache bounds the memory, and thousands of cases cost no RAM up front.

The locations are a sample of voxel positions per label value (up to ``LOCATIONS_PER_CLASS`` each,
as nnU-Net's "class locations"): patch centres are drawn from them without scanning the label map
each time, class-balanced for the foreground (a random class, then a random voxel of it).
No torch here; no pickle (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from flareseg.config import Fingerprint, PreprocessConfig, to_dict
from flareseg.errors import InputError
from flareseg.io import atomic_output, atomic_write_bytes, read_image, read_label
from flareseg.transforms.preprocessing import preprocess_case

log = logging.getLogger(__name__)

CACHE_DIRNAME = "cache"
CACHE_FORMAT = 2
"""Version of the cached arrays, part of the cache key (2: recursive anti-aliasing Gaussian)."""
LOCATIONS_PER_CLASS = 5000
"""Voxel positions kept per label value (fewer when the label has fewer voxels)."""
IMAGE_DTYPE = np.float16
"""On-disk dtype of normalised images: half the bytes of float32, ~1e-3 relative precision."""


@dataclass(frozen=True)
class SourceCase:
    """A case as the manifest names it: its image and optional label file."""

    name: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class CachedCase:
    """One preprocessed case, memory-mapped.

    Attributes:
        name: case name.
        image: (X, Y, Z) float16 normalised intensities on the network grid (read-only memory map).
        label: (X, Y, Z) uint8 FLARE ids 0-14, or None for an unlabelled case.
        locations: (N, 2) int64 rows of (label id, flat index into ``image.shape``).
        counts: voxels per label id present.
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    locations: np.ndarray
    counts: dict[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


def cache_key(preprocess: PreprocessConfig, fingerprint: Fingerprint) -> str:
    """A folder name for this preprocessing: readable spacing plus a hash of every setting."""
    blob = json.dumps({"format": CACHE_FORMAT, "preprocess": to_dict(preprocess), "fingerprint": to_dict(fingerprint)}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    spacing = "x".join(f"{s:g}" for s in preprocess.target_spacing)
    return f"{spacing}mm-{digest}"


def _stamp(path: Path | None) -> dict[str, int | str] | None:
    if path is None:
        return None
    st = Path(path).stat()
    return {"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def sample_locations(label: np.ndarray, *, per_class: int = LOCATIONS_PER_CLASS, seed: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """Up to `per_class` random flat voxel indices of each label value, and the voxel count of each.

    Returns:
        ``(locations, counts)``: (N, 2) int64 rows (label id, flat index), sorted by id; counts per id.
    """
    rng = np.random.default_rng(seed)
    flat = label.reshape(-1)
    order = np.argsort(flat, kind="stable")
    values, starts, sizes = np.unique(flat[order], return_index=True, return_counts=True)
    rows = []
    counts: dict[int, int] = {}
    for value, start, size in zip(values, starts, sizes):
        counts[int(value)] = int(size)
        chunk = order[start : start + size]
        if size > per_class:
            chunk = rng.choice(chunk, size=per_class, replace=False)
        rows.append(np.stack([np.full(len(chunk), value, dtype=np.int64), np.sort(chunk).astype(np.int64)], axis=1))
    locations = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    return locations, counts


def _build_entry(folder: str, case: SourceCase, preprocess: PreprocessConfig, fingerprint: Fingerprint) -> str:
    """Preprocess one case into `folder` (runs in a worker process); returns the case name."""
    folder_path = Path(folder)
    image = read_image(case.image)
    label = read_label(case.label, image, reference_path=case.image) if case.label is not None else None
    result = preprocess_case(image, label, config=preprocess, fingerprint=fingerprint)
    _save_npy(folder_path / f"{case.name}.image.npy", result.image.astype(IMAGE_DTYPE))
    counts: dict[int, int] = {}
    if result.label is not None:
        _save_npy(folder_path / f"{case.name}.label.npy", result.label.astype(np.uint8))
        locations, counts = sample_locations(result.label, seed=int(hashlib.sha256(case.name.encode()).hexdigest()[:8], 16))
        _save_npy(folder_path / f"{case.name}.locations.npy", locations)
    meta = {
        "format": CACHE_FORMAT,
        "case": case.name,
        "shape": list(result.image.shape),
        "spacing": list(result.record.network.spacing),
        "counts": {str(k): v for k, v in counts.items()},
        "labelled": result.label is not None,
        "source": {"image": _stamp(case.image), "label": _stamp(case.label)},
    }
    atomic_write_bytes(folder_path / f"{case.name}.json", json.dumps(meta, indent=1).encode())
    return case.name


class CaseCache:
    """Preprocessed cases of one cohort for one preprocessing setting.

    Args:
        root: the cache root (usually ``PREPARED/cache``).
        preprocess: target spacing and body-crop settings.
        fingerprint: the normalisation statistics.
    """

    def __init__(self, root: str | os.PathLike, preprocess: PreprocessConfig, fingerprint: Fingerprint) -> None:
        self.preprocess = preprocess
        self.fingerprint = fingerprint
        self.folder = Path(root) / cache_key(preprocess, fingerprint)

    def _meta_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def is_current(self, case: SourceCase) -> bool:
        """True when `case` has a complete entry built from its current source files."""
        path = self._meta_path(case.name)
        if not path.is_file():
            return False
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        try:
            return (
                meta.get("format") == CACHE_FORMAT
                and meta["source"]["image"] == _stamp(case.image)
                and meta["source"]["label"] == _stamp(case.label)
            )
        except OSError:
            return False

    def build(self, cases: Iterable[SourceCase], *, workers: int = 1, progress: bool = False) -> int:
        """Preprocess every case of `cases` that is missing or stale; returns how many were built.

        Args:
            workers: processes to use (1: in this process). SimpleITK's resampling is itself
                multi-threaded, so more workers than cores rarely help.

        Raises:
            InputError: a source file cannot be read or its label does not fit its image.
        """
        todo = [c for c in cases if not self.is_current(c)]
        if not todo:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        log.info("preprocessing %d case(s) into %s", len(todo), self.folder)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="cache", unit="case", disable=not progress)
        try:
            if workers <= 1 or len(todo) == 1:
                for case in todo:
                    _build_entry(str(self.folder), case, self.preprocess, self.fingerprint)
                    bar.update()
            else:
                # spawn, not fork: the parent may hold torch / ITK thread pools that a fork would break.
                with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                    futures = [pool.submit(_build_entry, str(self.folder), c, self.preprocess, self.fingerprint) for c in todo]
                    for future in futures:
                        future.result()
                        bar.update()
        finally:
            bar.close()
        return len(todo)

    def load(self, name: str, *, mmap_mode: str = "r") -> CachedCase:
        """Open the entry of case `name` as memory maps (``mmap_mode="c"``: writable copy-on-write
        views, which torch can wrap without a warning; the files never change).

        Raises:
            InputError: the case is not in the cache (call :meth:`build` first).
        """
        meta_path = self._meta_path(name)
        if not meta_path.is_file():
            raise InputError(f"case {name!r} is not in the cache {self.folder}")
        meta = json.loads(meta_path.read_text())
        image = np.load(self.folder / f"{name}.image.npy", mmap_mode=mmap_mode, allow_pickle=False)
        label = None
        locations = np.zeros((0, 2), dtype=np.int64)
        if meta.get("labelled"):
            label = np.load(self.folder / f"{name}.label.npy", mmap_mode=mmap_mode, allow_pickle=False)
            locations = np.load(self.folder / f"{name}.locations.npy", allow_pickle=False)
        counts = {int(k): int(v) for k, v in meta.get("counts", {}).items()}
        return CachedCase(name, image, label, locations, counts)


def source_cases(entries: Sequence[dict], names: Sequence[str]) -> list[SourceCase]:
    """The :class:`SourceCase` of each of `names` from a manifest's ``cases`` list.

    Raises:
        InputError: a name is not in the manifest or has no image.
    """
    by_name = {e.get("case"): e for e in entries}
    out = []
    for name in names:
        entry = by_name.get(name)
        if entry is None:
            raise InputError(f"case {name!r} is listed in a training split but not in the manifest's cases")
        if not entry.get("image"):
            raise InputError(f"case {name!r} has no image in the manifest's cases")
        label = entry.get("label")
        out.append(SourceCase(name, Path(entry["image"]), Path(label) if label else None))
    return out
