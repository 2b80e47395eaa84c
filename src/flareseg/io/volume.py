"""Voxel grids and volumes.

A :class:`Volume` holds a voxel array in ITK/NIfTI index order ``(I, J, K)`` (the order nibabel
returns; SimpleITK's ``GetArrayFromImage`` returns the transpose ``(K, J, I)``) together with the
physical geometry in ITK's LPS convention: ``spacing`` in mm per index axis, ``origin`` in mm of voxel
``(0, 0, 0)`` and ``direction`` a 3x3 matrix whose column ``c`` is the unit vector of index axis ``c``.
A :class:`Grid` is that geometry without the voxels; every comparison of two grids uses
:meth:`Grid.matches` with the one tolerance ``GEOMETRY_ATOL``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from flareseg.errors import GeometryError

GEOMETRY_ATOL = 1e-3
"""Absolute tolerance (mm, or unit-less for direction) when comparing two voxel grids."""


def orientation_code(direction: np.ndarray) -> str:
    """Return the three-letter ITK/DICOM orientation code (e.g. 'LPS', 'RAS', 'PLI') of a direction matrix."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(d) for d in np.asarray(direction).ravel())
    )


@dataclass(frozen=True)
class Grid:
    """A voxel grid without voxels: shape, spacing (mm), origin (mm, LPS), direction (3x3)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def matches(self, other: "Grid", atol: float = GEOMETRY_ATOL) -> bool:
        """Same shape, and spacing, origin and direction equal within `atol` (one tolerance for every comparison)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        """The (3, 3) direction matrix; column c is index axis c in LPS."""
        return np.array(self.direction, dtype=float).reshape(3, 3)

    def describe(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        org = ", ".join(f"{o:.1f}" for o in self.origin)
        return f"shape {self.shape}, spacing ({sp}) mm, origin ({org}), orientation {orientation_code(self.direction_matrix)}"

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image on this grid, to resample onto."""
        image = sitk.Image([int(s) for s in self.shape], sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class Volume:
    """A 3-D voxel array with its physical geometry.

    Attributes:
        array: (I, J, K) voxel array, ITK/NIfTI index order.
        spacing: (3,) voxel size in mm along I, J, K.
        origin: (3,) LPS position in mm of voxel (0, 0, 0).
        direction: (3, 3) direction cosines; column c is index axis c in LPS.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """Return a volume on the same grid holding `array` (same shape required)."""
        if array.shape != self.array.shape:
            raise GeometryError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return replace(self, array=array)

    @property
    def grid(self) -> Grid:
        """This volume's voxel grid without its voxels."""
        return Grid(self.shape, tuple(float(s) for s in self.spacing), tuple(float(o) for o in self.origin), tuple(np.asarray(self.direction, dtype=float).ravel()))

    @classmethod
    def on_grid(cls, array: np.ndarray, grid: Grid) -> "Volume":
        """A volume holding `array` on `grid` (shapes must agree)."""
        if tuple(array.shape) != tuple(grid.shape):
            raise GeometryError(f"array shape {array.shape} does not match the grid {grid.shape}")
        return cls(array, grid.spacing, grid.origin, grid.direction_matrix)

    def same_grid(self, other: "Volume") -> bool:
        """True when `other` lies on the same voxel grid (:meth:`Grid.matches`)."""
        return self.grid.matches(other.grid)

    def describe_grid(self) -> str:
        return self.grid.describe()

    def to_sitk(self) -> sitk.Image:
        """Return a SimpleITK image with the same voxels and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array.transpose(2, 1, 0)))
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in np.asarray(self.direction).ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        """Return a volume from a 3-D SimpleITK image (the array is transposed to (I, J, K))."""
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        return cls(
            array=array,
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
        )
