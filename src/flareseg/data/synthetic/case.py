"""One synthetic case: the random streams, the anatomy, the scan, the rendering and the metadata.

A case's generator is split into five independent streams (anatomy, scan, lesions, voxel grid,
noise), so the same seed gives the same anatomy in millimetres whatever the ``size`` profile, and
the same arrays on every run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import flareseg.labels as L
from flareseg.data.synthetic.anatomy import Anatomy
from flareseg.data.synthetic.lesions import draw_lesion_count, draw_lesions
from flareseg.data.synthetic.patient import build_anatomy
from flareseg.data.synthetic.render import Rendered, render
from flareseg.data.synthetic.scanner import (
    ORIENTATIONS,
    PHASES,
    Scan,
    check_size,
    draw_grid,
    draw_scan,
    orient,
    parse_orientation,
    reconstruct,
)
from flareseg.data.synthetic.shapes import CanonicalGrid
from flareseg.errors import ConfigError
from flareseg.io import Volume, orientation_code

log = logging.getLogger(__name__)

DEFAULT_LESION_FREE_FRACTION = 0.3
DEFAULT_FOV_CUT_FRACTION = 0.25
DEFAULT_ORIENTED_FRACTION = 0.25


@dataclass
class Case:
    """One synthesised case in its stored orientation.

    Attributes:
        image: int16 CT (HU); label: uint8 complete label map (ids 0-14) on the same grid.
        organs: (I, J, K) uint8 label map before lesions were painted, in the stored orientation.
        meta: JSON-ready metadata (see :func:`synthesize_case`).
    """

    image: Volume
    label: Volume
    organs: np.ndarray
    meta: dict[str, Any]


def as_rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    """`rng_or_seed` itself when a Generator, else ``default_rng(seed)`` for a non-negative integer seed."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool) and rng_or_seed >= 0:
        return np.random.default_rng(int(rng_or_seed))
    raise ConfigError(f"rng_or_seed must be a numpy Generator or a non-negative integer, got {rng_or_seed!r}")


def _check_options(size: str, phase: str | None, lesions: int | None, orientation: str | None, spacing: Sequence[float] | None) -> None:
    """Raise ConfigError naming the first bad option of :func:`synthesize_case`."""
    check_size(size)
    if phase is not None and phase not in PHASES:
        raise ConfigError(f"phase must be one of {', '.join(PHASES)} or None, got {phase!r}")
    if lesions is not None and (isinstance(lesions, bool) or not isinstance(lesions, (int, np.integer)) or not 0 <= lesions <= 50):
        raise ConfigError(f"lesions must be an integer in 0-50 or None, got {lesions!r}")
    if orientation is not None:
        parse_orientation(orientation)
    if spacing is not None:
        sp = np.asarray(spacing, float)
        if sp.shape not in ((2,), (3,)) or not np.all(np.isfinite(sp)) or np.any(sp <= 0) or np.any(sp > 10):
            raise ConfigError(f"spacing must be (in-plane, slice) or (x, y, z) in mm, each in (0, 10], got {spacing!r}")
        if len(sp) == 3 and sp[0] != sp[1]:
            raise ConfigError(f"spacing: the two in-plane spacings must be equal, got {spacing!r}")


def _meta(size: str, anat: Anatomy, scan: Scan, grid: CanonicalGrid, rendered: Rendered, stored: Volume) -> dict[str, Any]:
    """The case's JSON-ready metadata; `stored` is the image as stored (its shape and geometry)."""
    counts = sum(np.bincount(slab.ravel(), minlength=256) for slab in np.array_split(rendered.label, 8))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    visible = [rec for rec in rendered.lesions if rec["voxels"] > 0]
    tor = anat.torso
    return {
        "size": size,
        "phase": scan.phase,
        "orientation": orientation_code(stored.direction),
        "shape": [int(v) for v in stored.shape],
        "spacing": [round(v, 6) for v in stored.spacing],
        "origin": [round(v, 3) for v in stored.origin],
        "direction": np.asarray(stored.direction).astype(int).ravel().tolist(),
        "fov_cut": scan.fov_cut,
        "patient": {"scale": round(tor.s, 3), "height_scale": round(tor.h, 3), "obesity": round(tor.obesity, 3)},
        "noise_hu": round(scan.noise_hu, 1),
        "oral_contrast": bool(anat.gut.oral_contrast),
        "organs_present": [i for i in L.ORGAN_IDS if counts[i] > 0],
        "volumes_ml": {L.name_of(i): round(counts[i] * voxel_ml, 2) for i in L.ALL_FOREGROUND_IDS if counts[i] > 0},
        "lesion_count": len(visible),
        "lesion_volume_ml": round(counts[L.LESION] * voxel_ml, 2),
        "lesions": visible,
    }


def synthesize(
    rng: np.random.Generator,
    *,
    size: str,
    phase: str | None,
    lesions: int | None,
    fov_cut: bool | None,
    orientation: str | None,
    spacing: Sequence[float] | None,
) -> Case:
    """:func:`synthesize_case` keeping the label map before lesions (:attr:`Case.organs`); consumes `rng`."""
    _check_options(size, phase, lesions, orientation, spacing)
    t0 = time.perf_counter()
    anat_rng, scan_rng, lesion_rng, grid_rng, noise_rng = rng.spawn(5)
    anat = build_anatomy(anat_rng)
    scan = draw_scan(scan_rng, anat, phase, fov_cut, DEFAULT_FOV_CUT_FRACTION)
    if lesions is None:
        lesions = draw_lesion_count(lesion_rng, DEFAULT_LESION_FREE_FRACTION)
    drawn = draw_lesions(lesion_rng, anat, int(lesions), z_range=scan.z_range, phase=scan.phase)
    if orientation is None:
        orientation = "LPS"
        if scan_rng.random() < DEFAULT_ORIENTED_FRACTION:
            orientation = str(scan_rng.choice(ORIENTATIONS))
    grid = draw_grid(grid_rng, anat, scan, size, spacing)
    rendered = render(anat, scan, grid, drawn)
    ct = reconstruct(rendered.image, noise_rng, grid, scan.noise_hu)
    (ct_o, lab_o, org_o), spacing_o, origin_o, direction_o = orient([ct, rendered.label, rendered.organs], grid, orientation)
    image = Volume(ct_o, spacing_o, origin_o, direction_o)
    meta = _meta(size, anat, scan, grid, rendered, image)
    log.debug("synthesised a %s case %s in %.2f s", size, meta["shape"], time.perf_counter() - t0)
    return Case(image, Volume(lab_o, spacing_o, origin_o, direction_o), org_o, meta)


def synthesize_case(
    rng_or_seed: np.random.Generator | int,
    *,
    size: str = "full",
    phase: str | None = None,
    lesions: int | None = None,
    fov_cut: bool | None = None,
    orientation: str | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[Volume, Volume, dict[str, Any]]:
    """Synthesise one abdominal CT phantom with its complete label map.

    Args:
        rng_or_seed: a :class:`numpy.random.Generator` (consumed) or a non-negative integer seed.
            The same seed gives identical arrays; the anatomy in mm does not depend on `size`.
        size: ``"full"``: 512 x 512 in-plane at 0.6-1.0 mm (chosen to fit the patient), slices of
            1-5 mm; ``"small"``: 192-256 in-plane at 1.5-2.0 mm, slices of 2-5 mm.
        phase: ``"non-contrast"``, ``"arterial"`` or ``"portal-venous"``; None draws one (20/30/50 %).
        lesions: number of lesions to draw (0-50); None draws 0 (30 %) or 1-8. When >= 1 the first lies
            inside the field of view, so at least one lesion shows; others may fall outside it.
        fov_cut: True cuts the scanned range at the top and/or bottom so that some organs are partly or
            wholly out of view; False keeps all 13 organs in view; None cuts 25 % of cases.
        orientation: ITK code of the stored array axes ('LPS', 'RAS', 'PLI', ...); None keeps LPS for 75 %
            of cases and draws from :data:`ORIENTATIONS` for the others.
        spacing: (in-plane, slice) mm overriding the profile's draw; the in-plane matrix stays the
            profile's (512 for ``full``).

    Returns:
        ``(image, label, meta)``: image an int16 :class:`~flareseg.io.volume.Volume` in HU (-1024 outside the
        reconstruction circle) of shape (I, J, K) in the stored orientation; label a uint8 Volume on
        the same grid with ids 0-14 (:mod:`flareseg.labels`; lesion voxels are 14 in place of the organ);
        meta a JSON-ready dict: size, phase, orientation, shape, spacing (mm), origin (mm), direction,
        fov_cut, patient, noise_hu, oral_contrast, organs_present, volumes_ml, lesion_count,
        lesion_volume_ml and lesions (host, kind, radius_mm, voxels, center_lps_mm).

    Raises:
        ConfigError: unknown size, phase or orientation; bad lesion count, spacing or seed.
    """
    case = synthesize(
        as_rng(rng_or_seed), size=size, phase=phase, lesions=lesions, fov_cut=fov_cut, orientation=orientation, spacing=spacing
    )
    return case.image, case.label, case.meta
