"""The FLARE23 segmentation metrics: Dice (DSC) and normalised surface Dice (NSD), as pure array functions.

The numbers agree with the challenge's official scorer (``FLARE23/FLARE23_DSC_NSD_Eval.py`` of
github.com/JunMa11/FLARE, which calls DeepMind's ``surface-distance`` code) on any input; see
``docs/evaluation.md``. What is reproduced, and how:

* **Surface elements.** A mask is cropped to the bounding box of ``gt | pred`` and padded with one zero
  voxel at the far end of each axis; every corner of the voxel grid gets the 8-bit code of its 2x2x2
  neighbourhood (bit ``1 << (7 - (4a + 2b + c))`` for the voxel at offset ``(a - 1, b - 1, c - 1)``).
  A corner whose code is neither 0 nor 255 is a surface element ("surfel"); its area is the area of
  the marching-cubes surface inside that 2x2x2 cube, scaled by the voxel spacing.
* **Surfel areas.** DeepMind's lookup table of triangle normals per code is rebuilt here from first
  principles: the iso-surface crosses each cube edge with a sign change at its midpoint; on a face with
  two diagonal corners of the minority value (occupied corners when at most 4 are occupied, else empty
  ones) those corners are cut off separately; each closed polygon is triangulated as the fan (from one
  of its vertices) of largest area. For every code and any spacing this gives the same surface area as
  DeepMind's table (checked against ``surface_distance.lookup_tables``).
* **Distances.** For each surfel the distance to the nearest surfel of the other surface, in mm. DeepMind
  reads it from ``scipy.ndimage.distance_transform_edt(~border, sampling=spacing)``, whose value is
  ``sqrt((d0*s0)**2 + (d1*s1)**2 + (d2*s2)**2)`` for the integer offset ``d`` to the nearest border
  point. Here the nearest border point is found with a k-d tree (only within the tolerance for the
  NSD) and the distance is recomputed with that same expression, so the ``distance <= tolerance`` test
  has the same outcome, at a fraction of the cost of a full distance transform.

Nothing here imports torch.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from flareseg.errors import GeometryError
from flareseg.labels import ALL_FOREGROUND_IDS, BY_ID, Z_CROPPED_IDS, tolerance_of

log = logging.getLogger(__name__)

DEFAULT_NSD_GATE = 0.1
"""NSD is set to 0 when the (unrounded) DSC is below this value: the scorer of the FLARE23 test phase."""
NSD_GATE_LATER = 0.2
"""The gate of later versions of the official scorer (FLARE24)."""
DECIMALS = 4
"""Per-case values are rounded to this many decimals, as the official scorer does."""

CaseScores = dict[int, tuple[float, float]]
"""``{label id: (dsc, nsd)}`` for one case."""


# --------------------------------------------------------------------------------------------------
# Marching-cubes surfel areas per 2x2x2 neighbour code
# --------------------------------------------------------------------------------------------------

_Point = tuple[float, float, float]


def _corner_bit(corner: tuple[int, int, int]) -> int:
    a, b, c = corner
    return 1 << (7 - (4 * a + 2 * b + c))


def _cube_faces() -> list[list[tuple[int, int, int]]]:
    """The 6 faces of the unit cube, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        u_axis, v_axis = (ax for ax in range(3) if ax != axis)
        for side in (0, 1):
            ring = []
            for u, v in ((0, 0), (0, 1), (1, 1), (1, 0)):
                corner = [0, 0, 0]
                corner[axis], corner[u_axis], corner[v_axis] = side, u, v
                ring.append(tuple(corner))
            faces.append(ring)
    return faces


_FACES = _cube_faces()


def _midpoint(p: tuple[int, int, int], q: tuple[int, int, int]) -> _Point:
    return ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2, (p[2] + q[2]) / 2)


def _surface_polygons(code: int) -> list[list[_Point]]:
    """The closed polygons of the iso-surface inside the cube of neighbour code `code`."""
    inside = {corner for face in _FACES for corner in face if code & _corner_bit(corner)}
    # On an ambiguous face (two diagonal corners of each value) the minority value's corners are cut off
    # one by one; with 4 occupied corners either choice gives the same areas.
    separate_occupied = len(inside) <= 4
    segments: list[tuple[_Point, _Point]] = []
    for ring in _FACES:
        occupied = [corner in inside for corner in ring]
        crossings = [i for i in range(4) if occupied[i] != occupied[(i + 1) % 4]]
        if len(crossings) == 2:
            i, j = crossings
            segments.append((_midpoint(ring[i], ring[(i + 1) % 4]), _midpoint(ring[j], ring[(j + 1) % 4])))
        elif len(crossings) == 4:
            for i in range(4):
                if occupied[i] == separate_occupied:
                    segments.append((_midpoint(ring[i - 1], ring[i]), _midpoint(ring[i], ring[(i + 1) % 4])))
    neighbours: dict[_Point, list[_Point]] = {}
    for p, q in segments:
        neighbours.setdefault(p, []).append(q)
        neighbours.setdefault(q, []).append(p)
    polygons, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = [n for n in neighbours[current] if n != previous and n not in seen]
            if not following:
                break
            previous, current = current, following[0]
            loop.append(current)
            seen.add(current)
        polygons.append(loop)
    return polygons


def _fan_area_vectors(loop: list[_Point], start: int) -> np.ndarray:
    """Area vectors (half cross products) of the triangle fan of `loop` from vertex `start`."""
    pts = np.array(loop[start:] + loop[:start], dtype=np.float64)
    return np.array([np.cross(pts[i] - pts[0], pts[i + 1] - pts[0]) / 2 for i in range(1, len(pts) - 1)])


@functools.lru_cache(maxsize=1)
def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """``(codes, vectors)``: the neighbour code and the unit-spacing area vector of every triangle."""
    codes, vectors = [], []
    for code in range(1, 255):
        for loop in _surface_polygons(code):
            fans = [_fan_area_vectors(loop, s) for s in range(len(loop))]
            areas = [round(float(np.linalg.norm(f, axis=1).sum()), 12) for f in fans]
            best = fans[int(np.argmax(areas))]
            codes.extend([code] * len(best))
            vectors.extend(best)
    return np.array(codes, dtype=np.intp), np.array(vectors, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    codes, vectors = _triangle_table()
    s0, s1, s2 = spacing
    # An area vector scales with the products of the two other spacings (DeepMind's formula).
    n0 = vectors[:, 0] * s1 * s2
    n1 = vectors[:, 1] * s0 * s2
    n2 = vectors[:, 2] * s0 * s1
    table = np.bincount(codes, weights=np.sqrt(n0 * n0 + n1 * n1 + n2 * n2), minlength=256)
    table.setflags(write=False)
    return table


def surfel_area_table(spacing_mm: Sequence[float]) -> np.ndarray:
    """Return the (256,) surface area in mm^2 of the marching-cubes surface of each 2x2x2 neighbour code.

    Codes 0 and 255 (no surface) have area 0. Equal to DeepMind's
    ``lookup_tables.create_table_neighbour_code_to_surface_area(spacing_mm)``.
    """
    return _area_table(_check_spacing(spacing_mm)).copy()


# --------------------------------------------------------------------------------------------------
# Surfels and distances
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfels of two masks and their distances to the other surface (DeepMind's dict, unsorted).

    Attributes:
        distances_gt_to_pred: (Ng,) mm from each reference surfel to the nearest predicted surfel
            (``inf`` when the prediction has no surface).
        distances_pred_to_gt: (Np,) mm from each predicted surfel to the nearest reference surfel.
        surfel_areas_gt: (Ng,) mm^2 area of each reference surfel.
        surfel_areas_pred: (Np,) mm^2 area of each predicted surfel.
    """

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in np.asarray(spacing_mm, dtype=np.float64).ravel())
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be 3 positive finite numbers, got {tuple(spacing_mm)}")
    return spacing  # type: ignore[return-value]


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    if gt.ndim != 3:
        raise ValueError(f"expected 3-D masks, got shape {gt.shape}")
    return (gt if gt.dtype == bool else gt != 0), (pred if pred.dtype == bool else pred != 0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    boxes = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    return boxes[0] if boxes and boxes[0] is not None else None


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every corner of the voxel grid of `mask` (shape + 1 along each axis).

    Corner ``q`` sees the voxels ``q - 1`` and ``q`` along each axis (outside the array: empty), i.e.
    DeepMind's ``correlate`` of the crop padded by one voxel at the far end, with zero boundary.
    """
    n0, n1, n2 = (s + 1 for s in mask.shape)
    padded = np.zeros((n0 + 1, n1 + 1, n2 + 1), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    codes = np.zeros((n0, n1, n2), dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                shifted = padded[a : a + n0, b : b + n1, c : c + n2]
                codes |= shifted << np.uint8(7 - (4 * a + 2 * b + c))
    return codes


def _surfels(mask: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(corners (N, 3) int, areas (N,) mm^2)`` of the surfels of a cropped mask."""
    codes = _neighbour_codes(mask)
    border = (codes != 0) & (codes != 255)
    idx = np.nonzero(border)
    return np.stack(idx, axis=1), table[codes[idx]]


def _exact_distance(delta: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt``'s distance for integer offsets `delta` (N, 3)."""
    d = delta.astype(np.float64)
    d0, d1, d2 = d[:, 0] * spacing[0], d[:, 1] * spacing[1], d[:, 2] * spacing[2]
    return np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)


def _nearest_distances(
    source: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float], within_mm: float | None = None
) -> np.ndarray:
    """Distance in mm from each `source` corner to the nearest `target` corner.

    With `within_mm`, only distances up to it are exact; farther ones are returned as ``inf``.
    """
    out = np.full(len(source), np.inf)
    if len(source) == 0 or len(target) == 0:
        return out
    scale = np.asarray(spacing)
    tree = cKDTree(target * scale)
    # The slack keeps every point whose exact distance is <= within_mm, whatever the rounding in the tree.
    bound = np.inf if within_mm is None else within_mm * (1 + 1e-6) + 1e-9
    _, nearest = tree.query(source * scale, k=1, distance_upper_bound=bound)
    found = nearest < len(target)
    out[found] = _exact_distance(target[nearest[found]] - source[found], spacing)
    return out


def _crop_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    box = _bounding_box(gt | pred)
    if box is None:
        return None
    return gt[box], pred[box]


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> SurfaceDistances:
    """Surfels of `gt` and `pred` with their areas and distances to the other surface.

    Same quantities as DeepMind's ``compute_surface_distances`` (not sorted by distance). Masks are
    3-D arrays (non-zero = inside) of the same shape; `spacing_mm` is the voxel size along each axis.
    Both masks empty: all four arrays are empty. One mask empty: its arrays are empty and the other's
    distances are ``inf``.

    Raises:
        GeometryError: the masks differ in shape.
    """
    gt, pred = _check_pair(gt, pred)
    spacing = _check_spacing(spacing_mm)
    crops = _crop_pair(gt, pred)
    if crops is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty.copy(), empty.copy(), empty.copy())
    table = _area_table(spacing)
    corners_gt, areas_gt = _surfels(crops[0], table)
    corners_pred, areas_pred = _surfels(crops[1], table)
    return SurfaceDistances(
        distances_gt_to_pred=_nearest_distances(corners_gt, corners_pred, spacing),
        distances_pred_to_gt=_nearest_distances(corners_pred, corners_gt, spacing),
        surfel_areas_gt=areas_gt,
        surfel_areas_pred=areas_pred,
    )


def surface_dice_at_tolerance(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Surface Dice of precomputed `distances` at `tolerance_mm` (``nan`` when both surfaces are empty)."""
    total = float(np.sum(distances.surfel_areas_gt) + np.sum(distances.surfel_areas_pred))
    if total == 0:
        return float("nan")
    overlap_gt = np.sum(distances.surfel_areas_gt[distances.distances_gt_to_pred <= tolerance_mm])
    overlap_pred = np.sum(distances.surfel_areas_pred[distances.distances_pred_to_gt <= tolerance_mm])
    return float((overlap_gt + overlap_pred) / total)


def normalized_surface_dice(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice of two masks at `tolerance_mm` (DeepMind's surface Dice, no FLARE rules).

    ``(GT surfel area within tolerance of the predicted surface + predicted surfel area within tolerance
    of the GT surface) / (total GT area + total predicted area)``. Both masks empty: ``nan``; one empty: 0.

    Raises:
        GeometryError: the masks differ in shape.
    """
    gt, pred = _check_pair(gt, pred)
    spacing = _check_spacing(spacing_mm)
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    crops = _crop_pair(gt, pred)
    if crops is None:
        return float("nan")
    table = _area_table(spacing)
    corners_gt, areas_gt = _surfels(crops[0], table)
    corners_pred, areas_pred = _surfels(crops[1], table)
    distances = SurfaceDistances(
        distances_gt_to_pred=_nearest_distances(corners_gt, corners_pred, spacing, tolerance_mm),
        distances_pred_to_gt=_nearest_distances(corners_pred, corners_gt, spacing, tolerance_mm),
        surfel_areas_gt=areas_gt,
        surfel_areas_pred=areas_pred,
    )
    return surface_dice_at_tolerance(distances, tolerance_mm)


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient ``2|G & P| / (|G| + |P|)`` of two masks (non-zero = inside); ``nan`` when both are empty.

    Raises:
        GeometryError: the masks differ in shape.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    gt = gt if gt.dtype == bool else gt != 0
    pred = pred if pred.dtype == bool else pred != 0
    total = int(np.count_nonzero(gt)) + int(np.count_nonzero(pred))
    if total == 0:
        return float("nan")
    return 2 * int(np.count_nonzero(gt & pred)) / total


# --------------------------------------------------------------------------------------------------
# One case with the FLARE rules
# --------------------------------------------------------------------------------------------------


def as_official_labels(labels: np.ndarray) -> np.ndarray:
    """Return `labels` cast to int8 as the official scorer does (``get_fdata().astype(np.int8)``).

    Integer ids wrap modulo 256 (e.g. 270 -> 14, 200 -> -56); fractional values are truncated toward
    zero. Ids 0-127 are unchanged.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.int8:
        return labels
    if labels.dtype == bool:
        return labels.astype(np.int8)
    with np.errstate(invalid="ignore", over="ignore"):
        return labels.astype(np.int8)


def _round(value: float, decimals: int | None) -> float:
    # The official scorer calls round() on numpy floats, i.e. numpy's rounding (not Python's).
    return float(value) if decimals is None else float(np.round(np.float64(value), decimals))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> list[slice]:
    return [slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b)]


def _check_label_ids(label_ids: Iterable[int]) -> tuple[int, ...]:
    ids = tuple(int(i) for i in label_ids)
    bad = [i for i in ids if i not in BY_ID or i == 0]
    if bad:
        raise ValueError(f"label_ids must be foreground ids 1-14, got {bad}")
    return ids


def score_case(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    label_ids: Iterable[int] = ALL_FOREGROUND_IDS,
    nsd_gate: float = DEFAULT_NSD_GATE,
    decimals: int | None = DECIMALS,
) -> CaseScores:
    """Score one case with every rule of the FLARE23 scorer.

    Args:
        gt_labels: (I, J, K) reference label map in NIfTI voxel order (as nibabel returns it).
        pred_labels: predicted label map of the same shape.
        spacing_mm: voxel size along I, J, K (the reference header's zooms).
        label_ids: classes to score (default 1-14).
        nsd_gate: NSD is 0 when the unrounded DSC is below this (0.1: FLARE23 test phase; 0.2: later).
        decimals: rounding of each value (4 as the official scorer; None: unrounded).

    Returns:
        ``{label: (dsc, nsd)}``. Per class: both masks empty -> (1, 1); exactly one empty -> (0, 0);
        otherwise DSC and NSD at the class tolerance, after cutting both label maps to
        ``[:, :, z_lo:z_hi]`` (min/max third index of the reference mask) for aorta, IVC and esophagus.

    Raises:
        GeometryError: the label maps differ in shape.
    """
    gt = as_official_labels(gt_labels)
    pred = as_official_labels(pred_labels)
    if gt.shape != pred.shape:
        raise GeometryError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    if gt.ndim != 3:
        raise ValueError(f"expected 3-D label maps, got shape {gt.shape}")
    spacing = _check_spacing(spacing_mm)
    ids = _check_label_ids(label_ids)
    if not 0 <= nsd_gate <= 1:
        raise ValueError(f"nsd_gate must lie in [0, 1], got {nsd_gate}")
    if not ids:
        return {}
    # Negative int8 values read as >= 128 here, beyond max_label, hence ignored like any other id.
    gt_u, pred_u = gt.view(np.uint8), pred.view(np.uint8)
    max_label = max(ids)
    gt_boxes = ndimage.find_objects(gt_u, max_label=max_label)
    pred_boxes = ndimage.find_objects(pred_u, max_label=max_label)

    scores: CaseScores = {}
    for label in ids:
        gt_box, pred_box = gt_boxes[label - 1], pred_boxes[label - 1]
        if gt_box is None and pred_box is None:
            scores[label] = (1.0, 1.0)
            continue
        if gt_box is None or pred_box is None:
            scores[label] = (0.0, 0.0)
            continue
        box = _union(gt_box, pred_box)
        if label in Z_CROPPED_IDS:
            z_lo, z_hi = gt_box[2].start, gt_box[2].stop - 1
            if z_hi == z_lo:
                # The official code crops to an empty slab here and crashes; score the one labelled slice.
                log.warning("label %d: the reference occupies one slice (k=%d); scoring that slice", label, z_lo)
                z_hi = z_lo + 1
            box[2] = slice(z_lo, z_hi)
        gt_mask = gt_u[tuple(box)] == label
        pred_mask = pred_u[tuple(box)] == label
        dsc = dice(gt_mask, pred_mask)
        if dsc < nsd_gate:
            nsd = 0.0
        else:
            nsd = normalized_surface_dice(gt_mask, pred_mask, spacing, tolerance_of(label))
        scores[label] = (_round(dsc, decimals), _round(nsd, decimals))
    return scores
