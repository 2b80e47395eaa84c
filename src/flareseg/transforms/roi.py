"""Regions of interest as voxel boxes: bounding boxes, margins, mapping between grids, the paper's slab.

A box is ``((start_i, stop_i), (start_j, stop_j), (start_k, stop_k))`` in voxel indices, stops
exclusive, the same convention as :attr:`preprocessing.PreprocessRecord.crop`. Numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from flareseg.errors import ConfigError, GeometryError
from flareseg.io import Grid

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def full_box(shape: Sequence[int]) -> Box:
    """The box covering a whole volume of `shape`."""
    return tuple((0, int(s)) for s in shape)  # type: ignore[return-value]


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """Index expression selecting `box` from an (I, J, K) array."""
    return tuple(slice(a, b) for a, b in box)  # type: ignore[return-value]


def box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(b - a for a, b in box)  # type: ignore[return-value]


def is_empty(box: Box) -> bool:
    return any(b <= a for a, b in box)


def bounding_box(mask: np.ndarray) -> Box | None:
    """The tightest box holding every non-zero voxel of the 3-D `mask`; None when the mask is empty."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    box = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if idx.size == 0:
            return None
        box.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def label_box(label: np.ndarray, ids: Iterable[int] | None = None) -> Box | None:
    """Bounding box of the voxels whose value is in `ids` (all non-zero values when None); None if none."""
    if ids is None:
        return bounding_box(label != 0)
    return bounding_box(np.isin(label, np.asarray(list(ids), dtype=label.dtype)))


def margin_voxels(margin_mm: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """A physical margin as whole voxels per axis (rounded up)."""
    if margin_mm < 0:
        raise ConfigError(f"margin must be >= 0 mm, got {margin_mm}")
    return tuple(int(np.ceil(margin_mm / s - 1e-9)) for s in spacing)  # type: ignore[return-value]


def expand_box(box: Box, margin: Sequence[int], shape: Sequence[int]) -> Box:
    """`box` widened by `margin` voxels on both sides of each axis, clipped to `shape`."""
    return tuple((max(0, a - m), min(int(n), b + m)) for (a, b), m, n in zip(box, margin, shape))  # type: ignore[return-value]


def ensure_min_size(box: Box, min_size: Sequence[int], shape: Sequence[int]) -> Box:
    """Grow `box` about its centre to at least `min_size` per axis (or the whole axis when shorter).

    Used to give a network tile its full field of view when the region is smaller than the patch:
    the cost is the same one tile, and the extra context helps the prediction.
    """
    out = []
    for (a, b), m, n in zip(box, min_size, shape):
        n, m = int(n), min(int(m), int(n))
        if b - a < m:
            a = max(0, min(a - (m - (b - a)) // 2, n - m))
            b = a + m
        out.append((a, b))
    return tuple(out)  # type: ignore[return-value]


def intersect(box: Box, other: Box) -> Box:
    """The intersection of two boxes (possibly empty: check with :func:`is_empty`)."""
    return tuple((max(a, c), max(max(a, c), min(b, d))) for (a, b), (c, d) in zip(box, other))  # type: ignore[return-value]


def scale_box(box: Box, src_shape: Sequence[int], dst_shape: Sequence[int]) -> Box:
    """Map `box` between two samplings of the same extent (e.g. a volume and its 2x downsampled copy).

    Voxel ``i`` of an axis of ``n`` voxels covers ``[i / n, (i + 1) / n)`` of the extent; the result
    is the smallest box of the destination covering the same fraction.
    """
    out = []
    for (a, b), n_src, n_dst in zip(box, src_shape, dst_shape):
        f = n_dst / n_src
        out.append((max(0, int(np.floor(a * f + 1e-9))), min(int(n_dst), int(np.ceil(b * f - 1e-9)))))
    return tuple(out)  # type: ignore[return-value]


def map_box(box: Box, src: Grid, dst: Grid) -> Box:
    """Map a box of grid `src` to the smallest box of grid `dst` covering the same physical region.

    Both grids must share their direction (true of the network grids of two models preprocessed from
    the same image: both are in the canonical LPS orientation).

    Raises:
        GeometryError: the grids' directions differ.
    """
    if not np.allclose(src.direction, dst.direction, atol=1e-6):
        raise GeometryError("map_box needs two grids with the same direction")
    if src.matches(dst):
        return box
    direction = np.array(src.direction).reshape(3, 3)
    lo = np.array([a for a, _ in box], dtype=float) - 0.5  # voxel edges, in source indices
    hi = np.array([b for _, b in box], dtype=float) - 0.5
    shift = direction.T @ (np.asarray(src.origin) - np.asarray(dst.origin))  # source origin in dst axes, mm
    lo_mm = shift + lo * np.asarray(src.spacing)
    hi_mm = shift + hi * np.asarray(src.spacing)
    d_lo = np.floor(lo_mm / np.asarray(dst.spacing) + 0.5 + 1e-6).astype(int)
    d_hi = np.ceil(hi_mm / np.asarray(dst.spacing) + 0.5 - 1e-6).astype(int)
    return tuple((int(max(0, a)), int(min(n, max(0, b)))) for a, b, n in zip(d_lo, d_hi, dst.shape))  # type: ignore[return-value]


def slices_for_extent(extent_mm: float, spacing_mm: float) -> int:
    """Voxels along an axis of `spacing_mm` that span `extent_mm` (rounded, at least 1).

    The paper keeps "the middle 50 slices" after resampling to 1 mm: a 50 mm extent. At a model
    spacing of 2.5 mm that is 20 slices.
    """
    if extent_mm <= 0 or spacing_mm <= 0:
        raise ConfigError(f"extent and spacing must be positive, got {extent_mm} mm and {spacing_mm} mm")
    return max(1, int(round(extent_mm / spacing_mm)))


def middle_slab(shape: Sequence[int], n_slices: int, axis: int = 2) -> Box:
    """The box of the middle `n_slices` slices along `axis` (all of them when there are fewer).

    With an odd surplus the extra slice goes below: ``start = (n - n_slices) // 2``.
    """
    if n_slices < 1:
        raise ConfigError(f"n_slices must be >= 1, got {n_slices}")
    box = list(full_box(shape))
    n = int(shape[axis])
    if n_slices < n:
        start = (n - n_slices) // 2
        box[axis] = (start, start + n_slices)
    return tuple(box)  # type: ignore[return-value]


def grow_where_touching(box: Box, found: Box | None, margin: Sequence[int], limit: Box) -> Box:
    """Widen `box` on each side that `found` (what was segmented inside it) touches.

    A structure cut by a face of the region it was segmented in was probably cut by the region, not
    by the anatomy: that face moves out by `margin` voxels or the box's own extent along that axis,
    whichever is larger (so a badly small box reaches any size in a few steps), within `limit`. Faces
    that already lie on `limit` (the volume's border, or the paper's slab) stay. Returns `box` itself
    when nothing touches, so ``grown == box`` ends a grow-and-repeat loop.
    """
    if found is None:
        return box
    out = []
    for (a, b), (fa, fb), m, (la, lb) in zip(box, found, margin, limit):
        step = max(int(m), b - a)
        lo = max(la, a - step) if fa <= a and a > la else a
        hi = min(lb, b + step) if fb >= b and b < lb else b
        out.append((lo, hi))
    return tuple(out)  # type: ignore[return-value]
