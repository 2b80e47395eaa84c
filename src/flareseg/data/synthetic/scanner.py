"""The scanner: contrast phase and tissue HU, field of view, patient position, voxel grid, noise,
the reconstruction circle and the stored orientation.

Everything here is drawn from the scan's, the grid's or the noise's own generator stream, so the
anatomy in mm does not depend on the size profile; see :mod:`flareseg.data.synthetic.case`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flareseg.data.synthetic.anatomy import Anatomy
from flareseg.data.synthetic.shapes import Axes, CanonicalGrid, Shape, evaluate, upsample_rows
from flareseg.errors import ConfigError

PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal-venous")
SIZES: tuple[str, ...] = ("full", "small")
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPI", "RAI", "PLI", "LAS", "SPL")
"""Storage orientations (ITK codes) of the cases not stored as LPS; the anatomy is the same in all."""
HU_MIN, HU_MAX = -1024, 3071
OUTSIDE_FOV_HU = -1024
"""Value of voxels outside the scanner's reconstruction circle."""


@dataclass(frozen=True)
class _Profile:
    spacing_mm: tuple[float, float]  # in-plane spacing range
    matrix: tuple[int, int]  # in-plane matrix range (square)
    slices_mm: tuple[float, ...]  # slice spacings to choose from


PROFILES = {
    "full": _Profile((0.6, 1.0), (512, 512), (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)),
    "small": _Profile((1.5, 2.0), (192, 256), (2.0, 2.5, 3.0, 4.0, 5.0)),
}


def check_size(size: str) -> None:
    """Raise ConfigError unless `size` is one of :data:`SIZES`."""
    if size not in PROFILES:
        raise ConfigError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


# ---------------------------------------------------------------------------------------------
# Tissue HU in each phase (non-contrast, arterial, portal-venous)
# ---------------------------------------------------------------------------------------------

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
# Scan: phase, intensities, field of view, position
# ---------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """What one scan draws (lengths in mm, patient frame unless said otherwise).

    Attributes:
        phase: contrast phase, one of :data:`PHASES`.
        hu: tissue name -> HU for this case.
        fov_cut: ``none``, ``top``, ``bottom`` or ``both``.
        z_range: scanned z extent (z_lo, z_hi).
        offset: (3,) physical LPS position of the patient frame's origin.
        noise_hu: noise level before the spacing corrections of :func:`reconstruct`.
        table: (y of the table top, curvature in 1/mm) or None (no table in view).
    """

    phase: str
    hu: dict[str, float]
    fov_cut: str
    z_range: tuple[float, float]
    offset: np.ndarray
    noise_hu: float
    table: tuple[float, float] | None


def draw_scan(rng: np.random.Generator, anat: Anatomy, phase: str | None, fov_cut: bool | None, cut_probability: float) -> Scan:
    """Draw the phase, tissue HU, scanned z range (mm), patient offset, noise level and table."""
    if phase is None:
        phase = str(rng.choice(PHASES, p=[0.2, 0.3, 0.5]))
    hu = _draw_hu(rng, phase)
    cut = rng.random() < cut_probability if fov_cut is None else bool(fov_cut)
    mode = str(rng.choice(["top", "bottom", "both"], p=[0.45, 0.35, 0.2])) if cut else "none"
    h = anat.torso.h
    z_hi = anat.z_top_organs + rng.uniform(15, 70) * h
    z_lo = max(anat.z_bottom_organs - rng.uniform(15, 80) * h, -150 * h)
    if mode in ("top", "both"):  # cuts the liver dome, spleen, stomach fundus, maybe the oesophagus
        z_hi = rng.uniform(40 * h, anat.z_top_organs - 25 * h)
    if mode in ("bottom", "both"):  # cuts the lower poles of the kidneys and the duodenum
        z_lo = rng.uniform(anat.z_bottom_organs + 15 * h, -20 * h)
    offset = np.array([rng.normal(0, 10), rng.uniform(-25, 15), rng.uniform(-900, 200)])
    noise = rng.uniform(8, 22) * (1 + 0.6 * anat.torso.obesity)
    table = (anat.torso.body.y_post + rng.uniform(2, 15), rng.uniform(0.0, 0.0015)) if rng.random() < 0.8 else None
    return Scan(phase, hu, mode, (float(z_lo), float(z_hi)), offset, float(noise), table)


def draw_grid(rng: np.random.Generator, anat: Anatomy, scan: Scan, size: str, spacing: Sequence[float] | None) -> CanonicalGrid:
    """Draw the voxel grid of the `size` profile: a square in-plane matrix centred on the isocentre
    that fits the patient, and slices over the scanned z range (`spacing` overrides the draw)."""
    prof = PROFILES[size]
    b = anat.torso.body
    half_x = b.a + abs(scan.offset[0])
    half_y = max(b.y_post + scan.offset[1], -(b.y_ant + scan.offset[1]))
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
    return CanonicalGrid(axes, (sp_xy, sp_xy, sp_z), tuple(float(o) for o in scan.offset))  # type: ignore[arg-type]


def add_ct_noise(image: np.ndarray, rng: np.random.Generator, spacing: Sequence[float], sigma: float) -> None:
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
    for rows, values in upsample_rows(coarse, plans + [None]):
        image[rows] += values


def reconstruct(image: np.ndarray, rng: np.random.Generator, grid: CanonicalGrid, noise_hu: float) -> np.ndarray:
    """The scanner's output: noise, -1024 outside the reconstruction circle, HU clipped and rounded.

    Args:
        image: (I, J, K) float32 HU on `grid`; overwritten.
        rng: the noise stream.
        grid: the canonical grid (in-plane spacing first).
        noise_hu: the scan's noise level; thinner slices and finer pixels get more.

    Returns:
        The (I, J, K) int16 CT.
    """
    add_ct_noise(image, rng, grid.spacing, noise_hu * math.sqrt(2.5 / grid.spacing[2]) * min(1.0, 0.75 / grid.spacing[0]))
    n = grid.shape[0]
    r = (np.arange(n) - (n - 1) / 2) * grid.spacing[0]
    outside = (r[:, None] ** 2 + r[None, :] ** 2) > (0.5 * n * grid.spacing[0]) ** 2
    image[outside] = OUTSIDE_FOV_HU
    np.clip(image, HU_MIN, HU_MAX, out=image)
    return np.rint(image, out=image).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# The canvas the structures are painted on
# ---------------------------------------------------------------------------------------------


class Canvas:
    """The image (float32 HU) and label (uint8) arrays being painted, on a canonical grid.

    Attributes:
        grid: the canonical grid; image: (I, J, K) float32 HU; label: (I, J, K) uint8 ids;
        edge: width (mm) of the partial-volume ramp at a shape's surface.
    """

    def __init__(self, grid: CanonicalGrid, image: np.ndarray, edge_mm: float):
        self.grid = grid
        self.image = image
        self.label = np.zeros(grid.shape, np.uint8)
        self.edge = float(edge_mm)

    def paint(
        self,
        shape: Shape,
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
        ev = evaluate(shape, self.grid)
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
# Orientation
# ---------------------------------------------------------------------------------------------

_AXIS_OF_LETTER = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def parse_orientation(code: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Split an ITK orientation code ('LPS', 'RAS', 'PLI', ...) into (patient axis, sign) per array axis."""
    if not isinstance(code, str) or len(code) != 3 or any(c not in _AXIS_OF_LETTER for c in code.upper()):
        raise ConfigError(f"orientation must be a 3-letter code of L/R, P/A, S/I (e.g. 'LPS', 'RAS', 'PLI'), got {code!r}")
    axes, signs = zip(*(_AXIS_OF_LETTER[c] for c in code.upper()))
    if sorted(axes) != [0, 1, 2]:
        raise ConfigError(f"orientation {code!r} names a patient axis twice")
    return axes, signs  # type: ignore[return-value]


def orient(arrays: Sequence[np.ndarray], grid: CanonicalGrid, code: str):
    """Store canonical (LPS, identity-direction) arrays in orientation `code`, keeping the physical anatomy.

    Args:
        arrays: (I, J, K) arrays on `grid`.
        grid: their canonical grid.
        code: ITK orientation code of the stored axes.

    Returns:
        (arrays as views in the new axis order, spacing, origin, direction) with
        ``direction[:, k] = sign_k * e_{axis_k}`` and the origin moved to the new first voxel.
    """
    axes, signs = parse_orientation(code)
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
