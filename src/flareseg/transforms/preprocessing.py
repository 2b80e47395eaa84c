"""Preprocessing as in the paper (DESIGN section 3), each step invertible: no torch here.

A CT goes through: reorientation to the canonical LPS orientation (a permutation and flips of the
voxel axes, exact), a crop to the body's bounding box (or, for models trained by nnU-Net, to the
non-zero voxels), resampling to the target spacing, and
normalisation with the training set's foreground fingerprint. :class:`PreprocessRecord` keeps what is
needed to bring a label map on the network grid back to the input's exact voxel grid
(:func:`restore_label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from flareseg.config import Fingerprint, PreprocessConfig
from flareseg.errors import GeometryError
from flareseg.io import Grid, Volume, orientation_code
from flareseg.io.read import MAX_VOXELS
from flareseg.transforms.roi import expand_box, full_box, intersect, is_empty, map_box

CANONICAL_ORIENTATION = "LPS"
"""Index axes I, J, K point to patient left, posterior and superior: K is the axial (slice) axis."""
FINGERPRINT_SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class PreprocessRecord:
    """What :func:`restore_label` needs to undo preprocessing.

    Attributes:
        original: the input's grid.
        canonical: the input's grid after reorientation to LPS.
        crop: (start, stop) voxel indices per axis of the body crop in the canonical grid.
        network: the resampled grid the network sees.
    """

    original: Grid
    canonical: Grid
    crop: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    network: Grid


@dataclass(frozen=True)
class PreprocessedCase:
    """A case on the network grid: image (I, J, K) float32 normalised, label (I, J, K) uint8 or None."""

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord


def to_canonical(volume: Volume) -> Volume:
    """Reorient `volume` to LPS by permuting and flipping voxel axes (no interpolation)."""
    if orientation_code(volume.direction) == CANONICAL_ORIENTATION:
        return volume
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), CANONICAL_ORIENTATION))


def stored_flips(direction: Sequence[float] | np.ndarray) -> tuple[int, ...]:
    """The LPS-grid axes (0, 1, 2) along which an image of this `direction` (3x3) stores its voxels
    in the opposite sense: (0, 1) for RAS, () for LPS or any permutation of L, P and S.

    Flipping the reoriented array along them gives the stored array's voxel senses; its axis order
    stays LPS's.
    """
    code = orientation_code(np.asarray(direction, dtype=float).reshape(3, 3))
    return tuple(sorted("RAI".index(letter) for letter in code if letter in "RAI"))


def from_canonical(array: np.ndarray, canonical: Grid, original: Grid) -> np.ndarray:
    """Bring an (I, J, K) array on the `canonical` grid back to the `original` grid's axis order."""
    code = orientation_code(np.array(original.direction).reshape(3, 3))
    if code == CANONICAL_ORIENTATION:
        return array
    volume = Volume.on_grid(array, canonical)
    restored = sitk.DICOMOrient(volume.to_sitk(), code)
    return sitk.GetArrayFromImage(restored).transpose(2, 1, 0)


BODY_MASK_MAX_VOXELS = 1 << 23
"""The body's connected components are labelled on a strided copy of at most this many voxels (8 Mi)."""


def body_bounding_box(ct: Volume, *, threshold_hu: float = -500.0, margin_mm: float = 5.0) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, stop) per axis of the largest connected region above `threshold_hu`.

    The region is found on every s-th voxel along each axis, s the smallest stride leaving at most
    :data:`BODY_MASK_MAX_VOXELS` voxels (s = 1, exact, up to 8 Mi voxels; s = 2 for 512x512x300: 0.2 s
    instead of 2 s), and its box widened by s - 1 voxels, then by `margin_mm`, and clipped to the
    volume; a volume with no voxel above the threshold gives the whole volume.
    """
    stride = 1
    while np.prod([-(-n // stride) for n in ct.shape], dtype=np.int64) > BODY_MASK_MAX_VOXELS:
        stride += 1
    mask = ct.array[::stride, ::stride, ::stride] > threshold_hu
    if not mask.any():
        return tuple((0, s) for s in ct.shape)
    body = cc3d.largest_k(mask, k=1, connectivity=6)
    box = []
    for axis in range(3):
        idx = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = int(np.ceil(margin_mm / ct.spacing[axis])) + stride - 1
        box.append((max(0, int(idx[0]) * stride - margin), min(ct.shape[axis], int(idx[-1]) * stride + 1 + margin)))
    return tuple(box)


def nonzero_bounding_box(ct: Volume) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, stop) per axis of the voxels that are not 0, nnU-Net's crop (its
    ``crop_to_nonzero``: filling the mask's holes there leaves its box as it is); an all-zero volume
    gives the whole volume."""
    nonzero = ct.array != 0
    box = []
    for axis in range(3):
        idx = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, ct.shape[axis]))
    return tuple(box)


def crop_box(ct: Volume, config: PreprocessConfig) -> tuple[tuple[int, int], ...]:
    """The (start, stop) voxel box per axis that `config` crops the canonical CT `ct` to (:attr:`PreprocessConfig.crop`)."""
    if config.crop == "nonzero":
        return nonzero_bounding_box(ct)
    return body_bounding_box(ct, threshold_hu=config.body_threshold_hu, margin_mm=config.body_margin_mm)


def _crop_settings(config: PreprocessConfig) -> tuple:
    """The fields of `config` that decide its crop box."""
    return (config.crop,) if config.crop == "nonzero" else (config.crop, config.body_threshold_hu, config.body_margin_mm)


@dataclass(frozen=True)
class BodyCrop:
    """A CT reoriented to LPS and its crop box (the body's, or the non-zero voxels'): the first two
    preprocessing steps, which every model's preprocessing of one input shares (:func:`body_crop`).

    Attributes:
        original: the input's grid.
        canonical: the input reoriented to LPS.
        box: (start, stop) voxel indices per axis of the crop in `canonical`.
        settings: the crop settings `box` was found with (:func:`_crop_settings`).
    """

    original: Grid
    canonical: Volume
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    settings: tuple

    def for_config(self, config: PreprocessConfig) -> "BodyCrop":
        """This crop, or the same reoriented CT with the box found again when `config`'s crop settings differ."""
        if _crop_settings(config) == self.settings:
            return self
        return BodyCrop(self.original, self.canonical, crop_box(self.canonical, config), _crop_settings(config))  # type: ignore[arg-type]


def body_crop(image: Volume, config: PreprocessConfig) -> BodyCrop:
    """`image` reoriented to LPS and the box `config` crops it to (:func:`crop_box`)."""
    canonical = to_canonical(image)
    return BodyCrop(image.grid, canonical, crop_box(canonical, config), _crop_settings(config))  # type: ignore[arg-type]


def crop(volume: Volume, box: tuple[tuple[int, int], ...]) -> Volume:
    """Return the sub-volume `box` with its origin moved so that voxels keep their physical positions."""
    start = np.array([b[0] for b in box], dtype=float)
    origin = np.asarray(volume.origin) + np.asarray(volume.direction) @ (start * np.asarray(volume.spacing))
    array = volume.array[tuple(slice(a, b) for a, b in box)]
    return Volume(array, volume.spacing, tuple(origin), volume.direction)


def resampled_grid(grid: Grid, target_spacing: tuple[float, float, float]) -> Grid:
    """The grid covering the same physical box as `grid` at `target_spacing` (voxel boxes aligned).

    Raises:
        GeometryError: the resampled grid would hold more than :data:`flareseg.io.read.MAX_VOXELS` voxels.
    """
    spacing = np.asarray(grid.spacing, dtype=float)
    target = np.asarray(target_spacing, dtype=float)
    shape = np.maximum(1, np.round(np.asarray(grid.shape) * spacing / target)).astype(int)
    voxels = int(np.prod(shape.astype(object)))
    if voxels > MAX_VOXELS:
        raise GeometryError(
            f"resampling {tuple(grid.shape)} voxels of {tuple(round(s, 3) for s in grid.spacing)} mm to {tuple(target_spacing)} mm "
            f"gives {tuple(int(s) for s in shape)} = {voxels:,} voxels, more than the {MAX_VOXELS:,} flareseg handles"
        )
    direction = np.array(grid.direction).reshape(3, 3)
    origin = np.asarray(grid.origin) + direction @ ((target - spacing) / 2)
    return Grid(tuple(int(s) for s in shape), tuple(float(t) for t in target), tuple(origin), grid.direction)


def anti_aliasing_sigma(source_mm, target_mm) -> np.ndarray:
    """(3,) Gaussian sigma in mm that :func:`resample_image` smooths with before going from `source_mm` to `target_mm` spacing."""
    source, target = np.asarray(source_mm, dtype=float), np.asarray(target_mm, dtype=float)
    return 0.5 * np.sqrt(np.maximum(target**2 - source**2, 0))


def sub_grid(grid: Grid, box: tuple[tuple[int, int], ...]) -> Grid:
    """The voxels `box` of `grid` as a grid of their own (same spacing and direction, shifted origin)."""
    start = np.array([a for a, _ in box], dtype=float)
    origin = np.asarray(grid.origin) + np.array(grid.direction).reshape(3, 3) @ (start * np.asarray(grid.spacing))
    return Grid(tuple(int(b - a) for a, b in box), grid.spacing, tuple(float(o) for o in origin), grid.direction)  # type: ignore[arg-type]


def resample_image(volume: Volume, grid: Grid, method: str = "linear") -> Volume:
    """Resample a CT onto `grid` (:attr:`~flareseg.config.PreprocessConfig.resample`): ``"linear"``, with
    linear interpolation, smoothing first where it is coarser (anti-aliasing); ``"spline"``, as nnU-Net
    does (:func:`_spline_resample`).

    The anti-aliasing Gaussian has sigma = 0.5 * sqrt(target^2 - source^2) mm along each axis that is
    more than 1.3x coarser, ITK's recursive (IIR) Gaussian, whose cost does not grow with sigma (an
    axis of fewer than 4 voxels, which it refuses, gets a discrete kernel). Smoothing and linear
    interpolation are both separable, and along different axes they commute, so the volume is
    smoothed and interpolated one axis at a time, the axis it shrinks most first: only the first pass
    runs over every input voxel (0.8 -> 6 mm on a 512x512x300 CT: 0.8 s instead of 3.1 s for the three
    Gaussians and one trilinear pass). Same result as smoothing all axes and then interpolating
    trilinearly (to float32 rounding); positions beyond the outermost voxel centres take the edge value.
    `grid` must share `volume`'s direction (true of every grid this module builds).

    Raises:
        GeometryError: the grids' directions differ.
    """
    scale, offset = _index_map(volume.grid, grid, "resample_image")
    if method == "spline":
        return _spline_resample(volume, grid, scale, offset)
    source = np.asarray(volume.spacing, dtype=float)
    sigma = anti_aliasing_sigma(source, np.asarray(grid.spacing)) / source  # voxels
    array = volume.array
    for axis in np.argsort(-scale, kind="stable"):
        coords = offset[axis] + np.arange(grid.shape[axis]) * scale[axis]
        if scale[axis] > 1.3:
            array = _smooth_and_sample(array.astype(np.float32, copy=False), float(sigma[axis]), coords, int(axis))
        else:
            array = _linear_along(array, coords, int(axis))
    return Volume.on_grid(array.astype(np.float32, copy=False), grid)


ANISOTROPY_RATIO = 3.0
"""nnU-Net's ``ANISO_THRESHOLD``: a scan whose largest spacing exceeds this many times its smallest is
resampled separately along its low-resolution axis."""
SPLINE_PAD_VOXELS = 12
"""Edge padding before the spline prefilter (scipy's own for mode "nearest")."""
SPLINE_REACH_VOXELS = 6
"""Input voxels beyond a region that still change a spline-resampled value in it by more than 1e-3 of
their own (the spline prefilter's influence shrinks by 0.27 a voxel)."""


def resampling_reach(source_mm: Sequence[float], target_mm: Sequence[float], method: str) -> np.ndarray:
    """(3,) input voxels beyond a region that :func:`resample_image` reads to resample it as the whole
    volume is resampled there: 4 anti-aliasing sigmas plus the linear kernel's voxel (``"linear"``),
    at least SPLINE_REACH_VOXELS (``"spline"``)."""
    source = np.asarray(source_mm, dtype=float)
    reach = np.ceil(4 * anti_aliasing_sigma(source, target_mm) / source).astype(int) + 1
    return np.maximum(reach, SPLINE_REACH_VOXELS) if method == "spline" else reach


def low_resolution_axis(source_mm: Sequence[float], target_mm: Sequence[float]) -> int | None:
    """The axis that ``"spline"`` resampling interpolates by nearest neighbour (nnU-Net's separate-z rule):
    where the source spacing (else the target's) is anisotropic (largest > ANISOTROPY_RATIO x smallest),
    its one axis of largest spacing; None where neither is anisotropic or two axes share the largest."""
    for spacing in (np.asarray(source_mm, dtype=float), np.asarray(target_mm, dtype=float)):
        if spacing.max() > ANISOTROPY_RATIO * spacing.min():
            axes = np.flatnonzero(spacing == spacing.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _spline_resample(volume: Volume, grid: Grid, scale: np.ndarray, offset: np.ndarray) -> Volume:
    """nnU-Net's resampling of a CT (``resample_data_or_seg`` with order 3, order_z 0, no anti-aliasing):
    third-order B-spline interpolation, edge values beyond the outermost voxels, and along the
    :func:`low_resolution_axis` nearest neighbour instead. Target voxel i along an axis samples source
    index ``offset + i * scale``; float32 out."""
    array = np.asarray(volume.array, dtype=np.float32)
    scale, offset = scale.astype(float), offset.astype(float)  # copies: the nearest-slice axis is rewritten below
    axis = low_resolution_axis(volume.spacing, grid.spacing)
    if axis is not None:  # nearest slices first; the spline then runs at integer positions along `axis`, where it reproduces them
        nearest = np.rint(offset[axis] + np.arange(grid.shape[axis]) * scale[axis])
        array = np.take(array, np.clip(nearest, 0, array.shape[axis] - 1).astype(np.intp), axis=axis)
        scale[axis], offset[axis] = 1.0, 0.0
    # scipy's own prefilter, in float32 (its own is float64: twice the memory): the edge-padded volume's
    # spline coefficients, the padding wide enough for the edge values to hold at the border.
    padded = np.pad(array, SPLINE_PAD_VOXELS, mode="edge")
    del array
    coefficients = ndimage.spline_filter(padded, order=3, output=np.float32, mode="nearest")
    del padded
    out = ndimage.affine_transform(
        coefficients, scale, offset=offset + SPLINE_PAD_VOXELS, output_shape=tuple(grid.shape), output=np.float32, order=3, mode="nearest", prefilter=False
    )
    return Volume.on_grid(out, grid)


def _index_map(source: Grid, target: Grid, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each (3,): target voxel i along an axis lies at source index offset + i * scale.

    Raises:
        GeometryError: the grids' directions differ.
    """
    direction = np.array(source.direction).reshape(3, 3)
    if not np.allclose(direction.ravel(), target.direction, atol=1e-6):
        raise GeometryError(f"{what} needs grids with the same direction")
    spacing = np.asarray(source.spacing, dtype=float)
    scale = np.asarray(target.spacing, dtype=float) / spacing
    offset = direction.T @ (np.asarray(target.origin) - np.asarray(source.origin)) / spacing
    return scale, offset


def _smooth_and_sample(array: np.ndarray, sigma: float, coords: np.ndarray, axis: int) -> np.ndarray:
    """float32 `array` smoothed along `axis` by a Gaussian of `sigma` voxels (ITK's recursive filter),
    then sampled at fractional indices `coords` along it (:func:`_linear_along`)."""
    if array.shape[axis] < 4:  # the recursive filter needs 4 voxels along its axis (a 3-slice series has 3)
        return _linear_along(ndimage.gaussian_filter1d(array, sigma, axis=axis, mode="nearest", truncate=4.0), coords, axis)
    fortran = array.strides[0] < array.strides[2]  # a NIfTI's layout: I varies fastest (a crop of one is a view, not contiguous)
    array = np.asfortranarray(array) if fortran else np.ascontiguousarray(array)  # a copy that keeps the layout: no transposition
    image = sitk.GetImageFromArray(array.T if fortran else array)  # ITK's x is the contiguous axis
    del array
    image = sitk.RecursiveGaussian(image, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis if fortran else 2 - axis)
    smoothed = sitk.GetArrayViewFromImage(image)  # valid while `image` lives: sampled before it goes
    return _linear_along(smoothed.T if fortran else smoothed, coords, axis)


def _linear_along(array: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """float32 values of `array` at fractional indices `coords` (1-D) along `axis`, linearly interpolated
    (indices beyond the first or last voxel take its value); the result keeps `array`'s memory layout."""
    if array.strides[0] < array.strides[2]:  # I varies fastest: work on the C-ordered transpose, whose copies are block copies
        return _linear_along(array.T, coords, 2 - axis).T
    n = array.shape[axis]
    if n == 1:
        return np.take(array, np.zeros(len(coords), dtype=np.intp), axis=axis).astype(np.float32, copy=False)
    c = np.clip(coords, 0, n - 1)
    low = np.minimum(np.floor(c).astype(np.intp), n - 2)
    shape = [1, 1, 1]
    shape[axis] = len(coords)
    weight = (c - low).astype(np.float32).reshape(shape)
    a = np.take(array, low, axis=axis).astype(np.float32, copy=False)
    b = np.take(array, low + 1, axis=axis).astype(np.float32, copy=False)
    b -= a
    b *= weight
    b += a
    return b


def resample_label(volume: Volume, grid: Grid) -> Volume:
    """Resample a label map onto `grid` without creating new label values.

    Each label's indicator is interpolated linearly within its bounding box (as nnU-Net does) and a
    voxel takes the label of largest interpolated value if that value is at least 0.5, else background.
    This keeps thin structures far better than nearest neighbour. Both grids must share a direction
    (true for every grid this module builds from one canonical image).

    Raises:
        GeometryError: the grids' directions differ.
    """
    if volume.grid.matches(grid):
        return volume
    scale, offset = _index_map(volume.grid, grid, "resample_label")
    order = np.argsort(-scale, kind="stable")  # as resample_image: the axis that grows least first
    out = np.zeros(grid.shape, dtype=np.uint8, order="F")  # NIfTI's layout: written without a transposing copy
    best = np.full(grid.shape, 0.5, dtype=np.float32, order="F")
    for value, box in _label_boxes(volume.array):
        lo = np.array([max(a - 1, 0) for a, _ in box])
        hi = np.array([min(b + 1, n) for (_, b), n in zip(box, volume.shape)])
        t_lo = np.clip(np.floor((lo - 1 - offset) / scale).astype(int), 0, grid.shape)
        t_hi = np.clip(np.ceil((hi - offset) / scale).astype(int) + 1, 0, grid.shape)
        if np.any(t_hi <= t_lo):
            continue
        values = np.asfortranarray(volume.array[tuple(slice(a, b) for a, b in zip(lo, hi))] == value, dtype=np.float32)
        for axis in order:  # trilinear interpolation, one axis at a time
            values = _linear_along(values, offset[axis] + np.arange(t_lo[axis], t_hi[axis]) * scale[axis] - lo[axis], int(axis))
        region = tuple(slice(a, b) for a, b in zip(t_lo, t_hi))
        wins = values >= best[region]
        out[region][wins] = value
        best[region][wins] = values[wins]
    return Volume.on_grid(out, grid)


def _label_boxes(label: np.ndarray) -> list[tuple[int, tuple[tuple[int, int], ...]]]:
    """(value, bounding box) of each non-zero value of an integer array."""
    objects = ndimage.find_objects(label.astype(np.int32, copy=False))
    return [(i + 1, tuple((s.start, s.stop) for s in sl)) for i, sl in enumerate(objects) if sl is not None]


def normalize(array: np.ndarray, fingerprint: Fingerprint) -> np.ndarray:
    """Clip HU to the fingerprint's 0.5-99.5 percentiles, subtract its mean, divide by its std (float32)."""
    out = np.clip(array, fingerprint.percentile_00_5, fingerprint.percentile_99_5).astype(np.float32)
    out -= np.float32(fingerprint.mean)
    out /= np.float32(fingerprint.std)
    return out


def pad_value_of(fingerprint: Fingerprint) -> float:
    """The normalised intensity of air (the fingerprint's lower clip bound after :func:`normalize`): what images are padded with."""
    return (fingerprint.percentile_00_5 - fingerprint.mean) / fingerprint.std


def sample_foreground(image: np.ndarray, label: np.ndarray, ids: Sequence[int], *, n: int = FINGERPRINT_SAMPLES_PER_CASE, seed: int = 0) -> np.ndarray:
    """Up to `n` HU values drawn at random from the voxels whose label is one of `ids` (1-D float32)."""
    values = image[np.isin(label, ids)]
    if values.size > n:
        values = np.random.default_rng(seed).choice(values, size=n, replace=False)
    return values.astype(np.float32)


def compute_fingerprint(samples: np.ndarray) -> Fingerprint:
    """Fingerprint (0.5/99.5 percentiles, mean, std in HU) of pooled foreground samples.

    Raises:
        ValueError: no samples.
    """
    if samples.size == 0:
        raise ValueError("cannot compute an intensity fingerprint from zero foreground voxels")
    lo, hi = np.percentile(samples, [0.5, 99.5])
    return Fingerprint(float(lo), float(hi), float(samples.mean()), float(max(samples.std(), 1e-3)))


def preprocess_case(
    image: Volume | BodyCrop,
    label: Volume | None = None,
    *,
    config: PreprocessConfig,
    fingerprint: Fingerprint | None,
    within: tuple[tuple[int, int], ...] | None = None,
) -> PreprocessedCase:
    """Reorient, crop (:func:`crop_box`), resample and (with a fingerprint) normalise a CT and its optional label map.

    Args:
        image: CT in HU on any grid, or its :func:`body_crop` (computed once for several models).
        label: label map on the image's grid, or None.
        config: target spacing and crop settings.
        fingerprint: normalisation statistics; None leaves the image in HU.
        within: ((i0, i1), (j0, j1), (k0, k1)) voxel box of the reoriented (LPS) image, a region of
            interest: the network grid is then the part of the whole-body grid that covers it (the
            same voxels, resampled from that region plus the anti-aliasing kernel's reach only).
            None: the whole body.

    Returns:
        The network-grid arrays and the record to invert it.

    Raises:
        GeometryError: the label's grid differs from the image's; `within` misses the body.
    """
    body = image.for_config(config) if isinstance(image, BodyCrop) else body_crop(image, config)
    if label is not None and not label.grid.matches(body.original):
        raise GeometryError(f"label grid ({label.describe_grid()}) differs from image grid ({body.original.describe()})")
    canonical, box = body.canonical, body.box
    grid = resampled_grid(crop(canonical, box).grid, config.target_spacing)
    if within is not None:
        region = map_box(intersect(box, within), canonical.grid, grid)
        if is_empty(intersect(box, within)) or is_empty(region):
            raise GeometryError(f"the region {within} does not overlap the body {box}")
        grid = sub_grid(grid, region)
        reach = resampling_reach(canonical.spacing, grid.spacing, config.resample)
        box = intersect(box, expand_box(map_box(full_box(grid.shape), grid, canonical.grid), reach, canonical.shape))
    cropped = crop(canonical, box)
    resampled = resample_image(cropped, grid, config.resample)
    array = resampled.array if fingerprint is None else normalize(resampled.array, fingerprint)
    label_array = None
    if label is not None:
        label_cropped = crop(to_canonical(label), box)
        label_array = resample_label(label_cropped, grid).array.astype(np.uint8)
    record = PreprocessRecord(body.original, canonical.grid, tuple(box), grid)  # type: ignore[arg-type]
    return PreprocessedCase(array, label_array, record)


def restore_label(label: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Bring an (I, J, K) label map on the network grid back to the input's exact grid.

    Resamples onto the body crop with :func:`resample_label` (each label's indicator interpolated
    linearly), pads the rest with background and undoes the reorientation; the result has the input's
    shape and axis order, ready for :func:`flareseg.io.write_label`.

    Raises:
        GeometryError: `label`'s shape is not the record's network grid.
    """
    if tuple(label.shape) != tuple(record.network.shape):
        raise GeometryError(f"label shape {label.shape} is not the network grid {record.network.shape}")
    net = record.network
    crop_shape = tuple(b - a for a, b in record.crop)
    start = np.array([a for a, _ in record.crop], dtype=float)
    canonical_dir = np.array(record.canonical.direction).reshape(3, 3)
    crop_origin = np.asarray(record.canonical.origin) + canonical_dir @ (start * np.asarray(record.canonical.spacing))
    crop_grid = Grid(crop_shape, record.canonical.spacing, tuple(crop_origin), record.canonical.direction)  # type: ignore[arg-type]
    on_crop = resample_label(Volume.on_grid(label.astype(np.uint8), net), crop_grid)
    full = np.zeros(record.canonical.shape, dtype=np.uint8, order="F")
    full[tuple(slice(a, b) for a, b in record.crop)] = on_crop.array
    restored = from_canonical(full, record.canonical, record.original)
    if tuple(restored.shape) != tuple(record.original.shape):
        raise GeometryError(f"restored shape {restored.shape} differs from the input's {record.original.shape}")
    return restored
