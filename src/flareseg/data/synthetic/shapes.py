"""Implicit shapes in millimetres and their evaluation on a voxel grid.

A shape is a signed-distance function (mm, negative inside) called with three 1-D ascending
coordinate vectors ``x, y, z`` (mm) that returns the ``(len(x), len(y), len(z))`` float32 distance on
their tensor grid. Primitives: ellipsoids, chains of capsules, curved plates; smooth unions and
random deformations by :class:`Field`, a cubic B-spline with random coefficients. A shape is
evaluated only inside its bounding box, on a coarse lattice of about its ``detail`` spacing, and
linearly upsampled to the voxel centres (:func:`evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Axes = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Three 1-D ascending coordinate vectors (mm): the tensor grid x * y * z."""
Plan = tuple[np.ndarray, np.ndarray]
"""Linear interpolation from a coarse axis to a fine one: (left coarse index, weight) per fine point."""


class Field:
    """A smooth random scalar field: a cubic B-spline with random coefficients on a regular lattice.

    Evaluated separably on a tensor grid (four weighted gathers per axis, no BLAS). Its standard
    deviation is about `amp` and its correlation length about `step` mm. The lattice covers the box
    [lo, hi] with two steps of margin; outside it the nearest edge values continue.
    """

    _VARIANCE_1D = 151.0 / 315.0  # mean over a cell of the sum of squared cubic B-spline weights

    def __init__(self, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], step: float, amp: float):
        self.step = float(step)
        self.start = np.asarray(lo, float) - 2 * self.step
        n = tuple(int(math.ceil((hi[a] - lo[a]) / self.step)) + 5 for a in range(3))
        scale = amp / self._VARIANCE_1D**1.5
        self.coef = (rng.standard_normal(n) * scale).astype(np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The field on the tensor grid x * y * z (1-D mm): a (len x, len y, len z) float32 array."""
        cells, weights, window = [], [], []
        for axis, u in enumerate((x, y, z)):
            n = self.coef.shape[axis]
            pos = np.clip((np.asarray(u, float) - self.start[axis]) / self.step, 1.0, n - 2.0 - 1e-6)
            i = pos.astype(np.intp)
            t = (pos - i).astype(np.float32)
            lo = int(i.min()) - 1 if len(i) else 0
            window.append(slice(lo, int(i.max()) + 3 if len(i) else 0))
            cells.append(i - lo)
            weights.append(((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6))
        out = self.coef[tuple(window)]
        for axis in (2, 1, 0):  # the innermost axis first, while the array is small
            shape = [1, 1, 1]
            shape[axis] = -1
            acc = None
            for m, w in enumerate(weights[axis]):
                term = np.take(out, cells[axis] + (m - 1), axis=axis)
                term *= w.reshape(shape)
                acc = term if acc is None else np.add(acc, term, out=acc)
            out = acc
        return out


@dataclass
class Shape:
    """An implicit shape: `sdf` on tensor-grid axes, its bounding box (mm) and its sampling detail (mm)."""

    sdf: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    detail: tuple[float, float, float]


def _grid3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1-D axes as float32 arrays of shapes (X, 1, 1), (1, Y, 1), (1, 1, Z) that broadcast to the grid."""
    return (x.astype(np.float32)[:, None, None], y.astype(np.float32)[None, :, None], z.astype(np.float32)[None, None, :])


def ellipsoid_sdf(center, radii, rot=None):
    """Approximate signed distance (mm) to an ellipsoid with semi-axes `radii` along the rows of `rot`."""
    c = np.asarray(center, np.float32)
    r = np.asarray(radii, np.float32)
    rot = np.eye(3, dtype=np.float32) if rot is None else np.asarray(rot, np.float32)

    def sdf(x, y, z):
        X, Y, Z = _grid3(x - c[0], y - c[1], z - c[2])
        k0 = None
        k1 = None
        for i in range(3):
            q = X * rot[i, 0] + Y * rot[i, 1] + Z * rot[i, 2]
            t0 = (q / r[i]) ** 2
            t1 = (q / r[i] ** 2) ** 2
            k0 = t0 if k0 is None else k0 + t0
            k1 = t1 if k1 is None else k1 + t1
        k0 = np.sqrt(k0)
        k1 = np.sqrt(k1)
        k1 += 1e-6
        return (k0 * (k0 - 1.0) / k1).astype(np.float32, copy=False)

    return sdf


def capsules_sdf(points, radii, yscale: float = 1.0, reach: float = 15.0):
    """Signed distance (mm) to a chain of capsules through `points` (N, 3) with radii (N,).

    Each segment is evaluated only within `reach` mm of its own box; elsewhere the value is `reach`
    (far outside). `yscale` > 1 flattens the cross-section along y (an elliptic tube such as the IVC).
    """
    p = np.asarray(points, np.float64).copy()
    p[:, 1] *= yscale
    rad = np.asarray(radii, np.float64)

    def sdf(x, y, z):
        out = np.full((len(x), len(y), len(z)), reach, np.float32)
        ys = y * yscale
        for a, b, ra, rb in zip(p[:-1], p[1:], rad[:-1], rad[1:]):
            m = max(ra, rb) + reach
            lo = np.minimum(a, b) - m
            hi = np.maximum(a, b) + m
            sx = slice(np.searchsorted(x, lo[0]), np.searchsorted(x, hi[0], "right"))
            sy = slice(np.searchsorted(ys, lo[1]), np.searchsorted(ys, hi[1], "right"))
            sz = slice(np.searchsorted(z, lo[2]), np.searchsorted(z, hi[2], "right"))
            if sx.start >= sx.stop or sy.start >= sy.stop or sz.start >= sz.stop:
                continue
            X, Y, Z = _grid3(x[sx] - a[0], ys[sy] - a[1], z[sz] - a[2])
            ab = (b - a).astype(np.float32)
            ab2 = float(ab @ ab) + 1e-9
            t = (X * ab[0] + Y * ab[1] + Z * ab[2]) * (1.0 / ab2)
            np.clip(t, 0.0, 1.0, out=t)
            d = np.sqrt((X - t * ab[0]) ** 2 + (Y - t * ab[1]) ** 2 + (Z - t * ab[2]) ** 2)
            d -= ra + t * (rb - ra)
            np.minimum(out[sx, sy, sz], d, out=out[sx, sy, sz])
        return out

    return sdf


def capsule_shape(points, radii, detail, yscale=1.0, margin=6.0) -> Shape:
    """The :func:`capsules_sdf` chain through `points` (N, 3) mm with `radii` (N,) mm, boxed with `margin` mm."""
    p = np.asarray(points, float)
    r = float(np.max(radii))
    pad = np.array([r, r / yscale, r]) + margin
    return Shape(capsules_sdf(p, radii, yscale), p.min(0) - pad, p.max(0) + pad, detail)


def plate_shape(points2d, radii, z_top, z_bottom: float, detail) -> Shape:
    """A curved plate: an in-plane chain of 2-D capsules through `points2d` (N, 2) with half-thickness
    `radii` (N,), extruded from `z_bottom` up to a rim at heights `z_top` (N,), linear between points."""
    p, rad, top = np.asarray(points2d, float), np.asarray(radii, float), np.asarray(z_top, float)

    def sdf(x, y, z):
        X = x.astype(np.float32)[:, None, None]
        Y = y.astype(np.float32)[None, :, None]
        Z = z.astype(np.float32)[None, None, :]
        out = None
        for k in range(len(p) - 1):
            a, ab = p[k], p[k + 1] - p[k]
            t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1]) / float(ab @ ab), 0, 1)
            d = np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2) - (rad[k] + t * (rad[k + 1] - rad[k]))
            f = np.maximum(d, Z - (top[k] + t * (top[k + 1] - top[k])))
            out = f if out is None else np.minimum(out, f)
        return out

    margin = rad.max() + 6
    lo = np.array([p[:, 0].min() - margin, p[:, 1].min() - margin, z_bottom])
    hi = np.array([p[:, 0].max() + margin, p[:, 1].max() + margin, top.max() + 6])
    return Shape(sdf, lo, hi, detail)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (union) of two distances with blending radius `k` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def random_rotation(rng: np.random.Generator, max_deg: float, base: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Rotation matrix (rows = rotated axes) from Euler angles `base` (deg) plus uniform jitter."""
    ang = np.radians(np.asarray(base) + rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def perturbed(inner: Callable, fld: Field) -> Callable:
    """The shape `inner` with the field `fld` (mm) added to its distance: a smooth random deformation."""

    def sdf(x, y, z):
        f = inner(x, y, z)
        f += fld(x, y, z)
        return f

    return sdf


def spline(points: Sequence[Sequence[float]], n: int) -> np.ndarray:
    """A smooth curve through `points` (M, 3) mm (Catmull-Rom), resampled to `n` points: an (n, 3) array."""
    p = np.asarray(points, float)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    seg = len(p) - 3
    for t in np.linspace(0, seg, n):
        i = min(int(t), seg - 1)
        u = t - i
        p0, p1, p2, p3 = p[i : i + 4]
        out.append(
            0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3)
        )
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# The voxel grid and evaluation on it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanonicalGrid:
    """The canonical (LPS-aligned) voxel grid: voxel-centre coordinates in the patient frame (mm).

    Attributes:
        axes: the voxel centres along x, y, z (mm, patient frame), ascending.
        spacing: (x, y, z) voxel spacing (mm).
        shift: physical LPS position = patient-frame position + shift (mm).
    """

    axes: Axes
    spacing: tuple[float, float, float]
    shift: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(I, J, K) voxels."""
        return tuple(len(a) for a in self.axes)  # type: ignore[return-value]


def _interp_plan(coarse: np.ndarray, fine: np.ndarray) -> Plan:
    """The plan interpolating from the regular ascending axis `coarse` to the points `fine` (mm)."""
    pos = (fine - coarse[0]) / (coarse[1] - coarse[0])
    i0 = np.clip(pos.astype(np.intp), 0, len(coarse) - 2)
    return i0, (pos - i0).astype(np.float32)


def upsample(f: np.ndarray, plans: Sequence[Plan | None]) -> np.ndarray:
    """Separable linear interpolation of `f` along the axes that have a plan (index, weight).

    The innermost axis goes first, while the array is small; the outer axes then gather whole rows.
    """
    for axis in (2, 1, 0):
        plan = plans[axis]
        if plan is None:
            continue
        i0, w = plan
        shape = [1, 1, 1]
        shape[axis] = -1
        a0 = np.take(f, i0, axis=axis)
        a1 = np.take(f, i0 + 1, axis=axis)
        a1 -= a0
        a1 *= w.reshape(shape)
        a1 += a0
        f = a1
    return f


def upsample_rows(f: np.ndarray, plans: Sequence[Plan | None], chunk: int = 16):
    """Yield (output row slice, rows) of ``upsample(f, plans)``, `chunk` rows of axis 0 at a time.

    Used for whole volumes, so that no full-size temporary is ever made.
    """
    plan = plans[0]
    n = f.shape[0] if plan is None else len(plan[0])
    for k0 in range(0, n, chunk):
        k1 = min(k0 + chunk, n)
        if plan is None:
            yield slice(k0, k1), upsample(f[k0:k1], [None, plans[1], plans[2]])
            continue
        i0, w = plan[0][k0:k1], plan[1][k0:k1]
        r0 = int(i0[0])
        sub = upsample(f[r0 : int(i0[-1]) + 2], [None, plans[1], plans[2]])
        yield slice(k0, k1), upsample(sub, [(i0 - r0, w), None, None])


def coarsen(axes: Axes, detail: Sequence[float]) -> tuple[Axes, list[Plan | None]]:
    """Coarse axes spanning `axes` with steps of about `detail` mm, and the plans to interpolate back.

    An axis already at least 0.7 * `detail` apart (or shorter than 4 points) is kept as it is.
    """
    coarse, plans = [], []
    for a, ax in enumerate(axes):
        if len(ax) < 4 or ax[1] - ax[0] >= 0.7 * detail[a]:
            coarse.append(ax)
            plans.append(None)
            continue
        c = np.linspace(ax[0], ax[-1], max(2, int(math.ceil((ax[-1] - ax[0]) / detail[a])) + 1))
        coarse.append(c)
        plans.append(_interp_plan(c, ax))
    return tuple(coarse), plans  # type: ignore[return-value]


def evaluate(shape: Shape, grid: CanonicalGrid) -> tuple[tuple[slice, slice, slice], np.ndarray, Axes] | None:
    """Evaluate `shape` on the voxels of `grid` inside its box.

    Returns:
        (index slices of the box, float32 signed distance on those voxels in mm, the box's axes),
        or None when the box misses the grid.
    """
    slices = []
    for a in range(3):
        ax = grid.axes[a]
        s = slice(int(np.searchsorted(ax, shape.lo[a])), int(np.searchsorted(ax, shape.hi[a], "right")))
        if s.stop - s.start < 1:
            return None
        slices.append(s)
    fine = tuple(grid.axes[a][slices[a]] for a in range(3))
    coarse, plans = coarsen(fine, shape.detail)
    f = upsample(shape.sdf(*coarse), plans)
    return tuple(slices), f, fine  # type: ignore[return-value]
