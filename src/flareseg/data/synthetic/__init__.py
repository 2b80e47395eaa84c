"""Synthetic abdominal CT phantoms and FLARE23-style cohorts with partial labels.

A phantom is built in a patient frame in millimetres, in ITK's LPS convention: ``+x`` is the
patient's left, ``+y`` posterior, ``+z`` superior; ``z = 0`` lies near the renal hila (L1/L2). Every
structure is a smooth implicit shape (a signed distance in mm, negative inside): ellipsoids, sums of
blobs and tubes along centre lines, deformed by low-frequency random fields and clipped against the
abdominal wall and the diaphragm. Each shape is evaluated only inside its bounding box, on a coarse
lattice where that is accurate enough, and linearly upsampled to the voxel grid; the intensity is
painted with a one-voxel partial-volume edge and the label is the inside of the shape. Later
structures overwrite earlier ones, so organs abut instead of overlapping.

The random draws that make the anatomy (sizes, positions, deformations, lesions), the scan (contrast
phase, HU, field of view, position, orientation) and the voxel grid come from separate streams of
one :class:`numpy.random.Generator`, so the same seed gives the same anatomy in millimetres whatever
the ``size`` profile, and the same arrays on every run.

Public API: :class:`SynthConfig`, :func:`synthesize_case`, :func:`generate_cohort`,
:func:`plot_case`, :func:`regime_counts`, :func:`case_rng`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import flareseg.labels as L
from flareseg.errors import ConfigError
from flareseg.io import Volume, orientation_code, write_volume, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "ORIENTATIONS",
    "PHASES",
    "REGIMES",
    "SIZES",
    "SynthConfig",
    "case_rng",
    "generate_cohort",
    "plot_case",
    "regime_counts",
    "synthesize_case",
]

MANIFEST_NAME = "synth_manifest.json"
MANIFEST_FORMAT = "flareseg-synth/1"
REGIMES: tuple[str, ...] = ("full", "lesion", "partial", "none")
"""Label regimes of training cases: all organs (+ lesions), lesions only, a subset of organs, no label."""
PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal-venous")
SIZES: tuple[str, ...] = ("full", "small")
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPI", "RAI", "PLI", "LAS", "SPL")
"""Storage orientations (ITK codes) of the cases not stored as LPS; the anatomy is the same in all."""
HU_MIN, HU_MAX = -1024, 3071
OUTSIDE_FOV_HU = -1024
"""Value of voxels outside the scanner's reconstruction circle."""
DEFAULT_LESION_FREE_FRACTION = 0.3
DEFAULT_FOV_CUT_FRACTION = 0.25
DEFAULT_ORIENTED_FRACTION = 0.25


@dataclass(frozen=True)
class _Profile:
    spacing_mm: tuple[float, float]  # in-plane spacing range
    matrix: tuple[int, int]  # in-plane matrix range (square)
    slices_mm: tuple[float, ...]  # slice spacings to choose from


_PROFILES = {
    "full": _Profile((0.6, 1.0), (512, 512), (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)),
    "small": _Profile((1.5, 2.0), (192, 256), (2.0, 2.5, 3.0, 4.0, 5.0)),
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

_DEFAULT_PROPORTIONS = (("full", 0.3), ("lesion", 0.3), ("partial", 0.2), ("none", 0.2))


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic FLARE23-style cohort (serialised into the manifest).

    Attributes:
        cases: number of training cases (labelled by regime, or unlabelled), >= 0.
        val_cases: number of validation cases (always completely labelled), >= 0.
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
            object.__setattr__(self, name, int(value))
        if self.cases + self.val_cases == 0:
            raise ConfigError("cases and val_cases are both 0: nothing to generate")
        _check_size(self.size)
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


def _check_size(size: str) -> None:
    if size not in _PROFILES:
        raise ConfigError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


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
# Smooth random fields and implicit shapes. Shapes are called with three 1-D ascending coordinate
# vectors (mm) and return the (len(x), len(y), len(z)) float32 signed distance (mm, < 0 inside).
# ---------------------------------------------------------------------------------------------

Axes = tuple[np.ndarray, np.ndarray, np.ndarray]


class _Field:
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
class _Shape:
    """An implicit shape: `sdf` on tensor-grid axes, its bounding box (mm) and its sampling detail (mm)."""

    sdf: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    detail: tuple[float, float, float]


def _grid3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (x.astype(np.float32)[:, None, None], y.astype(np.float32)[None, :, None], z.astype(np.float32)[None, None, :])


def _ellipsoid_sdf(center, radii, rot=None):
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


def _capsules_sdf(points, radii, yscale: float = 1.0, reach: float = 15.0):
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


def _capsule_shape(points, radii, detail, yscale=1.0, margin=6.0) -> _Shape:
    p = np.asarray(points, float)
    r = float(np.max(radii))
    extra = np.array([r, r / yscale, r]) + margin
    return _Shape(_capsules_sdf(p, radii, yscale), p.min(0) - extra, p.max(0) + extra, detail)


def _plate_shape(points2d, radii, z_top, z_bottom: float, detail) -> _Shape:
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
    return _Shape(sdf, lo, hi, detail)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (union) of two distances with blending radius `k` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _rotation(rng: np.random.Generator, max_deg: float, base: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Rotation matrix (rows = rotated axes) from Euler angles `base` (deg) plus uniform jitter."""
    ang = np.radians(np.asarray(base) + rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ---------------------------------------------------------------------------------------------
# Voxel grid, evaluation and painting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The canonical (LPS-aligned) voxel grid: voxel-centre coordinates in the patient frame (mm)."""

    axes: Axes
    spacing: tuple[float, float, float]
    shift: tuple[float, float, float]  # physical LPS position = patient-frame position + shift

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a) for a in self.axes)  # type: ignore[return-value]


def _interp_plan(coarse: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = (fine - coarse[0]) / (coarse[1] - coarse[0])
    i0 = np.clip(pos.astype(np.intp), 0, len(coarse) - 2)
    return i0, (pos - i0).astype(np.float32)


def _upsample(f: np.ndarray, plans: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
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


def _upsample_rows(f: np.ndarray, plans: Sequence[tuple[np.ndarray, np.ndarray] | None], chunk: int = 16):
    """Yield (output row slice, rows) of ``_upsample(f, plans)``, `chunk` rows of axis 0 at a time.

    Used for whole volumes, so that no full-size temporary is ever made.
    """
    plan = plans[0]
    n = f.shape[0] if plan is None else len(plan[0])
    for k0 in range(0, n, chunk):
        k1 = min(k0 + chunk, n)
        if plan is None:
            yield slice(k0, k1), _upsample(f[k0:k1], [None, plans[1], plans[2]])
            continue
        i0, w = plan[0][k0:k1], plan[1][k0:k1]
        r0 = int(i0[0])
        sub = _upsample(f[r0 : int(i0[-1]) + 2], [None, plans[1], plans[2]])
        yield slice(k0, k1), _upsample(sub, [(i0 - r0, w), None, None])


def _coarsen(axes: Axes, detail: Sequence[float]) -> tuple[Axes, list[tuple[np.ndarray, np.ndarray] | None]]:
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


def _evaluate(shape: _Shape, grid: _Grid) -> tuple[tuple[slice, slice, slice], np.ndarray, Axes] | None:
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
    coarse, plans = _coarsen(fine, shape.detail)
    f = _upsample(shape.sdf(*coarse), plans)
    return tuple(slices), f, fine  # type: ignore[return-value]


class _Canvas:
    """The image (float32 HU) and label (uint8) arrays being painted, on a canonical grid."""

    def __init__(self, grid: _Grid, image: np.ndarray, edge_mm: float):
        self.grid = grid
        self.image = image
        self.label = np.zeros(grid.shape, np.uint8)
        self.edge = float(edge_mm)

    def paint(
        self,
        shape: _Shape,
        hu: float | Callable[[np.ndarray, Axes], np.ndarray | float],
        label: int | None = 0,
        within: Callable[[tuple[slice, slice, slice]], np.ndarray] | None = None,
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Blend `hu` into the image where `shape` is, with a partial-volume edge, and set its label.

        Args:
            shape: what to paint.
            hu: a value, or a function of (signed distance, box axes) giving the HU on the box voxels.
            label: label id to set inside the shape (0 clears organ labels); None leaves labels as they are.
            within: optional function of the box slices returning a boolean mask that limits painting.

        Returns:
            (box slices, inside mask) or None when the shape misses the grid.
        """
        ev = _evaluate(shape, self.grid)
        if ev is None:
            return None
        sl, f, axes = ev
        alpha = np.multiply(f, -1.0 / self.edge)
        alpha += 0.5
        np.clip(alpha, 0.0, 1.0, out=alpha)
        inside = f < 0
        if within is not None:
            w = within(sl)
            alpha *= w
            inside &= w
        value = hu(f, axes) if callable(hu) else hu
        sub = self.image[sl]
        delta = np.subtract(value, sub, dtype=np.float32)
        delta *= alpha
        sub += delta
        if label is not None:
            self.label[sl][inside] = label
        return sl, inside


# ---------------------------------------------------------------------------------------------
# Intensities
# ---------------------------------------------------------------------------------------------

# Tissue HU in each phase (non-contrast, arterial, portal-venous).
_TISSUE_HU: dict[str, tuple[float, float, float]] = {
    "fat": (-105, -105, -100),
    "visceral_fat": (-98, -97, -93),
    "skin": (10, 15, 20),
    "muscle": (48, 55, 60),
    "liver": (58, 72, 112),
    "spleen": (47, 115, 118),
    "kidney_cortex": (32, 185, 165),
    "kidney_medulla": (30, 70, 160),
    "pancreas": (42, 112, 92),
    "adrenal": (28, 68, 62),
    "gallbladder": (10, 10, 10),
    "gi_wall": (40, 88, 92),
    "esophagus": (42, 60, 78),
    "aorta": (42, 320, 165),
    "ivc": (42, 95, 140),
    "portal_vein": (42, 130, 175),
    "hepatic_vein": (42, 55, 155),
    "heart_blood": (42, 270, 150),
    "myocardium": (45, 110, 100),
    "lung": (-860, -860, -860),
    "bone_cortex": (760, 760, 760),
    "bone_marrow": (210, 210, 210),
    "disc": (85, 85, 85),
    "csf": (12, 12, 12),
    "cartilage": (130, 130, 130),
    "fluid": (12, 12, 12),
}


def _draw_hu(rng: np.random.Generator, phase: str) -> dict[str, float]:
    """Per-case tissue HU: the phase's values, a case-wide enhancement scale and per-tissue jitter."""
    p = PHASES.index(phase)
    enhancement = rng.uniform(0.8, 1.2)
    hu = {}
    for name, values in _TISSUE_HU.items():
        base = values[0]
        hu[name] = base + (values[p] - base) * enhancement + rng.normal(0, 4)
    if rng.random() < 0.15:  # fatty liver
        hu["liver"] -= rng.uniform(20, 45)
    hu["bone_marrow"] += rng.normal(0, 40)
    hu["table"] = rng.uniform(-200, 350)  # carbon-fibre tables vary
    return hu


# ---------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------


@dataclass
class _Organ:
    """A labelled structure: its shape, and points deep inside it where lesions may be seeded."""

    shape: _Shape
    seeds: Callable[[np.random.Generator], np.ndarray]


@dataclass
class _Lesion:
    host: int  # organ id, or 0 for "elsewhere" (fat and soft tissue outside the organs)
    kind: str  # hypo, hyper, cystic, necrotic
    center: np.ndarray
    radius: float
    shape: _Shape
    contrast: float  # HU offset from the host (hypo < 0 < hyper); cystic: absolute HU


@dataclass
class _Anatomy:
    """All patient-specific geometry (mm, patient frame), independent of the voxel grid."""

    s: float  # in-plane body scale
    h: float  # cranio-caudal scale
    obesity: float  # 0 lean - 1 obese
    cavity: tuple[float, float, float]  # inner abdominal wall ellipse: centre y, half-axes a, b
    body: dict[str, float]
    organs: dict[int, _Organ]
    extra: dict[str, Any]
    texture: _Field
    fine_texture: _Field
    z_top_organs: float  # highest point of liver, spleen, stomach and the gastro-oesophageal junction
    z_bottom_organs: float  # lowest point of the kidneys and the duodenum
    lesions: list[_Lesion] = field(default_factory=list)

    def yv(self, z):
        """y (mm) of the vertebral bodies' centre at height z (lordosis / kyphosis)."""
        return self.s * (46.0 + 0.045 * np.asarray(z) / self.h)

    def dome(self, x, y):
        """z (mm) of the diaphragm surface above in-plane point (x, y); broadcasting arrays."""
        e = self.extra
        s = self.s
        q_right = ((x + 55 * s) / (95 * s)) ** 2 + ((y + 5 * s) / (85 * s)) ** 2
        q_left = ((x - 55 * s) / (95 * s)) ** 2 + (y / (85 * s)) ** 2
        depth = e["dome_k"] * 55 * self.h
        return np.maximum(e["dome_r"] - depth * (q_right + q_right**2), e["dome_l"] - depth * (q_left + q_left**2))


def _cavity_sdf2(anat: _Anatomy, x: np.ndarray, y: np.ndarray, inset: float = 0.0) -> np.ndarray:
    """In-plane signed distance (mm, approximate) to the inner abdominal wall, shrunk by `inset`."""
    yc, a, b = anat.cavity
    X = x.astype(np.float32)[:, None]
    Y = (y - yc).astype(np.float32)[None, :]
    rho = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
    return (rho - 1.0) * min(a, b) + inset


def _clip_cavity_dome(anat: _Anatomy, inner: Callable, inset: float = 2.0, dome_gap: float = 3.0) -> Callable:
    """Intersect a shape with the abdominal cavity (shrunk by `inset`) and the space below the diaphragm."""

    def sdf(x, y, z):
        f = inner(x, y, z)
        cav = _cavity_sdf2(anat, x, y, inset)[:, :, None]
        dome = anat.dome(x.astype(np.float32)[:, None], y.astype(np.float32)[None, :])[:, :, None]
        below = z.astype(np.float32)[None, None, :] - (dome - dome_gap)
        return np.maximum(np.maximum(f, cav), below)

    return sdf


def _perturb(inner: Callable, fld: _Field) -> Callable:
    def sdf(x, y, z):
        f = inner(x, y, z)
        f += fld(x, y, z)
        return f

    return sdf


def _ball_seed(center, radii, rot, frac=0.55):
    c, r = np.asarray(center, float), np.asarray(radii, float)
    rot = np.eye(3) if rot is None else np.asarray(rot, float)

    def seeds(rng):
        u = rng.normal(size=3)
        u *= rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(u)
        return c + rot.T @ (u * r * frac)

    return seeds


def _tube_seed(points, radii, frac=0.4):
    p, r = np.asarray(points, float), np.asarray(radii, float)

    def seeds(rng):
        i = rng.integers(0, len(p) - 1)
        t = rng.uniform()
        return p[i] + t * (p[i + 1] - p[i]) + rng.uniform(-1, 1, 3) * frac * (r[i] + t * (r[i + 1] - r[i]))

    return seeds


def _spline(points: Sequence[Sequence[float]], n: int) -> np.ndarray:
    """A smooth curve through `points` (Catmull-Rom), resampled to `n` points."""
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


def _build_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient's anatomy (mm, patient frame). Uses only `rng`."""
    s = rng.uniform(0.88, 1.12)
    h = s * rng.uniform(0.94, 1.06)
    obesity = rng.beta(1.6, 2.2)
    cav_y, cav_a, cav_b = -5 * s, 138 * s * rng.uniform(0.95, 1.05), 95 * s * rng.uniform(0.95, 1.05)
    fat = {"lat": 6 + 40 * obesity, "ant": 6 + 45 * obesity, "post": 5 + 25 * obesity}
    muscle = {"lat": rng.uniform(8, 12), "ant": rng.uniform(7, 10)}
    body = {
        "a": cav_a + muscle["lat"] + fat["lat"],
        "y_post": 112 * s + fat["post"],
        "y_ant": cav_y - cav_b - muscle["ant"] - fat["ant"],
        "muscle_lat": muscle["lat"],
        "muscle_ant": muscle["ant"],
        "flat": rng.uniform(2.2, 3.0),  # posterior superellipse exponent (lying on the table)
        "wobble": rng.normal(0, 0.02, 4),
        "phase": rng.uniform(0, 2 * np.pi, 4),
        "taper": rng.uniform(-0.05, 0.05),
    }
    extra: dict[str, Any] = {
        "dome_r": rng.uniform(98, 112) * h,
        "dome_l": rng.uniform(88, 100) * h,
        "dome_k": rng.uniform(0.85, 1.15),
    }
    box_lo = np.array([-body["a"], body["y_ant"], -260 * h]) - 20
    box_hi = np.array([body["a"], body["y_post"], 260 * h]) + 20
    anat = _Anatomy(
        s=s,
        h=h,
        obesity=obesity,
        cavity=(cav_y, cav_a, cav_b),
        body=body,
        organs={},
        extra=extra,
        texture=_Field(rng, box_lo, box_hi, 18.0, 1.0),
        fine_texture=_Field(rng, box_lo, box_hi, 6.0, 1.0),
        z_top_organs=0.0,
        z_bottom_organs=0.0,
    )

    def P(x, y, z, jitter=0.0):
        return np.array([x * s, y * s, z * h]) + (rng.normal(0, jitter, 3) if jitter else 0.0)

    def deform(shape_sdf, lo, hi, step, amp):
        fld = _Field(rng, lo, hi, step, amp)
        return _perturb(shape_sdf, fld)

    organs = anat.organs

    # Liver: right lobe, left lobe and caudate blended, clipped by wall and diaphragm, deformed.
    rl_c, rl_r = P(-68, 0, 42, 4), np.array([74, 84, 76]) * s * rng.uniform(0.9, 1.08, 3)
    ll_c, ll_r = P(12, -48, 58, 5), np.array([58, 34, 34]) * s * rng.uniform(0.85, 1.12, 3)
    cd_c, cd_r = P(-12, 12, 48, 3), np.array([18, 18, 26]) * s
    rl_rot = _rotation(rng, 8, (0, -12, 0))
    ll_rot = _rotation(rng, 10, (0, 15, -10))
    rl = _ellipsoid_sdf(rl_c, rl_r, rl_rot)
    ll = _ellipsoid_sdf(ll_c, ll_r, ll_rot)
    cd = _ellipsoid_sdf(cd_c, cd_r)
    rk_c = P(-72, 45, -16, 4)
    rk_r = np.array([24, 24, 52]) * s * rng.uniform(0.92, 1.08, 3)
    rk_rot = _rotation(rng, 6, (-10, -12, 15))

    def liver_core(x, y, z):
        f = _smin(_smin(rl(x, y, z), ll(x, y, z), 18.0), cd(x, y, z), 8.0)
        kid = _ellipsoid_sdf(rk_c, rk_r + 3, rk_rot)(x, y, z)
        return np.maximum(f, -kid)

    lo = np.minimum(rl_c - rl_r.max(), ll_c - ll_r.max()) - 12
    hi = np.maximum(rl_c + rl_r.max(), ll_c + ll_r.max()) + 12
    hi[2] = min(hi[2], max(extra["dome_r"], extra["dome_l"]) + 5)
    liver = _clip_cavity_dome(anat, deform(liver_core, lo, hi, 35.0, 6.0))
    organs[L.LIVER] = _Organ(_Shape(liver, lo, hi, (2.5, 2.5, 2.5)), _ball_seed(rl_c + P(0, -10, 0), rl_r, rl_rot, 0.5))

    # Spleen: posterior left, long axis along the ribs.
    sp_c, sp_r = P(92, 42, 52, 5), np.array([25, 58, 48]) * s * rng.uniform(0.85, 1.15, 3)
    sp_rot = _rotation(rng, 8, (15, 0, -38))
    sp = _ellipsoid_sdf(sp_c, sp_r, sp_rot)
    lo, hi = sp_c - sp_r.max() - 12, sp_c + sp_r.max() + 12
    spleen = _clip_cavity_dome(anat, deform(sp, lo, hi, 25.0, 4.0))
    organs[L.SPLEEN] = _Organ(_Shape(spleen, lo, hi, (2.0, 2.0, 2.0)), _ball_seed(sp_c, sp_r, sp_rot))

    # Kidneys: bean shapes (ellipsoid minus a medial hilum notch); the left one sits higher.
    lk_c = P(72, 42, -4, 4)
    lk_r = np.array([24, 24, 52]) * s * rng.uniform(0.92, 1.08, 3)
    lk_rot = _rotation(rng, 6, (-10, 12, -15))
    for label, c, r, rot, side in ((L.RIGHT_KIDNEY, rk_c, rk_r, rk_rot, -1), (L.LEFT_KIDNEY, lk_c, lk_r, lk_rot, 1)):
        notch_c = c + np.array([-side * r[0] * 0.95, -r[1] * 0.2, 0])
        notch = _ellipsoid_sdf(notch_c, np.array([11, 9, 20]) * s)
        kidney = _ellipsoid_sdf(c, r, rot)
        lo, hi = c - r.max() - 10, c + r.max() + 10

        def kidney_sdf(x, y, z, kidney=kidney, notch=notch):
            return np.maximum(kidney(x, y, z), -notch(x, y, z))

        organs[label] = _Organ(_Shape(deform(kidney_sdf, lo, hi, 25.0, 2.5), lo, hi, (1.5, 1.5, 2.0)), _ball_seed(c, r, rot, 0.5))

    # Adrenals: inverted-Y tubes above and medial to the kidneys' upper poles.
    for label, apex, limbs in (
        (L.RIGHT_ADRENAL, P(-36, 24, 52, 2), (P(-28, 44, 32, 2), P(-48, 40, 34, 2))),
        (L.LEFT_ADRENAL, P(36, 8, 36, 2), (P(28, 32, 14, 2), P(50, 30, 18, 2))),
    ):
        top = apex + np.array([0, -4 * s, 12 * h])
        rad = rng.uniform(4.0, 4.6)
        parts = [_capsules_sdf(np.array([top, apex, limb]), [rad * 0.9, rad, rad * 0.8]) for limb in limbs]
        pts = np.array([top, apex, *limbs])
        lo, hi = pts.min(0) - 10, pts.max(0) + 10

        def adrenal_sdf(x, y, z, parts=parts):
            return np.minimum(parts[0](x, y, z), parts[1](x, y, z))

        organs[label] = _Organ(_Shape(adrenal_sdf, lo, hi, (1.0, 1.0, 1.0)), _tube_seed(pts[:3], [rad] * 3, 0.2))

    # Gallbladder: a pear from the neck (near the porta hepatis) to the fundus (anterior, inferior).
    neck, fundus = P(-38, -22, 22, 3), P(-58, -62, -6, 4)
    mid = 0.5 * (neck + fundus) + np.array([-5 * s, 0, -2])
    gb_r = rng.uniform(0.85, 1.15) * s
    gb_pts, gb_rad = np.array([neck, mid, fundus]), np.array([8, 13, 15]) * gb_r
    organs[L.GALLBLADDER] = _Organ(_capsule_shape(gb_pts, gb_rad, (1.5, 1.5, 1.5)), _tube_seed(gb_pts[1:], gb_rad[1:], 0.3))

    # Stomach: a curved tube from the fundus to the pylorus, clipped by the wall and the diaphragm.
    st_pts = _spline([P(58, 18, 84, 4), P(56, -12, 60, 4), P(50, -45, 34, 4), P(32, -62, 12, 4), P(4, -62, 2, 3), P(-16, -46, 6, 2)], 14)
    st_rad = np.interp(np.linspace(0, 1, 14), [0, 0.25, 0.5, 0.75, 1], np.array([30, 34, 30, 22, 13]) * s * rng.uniform(0.8, 1.15))
    lo, hi = st_pts.min(0) - st_rad.max() - 10, st_pts.max(0) + st_rad.max() + 10
    stomach = _clip_cavity_dome(anat, deform(_capsules_sdf(st_pts, st_rad), lo, hi, 30.0, 4.0))
    organs[L.STOMACH] = _Organ(_Shape(stomach, lo, hi, (2.0, 2.0, 2.0)), _tube_seed(st_pts, st_rad, 0.5))
    extra["stomach"] = (st_pts, st_rad, rng.uniform(0.0, 0.45))  # air fraction of the lumen depth

    # Duodenum: a C-loop around the pancreatic head, from the pylorus to the duodenojejunal flexure.
    du_pts = _spline(
        [st_pts[-1], P(-36, -34, 8, 2), P(-50, -10, -2, 2), P(-52, 0, -32, 3), P(-44, 2, -62, 3), P(-18, -12, -74, 3), P(8, -16, -76, 3), P(26, -16, -60, 3), P(32, -20, -40, 3)],
        24,
    )
    du_rad = np.full(len(du_pts), 11.0 * s * rng.uniform(0.85, 1.15))
    organs[L.DUODENUM] = _Organ(_capsule_shape(du_pts, du_rad, (1.5, 1.5, 1.5)), _tube_seed(du_pts, du_rad, 0.3))

    # Pancreas: head in the C-loop, neck, body across the aorta, tail to the splenic hilum.
    pa_pts = _spline([P(-32, -16, -38, 2), P(-30, -20, -18, 2), P(-8, -40, -4, 2), P(28, -30, 6, 3), P(62, 6, 16, 3), P(82, 26, 24, 3)], 16)
    pa_rad = np.interp(np.linspace(0, 1, 16), [0, 0.2, 0.45, 1], np.array([13, 15, 11, 8]) * s * rng.uniform(0.85, 1.15))
    lo, hi = pa_pts.min(0) - 20, pa_pts.max(0) + 20
    pancreas = deform(_capsules_sdf(pa_pts, pa_rad), lo, hi, 15.0, 2.0)
    organs[L.PANCREAS] = _Organ(_Shape(pancreas, lo, hi, (1.5, 1.5, 1.5)), _tube_seed(pa_pts, pa_rad, 0.3))

    # Oesophagus: from the top of the scan along the front of the spine to the gastric cardia.
    es_pts = _spline([P(4, 20, 260), P(6, 16, 160, 2), P(16, 2, 100, 2), P(30, -4, 80, 2), P(42, 4, 72, 2)], 16)
    es_rad = np.full(len(es_pts), rng.uniform(7.5, 9.5) * s)
    organs[L.ESOPHAGUS] = _Organ(_capsule_shape(es_pts, es_rad, (1.5, 1.5, 3.0), yscale=1.2), _tube_seed(es_pts[6:], es_rad[6:], 0.2))

    # Great vessels: aorta (left-anterior of the spine) to its bifurcation; IVC right of it.
    ao_z = np.array([260, 160, 110, 60, 0, -60, -100]) * h
    ao_pts = np.array([[30 * s, float(anat.yv(z)) - 12 * s, z] for z in ao_z[:2]] + [
        [(22 - 0.1 * i) * s, float(anat.yv(z)) - (24 + 5 * i) * s, z] for i, z in enumerate(ao_z[2:])
    ])
    ao_pts[2:, 0] = np.array([22, 15, 11, 7, 4]) * s
    ao_pts += rng.normal(0, 1.5, ao_pts.shape) * [1, 1, 0]
    ao_rad = np.array([13, 13, 12, 11.5, 11, 10, 9]) * s * rng.uniform(0.85, 1.15)
    organs[L.AORTA] = _Organ(_capsule_shape(ao_pts, ao_rad, (1.5, 1.5, 3.0)), _tube_seed(ao_pts, ao_rad, 0.2))
    iv_pts = np.array([P(-14, 0, 118), P(-20, 6, 90, 1.5), P(-22, 8, 45, 1.5), P(-24, 10, 0, 1.5), P(-20, 14, -60, 1.5), P(-10, 18, -104, 1.5)])
    iv_rad = np.array([14, 13, 12, 12, 11, 10]) * s * rng.uniform(0.85, 1.15)
    organs[L.IVC] = _Organ(_capsule_shape(iv_pts, iv_rad, (1.5, 1.5, 3.0), yscale=1.35), _tube_seed(iv_pts, iv_rad, 0.2))
    extra["iliac"] = [
        (np.array([ao_pts[-1], P(side * 30, 26, -140), P(side * 52, 34, -200)]), np.array([8, 7, 6]) * s)
        for side in (-1, 1)
    ] + [
        (np.array([iv_pts[-1], P(side * 32, 34, -142), P(side * 58, 44, -200)]), np.array([9, 9, 8]) * s)
        for side in (-1, 1)
    ]

    # Unlabelled vessels: portal system, SMA, renal veins; hepatic veins inside the liver.
    pv_conf = P(-4, -20, -2, 2)
    extra["veins_outside"] = [
        (np.array([pv_conf, P(-22, -18, 16, 2), P(-40, -14, 32, 2)]), np.array([8, 8, 7]) * s),  # portal vein
        (np.array([pv_conf, P(28, -16, 6, 2), P(62, 22, 16, 2), P(78, 34, 26, 2)]), np.array([5, 5, 4.5, 4.5]) * s),  # splenic vein
        (np.array([pv_conf, P(-6, -30, -40, 2), P(-8, -34, -90, 2)]), np.array([7, 6, 5]) * s),  # SMV
        (np.array([rk_c + np.array([22 * s, -4 * s, 0]), iv_pts[3]]), np.array([6, 6]) * s),  # right renal vein
        (np.array([lk_c + np.array([-22 * s, -4 * s, 0]), P(12, -6, -6), iv_pts[3]]), np.array([6, 6, 6]) * s),  # left renal vein
    ]
    extra["arteries"] = [
        (np.array([ao_pts[4] + [0, -8 * s, -4 * h], P(8, -36, -40, 2), P(6, -40, -90, 2)]), np.array([4, 4, 3.5]) * s),  # SMA
        (np.array([ao_pts[4] + [0, -4, 8 * h], P(4, -30, 14), P(40, -20, 18)]), np.array([3.5, 3.5, 3]) * s),  # coeliac / splenic
    ]
    hv_top = P(-16, 4, 100)
    extra["veins_liver"] = [
        (np.array([hv_top, P(-80, -20, 70, 5), P(-120, -30, 40, 6)]), np.array([6, 5, 3]) * s),
        (np.array([hv_top, P(-45, -50, 60, 5), P(-60, -80, 30, 6)]), np.array([6, 5, 3]) * s),
        (np.array([hv_top, P(5, -40, 75, 5), P(30, -70, 55, 6)]), np.array([5, 4, 3]) * s),
        (np.array([P(-40, -14, 32), P(-75, -5, 35, 5), P(-110, 10, 20, 6)]), np.array([6, 4.5, 3]) * s),
        (np.array([P(-40, -14, 32), P(-30, -45, 45, 5), P(-20, -75, 30, 6)]), np.array([5, 4, 3]) * s),
        (np.array([P(-40, -14, 32), P(-70, 20, 60, 5), P(-95, 30, 85, 6)]), np.array([5, 4, 3]) * s),
    ]

    # Colon (ascending, transverse, descending, sigmoid) and small-bowel loops.
    extra["colon"] = [
        (_spline([P(-78, -5, -175), P(-92, 2, -110, 4), P(-96, 0, -50, 4), P(-85, -25, -18, 4)], 10), 24 * s),
        (_spline([P(-85, -25, -18), P(-50, -75, -25, 6), P(0, -85, -32, 8), P(50, -75, -20, 6), P(92, -15, 20, 4)], 14), 22 * s),
        (_spline([P(92, -15, 20), P(104, 20, -30, 4), P(98, 14, -90, 4), P(80, 0, -160, 4)], 10), 19 * s),
        (_spline([P(80, 0, -160), P(50, -30, -190, 6), P(10, -20, -200, 6), P(-20, 10, -230, 6)], 10), 17 * s),
    ]
    bowel_lo = np.array([-cav_a, cav_y - cav_b, -260 * h])
    bowel_hi = np.array([cav_a, anat.yv(0) - 10 * s, 15 * h])
    extra["bowel_fields"] = (
        _Field(rng, bowel_lo, bowel_hi, 20.0, 1.0),
        _Field(rng, bowel_lo, bowel_hi, 20.0, 1.0),
        _Field(rng, bowel_lo, bowel_hi, 25.0, 1.0),
        bowel_lo,
        bowel_hi,
    )
    extra["bowel_radius"] = rng.uniform(10.0, 13.0) * s
    extra["gut_contrast"] = rng.random() < 0.2  # positive oral contrast in stomach, duodenum and bowel
    extra["calcified"] = rng.random() < 0.35  # aortic wall calcification

    # Heart (above the central diaphragm) and ribs.
    extra["heart"] = (P(18, -30, 150, 5), np.array([62, 52, 55]) * s)
    ribs = []
    for k, (theta_end, drop) in enumerate(((75, 30), (105, 50), (140, 75), (165, 90), (172, 100), (176, 105), (178, 108))):
        z_head = (30 + 32 * k) * h + rng.normal(0, 2)
        for side in (-1, 1):
            theta = np.radians(np.linspace(28, theta_end, 12))
            a_r, b_r = cav_a + muscle["lat"] * 0.45, cav_b + muscle["ant"] * 0.5
            xs = side * a_r * np.sin(theta)
            ys = cav_y + b_r * np.cos(theta)
            zs = z_head - 8 - drop * h * ((theta - theta[0]) / np.pi) ** 1.2
            head = np.array([side * 22 * s, float(anat.yv(z_head)) + 24 * s, z_head])
            pts = np.vstack([head, np.stack([xs, ys, zs], 1)])
            cart = np.degrees(np.r_[0, theta]) > 135
            ribs.append((pts, rng.uniform(4.2, 5.2) * s, cart))
    extra["ribs"] = ribs
    extra["spine"] = {
        "period": 32.0 * h,
        "phase": rng.uniform(0, 32.0 * h),
        "height": 24.0 * h,
        "rx": 22.0 * s,
        "ry": 17.0 * s,
    }

    # Iliac wings below the crests (L4), with the gluteal muscles behind and beside them.
    y_pelvis = float(anat.yv(-110 * h)) / s - 46
    wing = np.array([[30, 62], [52, 58], [80, 35], [105, 5], [118, -25]], float) + [0, y_pelvis]
    glut = np.array([[40, 75], [65, 72], [95, 45], [118, 12], [128, -20]], float) + [0, y_pelvis]
    crest = np.array([-100, -88, -80, -84, -100]) * h + rng.normal(0, 4)
    extra["ilium"] = [
        (wing * [side * s, s], np.array([9, 7, 5, 5, 6]) * s, crest, glut * [side * s, s], np.array([14, 18, 18, 14, 8]) * s)
        for side in (-1, 1)
    ]

    anat.z_top_organs = float(max(extra["dome_r"], extra["dome_l"]) + 5)
    anat.z_bottom_organs = float(min(rk_c[2] - rk_r[2] * 1.1, lk_c[2] - lk_r[2] * 1.1, du_pts[:, 2].min() - du_rad[0]))
    return anat


# ---------------------------------------------------------------------------------------------
# Scan: phase, intensities, field of view, position
# ---------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    phase: str
    hu: dict[str, float]
    fov_cut: str  # none, top, bottom, both
    z_range: tuple[float, float]  # scanned z extent in the patient frame (mm)
    offset: np.ndarray  # physical LPS position of the patient frame's origin
    noise_hu: float
    table: tuple[float, float] | None  # (y of the table top in the patient frame, curvature) or None


def _draw_scan(rng: np.random.Generator, anat: _Anatomy, phase: str | None, fov_cut: bool | None, cut_probability: float) -> _Scan:
    """Draw the phase, tissue HU, scanned z range (mm), patient offset, noise level and table."""
    if phase is None:
        phase = str(rng.choice(PHASES, p=[0.2, 0.3, 0.5]))
    hu = _draw_hu(rng, phase)
    cut = rng.random() < cut_probability if fov_cut is None else bool(fov_cut)
    mode = str(rng.choice(["top", "bottom", "both"], p=[0.45, 0.35, 0.2])) if cut else "none"
    h = anat.h
    z_hi = anat.z_top_organs + rng.uniform(15, 70) * h
    z_lo = max(anat.z_bottom_organs - rng.uniform(15, 80) * h, -150 * h)
    if mode in ("top", "both"):  # cuts the liver dome, spleen, stomach fundus, maybe the oesophagus
        z_hi = rng.uniform(40 * h, anat.z_top_organs - 25 * h)
    if mode in ("bottom", "both"):  # cuts the lower poles of the kidneys and the duodenum
        z_lo = rng.uniform(anat.z_bottom_organs + 15 * h, -20 * h)
    offset = np.array([rng.normal(0, 10), rng.uniform(-25, 15), rng.uniform(-900, 200)])
    noise = rng.uniform(8, 22) * (1 + 0.6 * anat.obesity)
    table = (anat.body["y_post"] + rng.uniform(2, 15), rng.uniform(0.0, 0.0015)) if rng.random() < 0.8 else None
    return _Scan(phase, hu, mode, (float(z_lo), float(z_hi)), offset, float(noise), table)


def _draw_grid(rng: np.random.Generator, anat: _Anatomy, scan: _Scan, size: str, spacing: Sequence[float] | None) -> _Grid:
    """Draw the voxel grid of the `size` profile: a square in-plane matrix centred on the isocentre
    that fits the patient, and slices over the scanned z range (`spacing` overrides the draw)."""
    prof = _PROFILES[size]
    b = anat.body
    half_x = b["a"] + abs(scan.offset[0])
    half_y = max(b["y_post"] + scan.offset[1], -(b["y_ant"] + scan.offset[1]))
    fov = 2 * max(half_x, half_y) * rng.uniform(1.02, 1.2)
    if spacing is not None:
        sp_xy, sp_z = float(spacing[0]), float(spacing[-1])
        n = prof.matrix[1] if prof.matrix[0] == prof.matrix[1] else int(np.clip(round(fov / sp_xy), *prof.matrix))
    elif prof.matrix[0] == prof.matrix[1]:
        n = prof.matrix[0]
        sp_xy = float(np.clip(fov / n, *prof.spacing_mm))
        sp_z = float(rng.choice(prof.slices_mm))
    else:
        sp_xy = rng.uniform(*prof.spacing_mm)
        n = int(np.clip(8 * round(fov / sp_xy / 8), *prof.matrix))
        sp_z = float(rng.choice(prof.slices_mm))
    sp_xy = round(sp_xy, 4)
    z_lo, z_hi = scan.z_range
    nz = max(2, int((z_hi - z_lo) / sp_z) + 1)
    # In-plane: the scanner's isocentre is at physical (0, 0); the patient frame is shifted by `offset`.
    ax = (np.arange(n) - (n - 1) / 2) * sp_xy
    axes = (ax - scan.offset[0], ax - scan.offset[1], z_lo + np.arange(nz) * sp_z)
    return _Grid(axes, (sp_xy, sp_xy, sp_z), tuple(float(o) for o in scan.offset))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------------------

_LESION_HOSTS = {  # host: (weight, max radius mm, {kind: probability})
    L.LIVER: (0.36, 30.0, {"hypo": 0.55, "hyper": 0.25, "cystic": 0.1, "necrotic": 0.1}),
    L.RIGHT_KIDNEY: (0.1, 24.0, {"hyper": 0.4, "hypo": 0.3, "cystic": 0.3}),
    L.LEFT_KIDNEY: (0.1, 24.0, {"hyper": 0.4, "hypo": 0.3, "cystic": 0.3}),
    L.PANCREAS: (0.12, 14.0, {"hypo": 0.8, "cystic": 0.2}),
    L.SPLEEN: (0.07, 20.0, {"hypo": 0.8, "cystic": 0.2}),
    L.STOMACH: (0.05, 16.0, {"hyper": 0.5, "hypo": 0.5}),
    L.DUODENUM: (0.02, 9.0, {"hyper": 0.5, "hypo": 0.5}),
    L.GALLBLADDER: (0.02, 9.0, {"hyper": 1.0}),
    0: (0.16, 20.0, {"node": 1.0}),
}
_HOST_TISSUE = {
    L.LIVER: "liver",
    L.RIGHT_KIDNEY: "kidney_cortex",
    L.LEFT_KIDNEY: "kidney_cortex",
    L.PANCREAS: "pancreas",
    L.SPLEEN: "spleen",
    L.STOMACH: "gi_wall",
    L.DUODENUM: "gi_wall",
    L.GALLBLADDER: "gallbladder",
    0: "muscle",
}
MAX_LESIONS = 8


def _draw_lesion_count(rng: np.random.Generator, lesion_free_fraction: float) -> int:
    """0 with probability `lesion_free_fraction`, else 1-8 (geometric, mean ~2)."""
    if rng.random() < lesion_free_fraction:
        return 0
    return int(min(rng.geometric(0.45), MAX_LESIONS))


def _draw_lesions(rng: np.random.Generator, anat: _Anatomy, scan: _Scan, count: int) -> list[_Lesion]:
    """Draw `count` lesions. The first lies deep in a large organ inside the field of view, so that a
    case asked to have lesions always shows at least one; the others may fall outside the view."""
    z_lo, z_hi = scan.z_range
    hosts = list(_LESION_HOSTS)
    weights = np.array([_LESION_HOSTS[k][0] for k in hosts])
    lesions = []
    for i in range(count):
        if i == 0:
            host = int(rng.choice([L.LIVER, L.RIGHT_KIDNEY, L.LEFT_KIDNEY, L.SPLEEN], p=[0.55, 0.15, 0.15, 0.15]))
            radius = rng.uniform(7.0, 18.0)
        else:
            host = int(rng.choice(hosts, p=weights / weights.sum()))
            radius = float(np.exp(rng.uniform(np.log(4.0), np.log(_LESION_HOSTS[host][1]))))
        kinds = _LESION_HOSTS[host][2]
        kind = str(rng.choice(list(kinds), p=list(kinds.values())))
        if host == 0:
            if rng.random() < 0.5:  # para-aortic node
                ao = anat.organs[L.AORTA]
                c = ao.seeds(rng) + np.array([rng.choice([-1, 1]) * rng.uniform(18, 28) * anat.s, rng.uniform(-8, 8), 0])
            else:  # mesenteric / peritoneal
                lo, hi = anat.extra["bowel_fields"][3:]
                c = rng.uniform(lo, hi)
        else:
            c = anat.organs[host].seeds(rng)
        if i == 0:
            for _ in range(20):  # redraw until the centre lies inside the field of view
                if z_lo + radius + 4 <= c[2] <= z_hi - radius - 4:
                    break
                c = anat.organs[host].seeds(rng)
            else:  # the liver always spans z 0-40 mm, which every field of view contains
                host, kind = L.LIVER, "hypo"
                c = anat.organs[L.LIVER].seeds(rng)
                c[2] = 20 * anat.h
        if kind == "hypo":
            contrast = -rng.uniform(25, 65)
        elif kind == "hyper":
            contrast = rng.uniform(35, 90) if scan.phase == "arterial" else rng.uniform(15, 45)
        elif kind == "cystic":
            contrast = rng.uniform(2, 18)
        elif kind == "necrotic":
            contrast = -rng.uniform(20, 40)
        else:  # node
            contrast = rng.uniform(-15, 20)
        radii = radius * rng.uniform(0.8, 1.2, 3)
        rot = _rotation(rng, 90)
        lo, hi = c - radii.max() * 1.4 - 3, c + radii.max() * 1.4 + 3
        sdf = _perturb(_ellipsoid_sdf(c, radii, rot), _Field(rng, lo, hi, max(radius, 5.0), 0.15 * radius))
        d = min(1.5, radius / 3)
        lesions.append(_Lesion(host, kind, c, float(radius), _Shape(sdf, lo, hi, (d, d, d)), float(contrast)))
    return lesions


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _tex(anat: _Anatomy, axes: Axes, fine: bool = False) -> np.ndarray:
    """The anatomy's smooth unit texture (correlation ~18 mm, or ~6 mm if `fine`) on the box `axes`."""
    field, detail = (anat.fine_texture, 2.0) if fine else (anat.texture, 5.0)
    coarse, plans = _coarsen(axes, (detail,) * 3)
    return _upsample(field(*coarse), plans)


def _background(anat: _Anatomy, scan: _Scan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """HU of air, table, subcutaneous fat, skin, abdominal-wall and back muscles and visceral fat."""
    hu = scan.hu
    b = anat.body
    s = anat.s
    X = x.astype(np.float32)[:, None]
    Y = y.astype(np.float32)[None, :]
    # Muscle wall outline (ellipse around the cavity) and the body outline over it (fat).
    yc, ca, cb = anat.cavity
    ma, mb = ca + b["muscle_lat"], cb + b["muscle_ant"]
    r_m = np.sqrt((X / ma) ** 2 + ((Y - yc) / mb) ** 2)
    yc_o = 0.5 * (b["y_post"] + b["y_ant"])
    bo = 0.5 * (b["y_post"] - b["y_ant"])
    u, v = X / b["a"], (Y - yc_o) / bo
    theta = np.arctan2(v, u)
    p = np.where(v > 0, b["flat"], 2.0).astype(np.float32)
    rho = (np.abs(u) ** p + np.abs(v) ** p) ** (1 / p)
    wob = 1.0 + sum(w * np.cos((k + 2) * theta + ph) for k, (w, ph) in enumerate(zip(b["wobble"], b["phase"])))
    rho /= wob
    r_mm = np.sqrt(X**2 + (Y - yc_o) ** 2)
    radius = r_mm / np.maximum(rho, 1e-3)  # outline radius (mm) along each in-plane ray
    wall_radius = r_mm / np.maximum(r_m, 1e-3)
    fat = np.maximum(radius - wall_radius, 3.0)
    taper = 1.0 + b["taper"] * (z / 150.0) + 0.04 * np.sin(z / 70.0 + b["phase"][0])
    d_body = r_mm[:, :, None] - (wall_radius[:, :, None] + fat[:, :, None] * taper.astype(np.float32)[None, None, :])

    # In-plane tissue map inside the body.
    d_wall = (r_m - 1.0) * min(ma, mb)
    d_cav = _cavity_sdf2(anat, x, y)
    tissue = np.full(X.shape[:1] + Y.shape[1:], hu["fat"], np.float32)
    tissue += 6 * _tex(anat, (x, y, np.zeros(1)))[:, :, 0]
    muscle = (d_wall < 0) & (d_cav > 0)
    linea_alba = (np.abs(X) < 5 * s) & (Y < yc - 0.5 * cb)
    tissue[muscle & ~linea_alba] = hu["muscle"]
    tissue[d_cav <= 0] = hu["visceral_fat"]
    yv0 = float(anat.yv(0.0))
    for side in (-1, 1):  # erector spinae
        d = np.sqrt(((X - side * 36 * s) / (27 * s)) ** 2 + ((Y - yv0 - 46 * s) / (22 * s)) ** 2)
        tissue[d < 1] = hu["muscle"]
    # Table: a curved carbon plate with a foam core, below the patient.
    if scan.table is not None:
        y0, curv = scan.table
        yt = y0 + curv * X**2
        plate = (np.abs(X) < 240) & (((Y > yt) & (Y < yt + 3)) | ((Y > yt + 30) & (Y < yt + 34)))
        foam = (np.abs(X) < 240) & (Y >= yt + 3) & (Y <= yt + 30)
    out = np.empty(d_body.shape, np.float32)
    skin = d_body > -2.0
    out[:] = tissue[:, :, None]
    np.copyto(out, np.float32(hu["skin"]), where=skin)
    alpha = np.clip(0.5 - d_body / 1.2, 0.0, 1.0)
    out = -1000.0 + (out + 1000.0) * alpha
    if scan.table is not None:
        out[plate] = hu["table"]
        out[foam] = -950.0
    return out


def _paint_bowel(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> None:
    """Small-bowel loops and the colon (label 0), with walls, fluid, gas, stool or oral contrast."""
    hu = scan.hu
    e = anat.extra
    g1, g2, g3, lo, hi = e["bowel_fields"]
    r = e["bowel_radius"]
    yv0 = float(anat.yv(0.0))
    contrast = e["gut_contrast"]

    def lumen_hu(f, axes):
        # Content by a smooth field: collapsed loops (soft tissue), fluid (or oral contrast), gas.
        t = g3(*axes)
        fluid = hu["fluid"] + (230.0 if contrast else 0.0)
        out = np.where(t < -0.5, np.float32(hu["gi_wall"] - 15), np.float32(fluid))
        out[t > 1.5] = -990.0
        out += 10 * _tex(anat, axes, fine=True)
        out[f > -2.5] = hu["gi_wall"]
        return out

    def bowel_sdf(x, y, z):
        # Tubes around the curves where two smooth random fields both vanish (|g| / |grad g| ~ distance).
        a, b = g1(x, y, z), g2(x, y, z)
        f = np.sqrt(a * a + b * b) * 10.5 - r
        region = np.maximum(_cavity_sdf2(anat, x, y, 4.0), (y.astype(np.float32) - (yv0 - 12 * anat.s))[None, :])[:, :, None]
        return np.maximum(np.maximum(f, region), (z.astype(np.float32) - hi[2])[None, None, :])

    canvas.paint(_Shape(bowel_sdf, lo, hi, (2.5, 2.5, 2.5)), lumen_hu)

    # Colon: wall first over every piece, then the contents (stool and gas), so joints stay clean.
    pieces = [_capsule_shape(pts, np.full(len(pts), rad), (2.0, 2.0, 2.0), margin=4) for pts, rad in e["colon"]]
    for shape in pieces:
        canvas.paint(shape, hu["gi_wall"])
    for shape in pieces:
        inner = _Shape(lambda x, y, z, sdf=shape.sdf: sdf(x, y, z) + 2.5, shape.lo, shape.hi, shape.detail)
        canvas.paint(inner, lambda f, axes: np.where(_tex(anat, axes, True) > 0.5, np.float32(-950.0), np.float32(-20.0)) + 25 * _tex(anat, axes))


def _paint_thorax(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> None:
    """Lung bases above the diaphragm domes and the heart above the central tendon (label 0)."""
    hu = scan.hu
    s = anat.s
    yc, ca, cb = anat.cavity
    z_dome_min = min(anat.extra["dome_r"], anat.extra["dome_l"]) - 90 * anat.h
    lo = np.array([-ca, yc - cb, z_dome_min])
    hi = np.array([ca, yc + cb, 400.0])

    def lung_sdf(x, y, z):
        X = x.astype(np.float32)[:, None]
        Y = y.astype(np.float32)[None, :]
        cav = _cavity_sdf2(anat, x, y, 2.0)
        yv0 = float(anat.yv(0.0))
        spine = (np.sqrt((X / (50 * s)) ** 2 + ((Y - yv0 - 22 * s) / (50 * s)) ** 2) - 1) * 45 * s
        media = (np.sqrt(((X - 8 * s) / (32 * s)) ** 2 + ((Y + 30 * s) / (100 * s)) ** 2) - 1) * 30 * s
        f2 = np.maximum(np.maximum(cav, -spine), -media)
        dome = anat.dome(X, Y)
        return np.maximum(f2[:, :, None], (dome[:, :, None] + 5.0) - z.astype(np.float32)[None, None, :])

    def lung_hu(f, axes):
        t = _tex(anat, axes, fine=True)
        vessels = np.clip((t - 1.3) * 2.5, 0, 1) * 750  # a few vessels crossing the slices
        vessels += hu["lung"] + 15 * t
        return vessels

    canvas.paint(_Shape(lung_sdf, lo, hi, (2.0, 2.0, 2.0)), lung_hu)
    c, r = anat.extra["heart"]
    heart = _ellipsoid_sdf(c, r)

    def heart_sdf(x, y, z):
        dome = anat.dome(x.astype(np.float32)[:, None], y.astype(np.float32)[None, :])
        return np.maximum(heart(x, y, z), (dome[:, :, None] + 2.0) - z.astype(np.float32)[None, None, :])

    canvas.paint(
        _Shape(heart_sdf, c - r - 5, c + r + 5, (2.5, 2.5, 2.5)),
        lambda f, axes: np.where(f > -11, np.float32(hu["myocardium"]), np.float32(hu["heart_blood"])),
    )


def _paint_tubes(canvas: _Canvas, tubes, hu_value: float, detail=(1.5, 1.5, 2.0), **kw) -> None:
    """Paint each (points (N, 3) mm, radii (N,) mm) capsule chain of `tubes` with one HU value."""
    for pts, rad in tubes:
        canvas.paint(_capsule_shape(pts, rad, detail, margin=4), hu_value, **kw)


def _paint_muscles(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> None:
    """Psoas (growing caudally beside the spine), quadratus lumborum and the gluteal muscles."""
    s, h = anat.s, anat.h
    for side in (-1, 1):
        zs = np.array([25, 0, -40, -80, -120, -170]) * h
        pts = np.array([[side * (26 + 0.12 * (25 - z / h)) * s, float(anat.yv(z)) - 2 * s - 0.06 * (25 - z / h) * s, z] for z in zs])
        rad = np.clip(4 + 0.13 * (25 - zs / h), 4, 25) * s
        canvas.paint(_capsule_shape(pts, rad, (2.0, 2.0, 4.0), yscale=1.15), scan.hu["muscle"] - 3)
        ql = np.array([[side * 60 * s, float(anat.yv(z)) + 22 * s, z] for z in np.array([30, -20, -70, -120]) * h])
        canvas.paint(_capsule_shape(ql, np.array([7, 10, 12, 10]) * s, (2.0, 2.0, 4.0), yscale=1.6), scan.hu["muscle"] - 3)
    for _, _, crest, glut, glut_r in anat.extra["ilium"]:
        canvas.paint(_plate_shape(glut, glut_r, crest + 6, scan.z_range[0] - 5, (2.0, 2.0, 2.0)), scan.hu["muscle"])


def _paint_organs(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> None:
    """The 13 labelled organs with their internal structure, in an order where later ones win."""
    hu = scan.hu
    e = anat.extra
    O = anat.organs

    def flat(value, amp=4.0, fine_amp=0.0):
        def f(_, axes):
            out = value + amp * _tex(anat, axes)
            if fine_amp:
                out += fine_amp * _tex(anat, axes, fine=True)
            return out

        return f

    canvas.paint(O[L.LIVER].shape, flat(hu["liver"], 4.0, 2.0), L.LIVER)
    _paint_tubes(canvas, e["veins_liver"], hu["hepatic_vein"], label=None, within=lambda sl: canvas.label[sl] == L.LIVER)
    spleen_fine = 22.0 if scan.phase == "arterial" else 2.0
    canvas.paint(O[L.SPLEEN].shape, flat(hu["spleen"], 4.0, spleen_fine), L.SPLEEN)

    def kidney_hu(f, axes):
        depth = np.clip((-f - 6.0) / 2.0 + 0.5, 0, 1)  # 0 in the cortex, 1 from 7 mm deep
        pyramids = np.clip((0.3 - _tex(anat, axes, fine=True)) * 2.0, 0, 1)
        medulla = depth * pyramids
        return hu["kidney_cortex"] + (hu["kidney_medulla"] - hu["kidney_cortex"]) * medulla + 3 * _tex(anat, axes)

    canvas.paint(O[L.RIGHT_KIDNEY].shape, kidney_hu, L.RIGHT_KIDNEY)
    canvas.paint(O[L.LEFT_KIDNEY].shape, kidney_hu, L.LEFT_KIDNEY)

    lumen_value = hu["fluid"] + (230.0 if e["gut_contrast"] else 0.0)
    air_esophagus = e["stomach"][2] > 0.2

    def esophagus_hu(f, axes):
        out = np.full(f.shape, hu["esophagus"], np.float32)
        if air_esophagus:
            out[f < -6.0] = -900.0  # a thin air lumen
        return out

    canvas.paint(O[L.ESOPHAGUS].shape, esophagus_hu, L.ESOPHAGUS)

    st_pts, _, air_frac = e["stomach"]
    y_air = st_pts[:, 1].min() + air_frac * (st_pts[:, 1].max() - st_pts[:, 1].min())

    def stomach_hu(f, axes):
        y = axes[1].astype(np.float32)[None, :, None]
        lumen = np.where(y < y_air, np.float32(-990.0), np.float32(lumen_value)) + 10 * _tex(anat, axes, fine=True)
        return np.where(f > -4.0, np.float32(hu["gi_wall"]), lumen)

    canvas.paint(O[L.STOMACH].shape, stomach_hu, L.STOMACH)

    def pancreas_hu(f, axes):
        lob = np.clip(_tex(anat, axes, fine=True) - 0.5, 0, 1.2)
        return hu["pancreas"] + 4 * _tex(anat, axes) - 45 * lob

    canvas.paint(O[L.PANCREAS].shape, pancreas_hu, L.PANCREAS)

    def duodenum_hu(f, axes):
        t = _tex(anat, axes, fine=True)
        lumen = np.where(t > 1.0, np.float32(-990.0), np.float32(lumen_value))
        return np.where(f > -2.5, np.float32(hu["gi_wall"]), lumen)

    canvas.paint(O[L.DUODENUM].shape, duodenum_hu, L.DUODENUM)
    canvas.paint(
        O[L.GALLBLADDER].shape,
        lambda f, axes: np.where(f > -1.5, np.float32(hu["gi_wall"] - 10), np.float32(hu["gallbladder"])),
        L.GALLBLADDER,
    )
    canvas.paint(O[L.RIGHT_ADRENAL].shape, flat(hu["adrenal"], 3.0), L.RIGHT_ADRENAL)
    canvas.paint(O[L.LEFT_ADRENAL].shape, flat(hu["adrenal"], 3.0), L.LEFT_ADRENAL)
    canvas.paint(O[L.IVC].shape, flat(hu["ivc"], 4.0), L.IVC)
    calcified = e["calcified"]

    def aorta_hu(f, axes):
        out = hu["aorta"] + 3 * _tex(anat, axes)
        if calcified:
            plaque = (f > -2.0) & (_tex(anat, axes, fine=True) > 1.2)
            out = np.where(plaque, np.float32(600.0), out)
        return out

    canvas.paint(O[L.AORTA].shape, aorta_hu, L.AORTA)


def _paint_bones(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> None:
    """Vertebrae (bodies with cortex and marrow, discs, arches, canal), iliac wings and ribs (label 0)."""
    hu = scan.hu
    s = anat.s
    sp = anat.extra["spine"]
    z_lo, z_hi = scan.z_range
    yv_lo = float(min(anat.yv(z_lo), anat.yv(z_hi)))
    yv_hi = float(max(anat.yv(z_lo), anat.yv(z_hi)))
    lo = np.array([-60 * s, yv_lo - sp["ry"] - 6, z_lo - 5])
    hi = np.array([60 * s, yv_hi + 75 * s, z_hi + 5])

    def local(x, y, z):
        X = x.astype(np.float32)[:, None, None]
        Yr = y.astype(np.float32)[None, :, None] - anat.yv(z).astype(np.float32)[None, None, :]
        Z = z.astype(np.float32)
        dz = (np.mod(Z - sp["phase"], sp["period"]) - 0.5 * sp["period"])[None, None, :]
        thoracic = np.clip((Z - 20 * anat.h) / (40 * anat.h), 0, 1)[None, None, :]
        return X, Yr, dz, thoracic

    canal_y, canal_r = sp["ry"] + 10 * s, 8.5 * s

    def body_2d(X, Yr, thoracic):
        rx = sp["rx"] * (1 - 0.25 * thoracic)
        ry = sp["ry"] * (1 - 0.15 * thoracic)
        oval = (np.sqrt((X / rx) ** 2 + (Yr / ry) ** 2) - 1) * ry
        return np.maximum(oval, canal_r + 6 * s - np.sqrt(X**2 + (Yr - canal_y) ** 2))  # concave back

    def disc_sdf(x, y, z):
        X, Yr, _, th = local(x, y, z)
        return body_2d(X, Yr, th)

    def vertebra_sdf(x, y, z):
        X, Yr, dz, th = local(x, y, z)
        return np.maximum(body_2d(X, Yr, th), np.abs(dz) - 0.5 * sp["height"])

    def seg(X, Y, a, b, r):
        """2-D distance (mm) to the segment a-b (in-plane), minus radius r."""
        ab = np.subtract(b, a)
        t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1]) / float(ab @ ab), 0, 1)
        return np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2) - r

    def arch_sdf(x, y, z):
        X, Yr, dz, _ = local(x, y, z)
        Xa = np.abs(X)
        h = anat.h
        root = (canal_r + 3 * s, canal_y)
        roof = (0.0, canal_y + canal_r + 4 * s)
        pedicle = seg(Xa, Yr, (0.5 * sp["rx"], sp["ry"] - 4 * s), root, 4.5 * s)
        lamina = seg(Xa, Yr, root, roof, 3.8 * s)
        spinous = np.minimum(seg(Xa, Yr, roof, (0.0, roof[1] + 26 * s), 3.5 * s), seg(Xa, Yr, (0.0, roof[1] + 24 * s), (0.0, roof[1] + 30 * s), 5.5 * s))
        lumbar = np.clip((30 * h - z.astype(np.float32)) / (10 * h), 0, 1)[None, None, :]
        tip_x = root[0] + 6 * s + 28 * s * lumbar
        transverse = np.sqrt((Xa - np.clip(Xa, root[0], tip_x)) ** 2 + (Yr - canal_y - 1.5 * s) ** 2) - 4.0 * s + 0.05 * (Xa - root[0]).clip(0)
        half = 0.5 * sp["height"]
        arch = np.maximum(np.minimum(pedicle, lamina), np.abs(dz + 3 * h) - half - 1)
        spinous = np.maximum(spinous, np.abs(dz + 3 * h + 0.35 * np.maximum(Yr - roof[1], 0)) - half + 3)
        transverse = np.maximum(transverse, np.abs(dz) - 7 * h)
        return np.minimum(np.minimum(arch, spinous), transverse)

    def canal_sdf(x, y, z):
        X, Yr, _, _ = local(x, y, z)
        return np.sqrt(X**2 + (Yr - canal_y) ** 2) - canal_r

    def bone_hu(f, axes):
        return np.where(f > -1.8, np.float32(hu["bone_cortex"]), hu["bone_marrow"] + 40 * _tex(anat, axes, fine=True))

    canvas.paint(_Shape(disc_sdf, lo, hi, (1.0, 1.0, 2.0)), hu["disc"])
    canvas.paint(_Shape(vertebra_sdf, lo, hi, (1.0, 1.0, 1.0)), bone_hu)
    canvas.paint(_Shape(arch_sdf, lo + [0, 2 * sp["ry"], 0], hi, (1.0, 1.0, 1.0)), bone_hu)
    canvas.paint(_Shape(canal_sdf, lo, hi, (1.0, 1.0, 2.0)), hu["csf"])

    for wing, wing_r, crest, _, _ in anat.extra["ilium"]:
        canvas.paint(_plate_shape(wing, wing_r, crest, z_lo - 5, (1.0, 1.0, 1.5)), bone_hu)

    # Ribs: cortex over the whole rib first, then the marrow, so segment joints stay clean.
    segments = []
    for pts, rad, cart in anat.extra["ribs"]:
        for i in range(len(pts) - 1):
            seg = _capsule_shape(pts[i : i + 2], [rad, rad], (1.0, 1.0, 1.0), margin=3)
            segments.append((seg, cart[i + 1]))
    for seg, cart in segments:
        canvas.paint(seg, hu["cartilage"] if cart else hu["bone_cortex"])
    for seg, cart in segments:
        if not cart:
            inner = _Shape(lambda x, y, z, sdf=seg.sdf: sdf(x, y, z) + 1.8, seg.lo, seg.hi, seg.detail)
            canvas.paint(inner, hu["bone_marrow"])


def _paint_lesions(canvas: _Canvas, anat: _Anatomy, scan: _Scan) -> list[dict[str, Any]]:
    """Paint the lesions (label 14) inside their host organ, or in fat and soft tissue outside organs.

    Returns:
        One record per lesion: host, kind, radius_mm, voxels (labelled voxels; 0 when out of view).
    """
    records = []
    for les in anat.lesions:
        host_hu = scan.hu[_HOST_TISSUE[les.host]]
        if les.host == L.GALLBLADDER:
            host_hu = scan.hu["gi_wall"]

        def within(sl, les=les):
            lab = canvas.label[sl]
            if les.host:
                return lab == les.host
            img = canvas.image[sl]
            return (lab == 0) & (img > -200) & (img < 150)

        def lesion_hu(f, axes, les=les, host_hu=host_hu):
            t = _tex(anat, axes, fine=True)
            if les.kind == "cystic":
                return les.contrast + 3 * t
            if les.kind == "necrotic":
                core = f < -0.35 * les.radius
                return np.where(core, np.float32(15.0), np.float32(host_hu + 25.0)) + 5 * t
            if les.kind == "node":
                return scan.hu["muscle"] + les.contrast + 5 * t
            return host_hu + les.contrast + 0.2 * abs(les.contrast) * t

        res = canvas.paint(les.shape, lesion_hu, L.LESION, within=within)
        voxels = int(res[1].sum()) if res is not None else 0
        records.append({"host": L.name_of(les.host) if les.host else "elsewhere", "kind": les.kind, "radius_mm": round(les.radius, 1), "voxels": voxels, "_center": les.center})
    return records


def _add_ct_noise(image: np.ndarray, rng: np.random.Generator, spacing: Sequence[float], sigma: float) -> None:
    """Add CT-like Gaussian noise of standard deviation `sigma` HU to `image` (in place, row chunks).

    With fine pixels (< 1.2 mm) the noise is drawn at half the in-plane resolution and interpolated at
    quarter-pixel offsets (fine pixel j lies at coarse position (j - 1/2) / 2), which correlates it
    over about two pixels in-plane, like the grain of filtered back-projection, with the same
    variance everywhere; slices stay independent. Coarser pixels get white noise.
    """
    shape = image.shape
    if spacing[0] >= 1.2:
        for k0 in range(0, shape[0], 16):
            chunk = rng.standard_normal((min(16, shape[0] - k0),) + shape[1:], dtype=np.float32)
            chunk *= np.float32(sigma)
            image[k0 : k0 + 16] += chunk
        return
    half = ((shape[0] + 1) // 2, (shape[1] + 1) // 2, shape[2])
    coarse = rng.standard_normal(half, dtype=np.float32)
    coarse *= np.float32(sigma / 0.625)  # each interpolation (3 a + b) / 4 keeps 0.625 of the std
    plans = []
    for a in range(2):
        pos = np.clip((np.arange(shape[a]) - 0.5) / 2.0, 0.0, half[a] - 1.0)
        i0 = np.minimum(pos.astype(np.intp), half[a] - 2)
        plans.append((i0, (pos - i0).astype(np.float32)))
    for rows, values in _upsample_rows(coarse, plans + [None]):
        image[rows] += values


# ---------------------------------------------------------------------------------------------
# Orientation
# ---------------------------------------------------------------------------------------------

_AXIS_OF_LETTER = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def _parse_orientation(code: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Split an ITK orientation code ('LPS', 'RAS', 'PLI', ...) into (patient axis, sign) per array axis."""
    if not isinstance(code, str) or len(code) != 3 or any(c not in _AXIS_OF_LETTER for c in code.upper()):
        raise ConfigError(f"orientation must be a 3-letter code of L/R, P/A, S/I (e.g. 'LPS', 'RAS', 'PLI'), got {code!r}")
    axes, signs = zip(*(_AXIS_OF_LETTER[c] for c in code.upper()))
    if sorted(axes) != [0, 1, 2]:
        raise ConfigError(f"orientation {code!r} names a patient axis twice")
    return axes, signs  # type: ignore[return-value]


def _orient(arrays: Sequence[np.ndarray], grid: _Grid, code: str):
    """Store canonical (LPS, identity-direction) arrays in orientation `code`, keeping the physical anatomy.

    Returns:
        (arrays as views in the new axis order, spacing, origin, direction) with
        ``direction[:, k] = sign_k * e_{axis_k}`` and the origin moved to the new first voxel.
    """
    axes, signs = _parse_orientation(code)
    origin = np.array([grid.axes[a][0] + grid.shift[a] for a in range(3)])
    direction = np.zeros((3, 3))
    for k, (a, sign) in enumerate(zip(axes, signs)):
        direction[a, k] = sign
        if sign < 0:
            origin[a] += (len(grid.axes[a]) - 1) * grid.spacing[a]
    out = []
    for arr in arrays:
        arr = arr.transpose(axes)
        flips = tuple(k for k in range(3) if signs[k] < 0)
        out.append(np.flip(arr, flips) if flips else arr)
    spacing = tuple(float(grid.spacing[a]) for a in axes)
    return out, spacing, tuple(float(o) for o in origin), direction


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

@dataclass
class _Case:
    image: Volume
    label: Volume
    organs: np.ndarray  # the label map before lesions were painted, in the stored orientation
    meta: dict[str, Any]


def _as_rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool) and rng_or_seed >= 0:
        return np.random.default_rng(int(rng_or_seed))
    raise ConfigError(f"rng_or_seed must be a numpy Generator or a non-negative integer, got {rng_or_seed!r}")


def _synthesize(
    rng: np.random.Generator,
    *,
    size: str,
    phase: str | None,
    lesions: int | None,
    fov_cut: bool | None,
    orientation: str | None,
    spacing: Sequence[float] | None,
) -> _Case:
    _check_size(size)
    if phase is not None and phase not in PHASES:
        raise ConfigError(f"phase must be one of {', '.join(PHASES)} or None, got {phase!r}")
    if lesions is not None and (isinstance(lesions, bool) or not isinstance(lesions, (int, np.integer)) or not 0 <= lesions <= 50):
        raise ConfigError(f"lesions must be an integer in 0-50 or None, got {lesions!r}")
    if orientation is not None:
        _parse_orientation(orientation)
    if spacing is not None:
        sp = np.asarray(spacing, float)
        if sp.shape not in ((2,), (3,)) or not np.all(np.isfinite(sp)) or np.any(sp <= 0) or np.any(sp > 10):
            raise ConfigError(f"spacing must be (in-plane, slice) or (x, y, z) in mm, each in (0, 10], got {spacing!r}")
        if len(sp) == 3 and sp[0] != sp[1]:
            raise ConfigError(f"spacing: the two in-plane spacings must be equal, got {spacing!r}")
    t0 = time.perf_counter()
    anat_rng, scan_rng, lesion_rng, grid_rng, noise_rng = rng.spawn(5)
    anat = _build_anatomy(anat_rng)
    scan = _draw_scan(scan_rng, anat, phase, fov_cut, DEFAULT_FOV_CUT_FRACTION)
    if lesions is None:
        lesions = _draw_lesion_count(lesion_rng, DEFAULT_LESION_FREE_FRACTION)
    anat.lesions = _draw_lesions(lesion_rng, anat, scan, int(lesions))
    if orientation is None:
        orientation = "LPS"
        if scan_rng.random() < DEFAULT_ORIENTED_FRACTION:
            orientation = str(scan_rng.choice(ORIENTATIONS))
    grid = _draw_grid(grid_rng, anat, scan, size, spacing)

    # Background (air, table, body wall, fat) on a coarse grid, upsampled to the voxel grid.
    coarse, plans = _coarsen(grid.axes, (1.5, 1.5, 8.0))
    background = _background(anat, scan, *coarse)
    image = np.empty(grid.shape, np.float32)
    for rows, values in _upsample_rows(background, plans):
        image[rows] = values
    del background
    canvas = _Canvas(grid, image, edge_mm=0.8 * grid.spacing[0])
    _paint_thorax(canvas, anat, scan)
    _paint_bowel(canvas, anat, scan)
    _paint_muscles(canvas, anat, scan)
    hu = scan.hu
    e = anat.extra
    _paint_tubes(canvas, e["veins_outside"], hu["portal_vein"])
    _paint_tubes(canvas, e["arteries"], hu["aorta"], detail=(1.0, 1.0, 1.5))
    _paint_tubes(canvas, e["iliac"][:2], hu["aorta"])
    _paint_tubes(canvas, e["iliac"][2:], hu["ivc"])
    _paint_organs(canvas, anat, scan)
    _paint_bones(canvas, anat, scan)
    organs_only = canvas.label.copy() if anat.lesions else canvas.label
    lesion_records = _paint_lesions(canvas, anat, scan)

    # Noise, the reconstruction circle, HU as int16.
    _add_ct_noise(image, noise_rng, grid.spacing, scan.noise_hu * math.sqrt(2.5 / grid.spacing[2]) * min(1.0, 0.75 / grid.spacing[0]))
    n = grid.shape[0]
    r = (np.arange(n) - (n - 1) / 2) * grid.spacing[0]
    outside = (r[:, None] ** 2 + r[None, :] ** 2) > (0.5 * n * grid.spacing[0]) ** 2
    image[outside] = OUTSIDE_FOV_HU
    np.clip(image, HU_MIN, HU_MAX, out=image)
    ct = np.rint(image, out=image).astype(np.int16)
    del image
    counts = sum(np.bincount(slab.ravel(), minlength=256) for slab in np.array_split(canvas.label, 8))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    (ct_o, lab_o, org_o), spacing_o, origin_o, direction_o = _orient([ct, canvas.label, organs_only], grid, orientation)
    visible = [rec for rec in lesion_records if rec["voxels"] > 0]
    meta = {
        "size": size,
        "phase": scan.phase,
        "orientation": orientation_code(direction_o),
        "shape": [int(v) for v in ct_o.shape],
        "spacing": [round(v, 6) for v in spacing_o],
        "origin": [round(v, 3) for v in origin_o],
        "direction": direction_o.astype(int).ravel().tolist(),
        "fov_cut": scan.fov_cut,
        "patient": {"scale": round(anat.s, 3), "height_scale": round(anat.h, 3), "obesity": round(anat.obesity, 3)},
        "noise_hu": round(scan.noise_hu, 1),
        "oral_contrast": bool(e["gut_contrast"]),
        "organs_present": [i for i in L.ORGAN_IDS if counts[i] > 0],
        "volumes_ml": {L.name_of(i): round(counts[i] * voxel_ml, 2) for i in L.ALL_FOREGROUND_IDS if counts[i] > 0},
        "lesion_count": len(visible),
        "lesion_volume_ml": round(counts[L.LESION] * voxel_ml, 2),
        "lesions": [
            {k: v for k, v in rec.items() if k != "_center"} | {"center_lps_mm": [round(float(c + o), 1) for c, o in zip(rec["_center"], grid.shift)]}
            for rec in visible
        ],
    }
    log.debug("synthesised a %s case %s in %.2f s", size, meta["shape"], time.perf_counter() - t0)
    image_vol = Volume(ct_o, spacing_o, origin_o, direction_o)
    label_vol = Volume(lab_o, spacing_o, origin_o, direction_o)
    return _Case(image_vol, label_vol, org_o, meta)


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
    case = _synthesize(
        _as_rng(rng_or_seed), size=size, phase=phase, lesions=lesions, fov_cut=fov_cut, orientation=orientation, spacing=spacing
    )
    return case.image, case.label, case.meta


# ---------------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------------

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


def _write_json_atomic(data: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _annotate(case: _Case, regime: str, rng: np.random.Generator, partial_lesion_fraction: float) -> tuple[np.ndarray | None, list[int]]:
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


def generate_cohort(out_dir: str | os.PathLike, config: SynthConfig, *, progress: bool = True) -> dict[str, Any]:
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

    Returns:
        The manifest (as written).

    Raises:
        ConfigError: `out_dir` is a file or a non-empty folder that is not a synthetic cohort.
    """
    from tqdm.auto import tqdm

    from flareseg import __version__

    out = Path(out_dir)
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
    for index, regime in enumerate(tqdm(regimes, desc="synth", unit="case", disable=not progress)):
        name = f"{config.prefix}_{index + 1:04d}"
        choice = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2, index)))
        if regime == "lesion":
            n_lesions = max(1, _draw_lesion_count(choice, 0.0))
        else:
            n_lesions = _draw_lesion_count(choice, config.lesion_free_fraction)
        cut = regime != "full" and bool(choice.random() < config.fov_cut_fraction)
        orientation = str(choice.choice(ORIENTATIONS)) if choice.random() < config.oriented_fraction else "LPS"
        case = _synthesize(
            case_rng(config.seed, index), size=config.size, phase=None, lesions=n_lesions, fov_cut=cut, orientation=orientation, spacing=None
        )
        label_array, annotated = _annotate(case, regime, choice, config.partial_lesion_fraction)
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
        entry = {
            "case": name,
            "index": index,
            "split": "val" if regime == "val" else "train",
            "regime": "full" if regime == "val" else regime,
            "image": image_rel,
            "label": label_rel,
            "labels_annotated": annotated,
            "labels_in_file": in_file,
        } | case.meta
        manifest["cases"].append(entry)
        _write_json_atomic(manifest, out / MANIFEST_NAME)
        log.debug("%s: %s, %s, %d lesion(s)", name, entry["regime"], case.meta["orientation"], case.meta["lesion_count"])
    manifest["complete"] = True
    _write_json_atomic(manifest, out / MANIFEST_NAME)
    log.info(
        "wrote %d synthetic cases (%s; %d validation) to %s in %.1f s",
        len(regimes),
        ", ".join(f"{k} {v}" for k, v in counts.items()),
        config.val_cases,
        out,
        time.perf_counter() - t0,
    )
    return manifest


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def plot_case(image: Volume, label: Volume, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save a PNG of a few axial slices and one coronal slice, each plain and with the labels overlaid.

    The volumes are reoriented to LPS first, and shown in radiological convention (patient's right
    on the image's left, anterior up in axial slices, superior up in the coronal slice) with an
    abdominal window (W 400, L 40) and the colours of :func:`flareseg.labels.colormap`.

    Args:
        image: CT in HU.
        label: label map (ids 0-14) on the image's grid.
        path: the PNG to write.
        title: optional figure title.

    Returns:
        The written path.
    """
    import SimpleITK as sitk
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct = Volume.from_sitk(sitk.DICOMOrient(image.to_sitk(), "LPS"))
    lab = Volume.from_sitk(sitk.DICOMOrient(label.to_sitk(), "LPS")).array
    arr = ct.array.astype(np.float32)
    sx, sy, sz = ct.spacing
    nz = arr.shape[2]

    def centroid(ids) -> np.ndarray | None:
        m = np.isin(lab, ids)
        if not m.any():
            return None
        return np.array([np.nonzero(m.any(axis=tuple(b for b in range(3) if b != a)))[0].mean() for a in range(3)])

    def z_extent(ids) -> tuple[int, int] | None:
        zs = np.nonzero(np.isin(lab, ids).any(axis=(0, 1)))[0]
        return (int(zs[0]), int(zs[-1])) if len(zs) else None

    levels = []
    liver = z_extent([L.LIVER, L.SPLEEN])
    levels.append(int(liver[0] + 0.75 * (liver[1] - liver[0])) if liver else int(0.8 * nz))
    for ids, q in (([L.PANCREAS, L.RIGHT_ADRENAL, L.LEFT_ADRENAL], 0.6), ([L.RIGHT_KIDNEY, L.LEFT_KIDNEY], 0.4)):
        c = centroid(ids)
        levels.append(int(round(c[2])) if c is not None else int(q * nz))
    kid = z_extent([L.RIGHT_KIDNEY, L.LEFT_KIDNEY])
    levels.append(max(0, kid[0] + 2) if kid else int(0.2 * nz))
    if (lab == L.LESION).any():  # show the slice with the most lesion, in place of a level near it
        lesion_z = int(np.argmax((lab == L.LESION).sum(axis=(0, 1))))
        nearest = int(np.argmin([abs(z - lesion_z) for z in levels]))
        if abs(levels[nearest] - lesion_z) < 0.08 * nz:
            levels[nearest] = lesion_z
        else:
            levels.append(lesion_z)
    levels = [min(max(z, 0), nz - 1) for z in levels]
    kc = centroid([L.RIGHT_KIDNEY, L.LEFT_KIDNEY])
    y_cor = int(round(kc[1])) if kc is not None else arr.shape[1] // 2

    colors = L.colormap().astype(np.float32) / 255.0
    window = (-160.0, 240.0)
    panels = [(arr[:, :, z].T, lab[:, :, z].T, sy / sx, f"axial z={z}") for z in levels]
    panels.append((arr[:, y_cor, ::-1].T, lab[:, y_cor, ::-1].T, sz / sx, f"coronal y={y_cor}"))
    fig = Figure(figsize=(2.6 * len(panels), 6.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (ct_slice, lab_slice, aspect, name) in enumerate(panels):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(ct_slice, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="antialiased")
            if row == 1:
                rgba = np.zeros(lab_slice.shape + (4,), np.float32)
                rgba[..., :3] = colors[lab_slice]
                rgba[..., 3] = np.where(lab_slice > 0, 0.5, 0.0)
                ax.imshow(rgba, aspect=aspect, interpolation="nearest")
            ax.set_axis_off()
        axes[0, col].set_title(name, fontsize=8)
    present = [int(i) for i in np.unique(lab) if i > 0]
    handles = [Patch(color=colors[i], label=L.name_of(i)) for i in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, max(1, len(handles))), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.1, wspace=0.03, hspace=0.05)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
