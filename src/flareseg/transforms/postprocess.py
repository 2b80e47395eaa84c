"""Post-processing of label maps (DESIGN section 6): largest component, small islands, holes. Numpy only.

Every rule is switchable through :class:`PostprocessConfig` and works on any integer label map with
its voxel spacing, so volumes are given in millilitres, not voxels. Removed voxels become background;
filled holes take the organ's id but only where the map was background (a lesion inside the liver is
not overwritten by the liver). Connected components come from ``cc3d``, hole filling from
``fill_voids``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage

from flareseg.errors import ConfigError
from flareseg.labels import ALL_FOREGROUND_IDS, SINGLE_BODY_IDS


@dataclass(frozen=True)
class PostprocessConfig:
    """Which post-processing rules run, in this order: islands, largest component, holes.

    Attributes:
        min_island_ml: connected components (of any foreground label) smaller than this are removed;
            0 disables.
        largest_component: keep only the largest component of each id in `single_body_ids`.
        single_body_ids: organs that are one connected body (default labels.SINGLE_BODY_IDS).
        fill_holes: fill the enclosed background cavities of each id in `fill_ids`.
        fill_ids: labels whose holes are filled (default: every foreground id).
        connectivity: 6, 18 or 26 (voxel faces, + edges, + corners) for components.
    """

    min_island_ml: float = 0.0
    largest_component: bool = False
    single_body_ids: tuple[int, ...] = SINGLE_BODY_IDS
    fill_holes: bool = False
    fill_ids: tuple[int, ...] = ALL_FOREGROUND_IDS
    connectivity: int = 26

    def __post_init__(self) -> None:
        if not self.min_island_ml >= 0:
            raise ConfigError(f"postprocess.min_island_ml must be >= 0, got {self.min_island_ml}")
        if self.connectivity not in (6, 18, 26):
            raise ConfigError(f"postprocess.connectivity must be 6, 18 or 26, got {self.connectivity}")

    @property
    def enabled(self) -> bool:
        return self.min_island_ml > 0 or self.largest_component or self.fill_holes


OFF = PostprocessConfig()
"""No post-processing."""
DEFAULT = PostprocessConfig(min_island_ml=0.1, largest_component=True, fill_holes=True)
"""Largest component per single-body organ, islands under 0.1 ml dropped, holes filled."""


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (spacing in mm)."""
    return float(np.prod(spacing)) / 1000.0


def _components(label: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(component map, voxel count per component, label of each component); component 0 is background."""
    components, n = cc3d.connected_components(label, connectivity=connectivity, return_N=True)
    counts = np.bincount(components.ravel(), minlength=n + 1)
    owner = np.zeros(n + 1, dtype=label.dtype)
    owner[components.ravel()] = label.ravel()
    return components, counts, owner


def filter_components(
    label: np.ndarray,
    *,
    min_voxels: int = 0,
    largest_only: Iterable[int] = (),
    connectivity: int = 26,
) -> np.ndarray:
    """Remove components smaller than `min_voxels` and all but the largest component of `largest_only` ids.

    Components are per label value (two touching organs are two components). Ties for the largest
    keep the component found first in memory order.

    Returns:
        A new array of `label`'s dtype; removed voxels are 0.
    """
    if label.ndim != 3:
        raise ValueError(f"label must be 3-D, got shape {label.shape}")
    largest_only = tuple(largest_only)
    if not label.any() or (min_voxels <= 1 and not largest_only):
        return label.copy()
    components, counts, owner = _components(label, connectivity)
    keep = np.ones(counts.size, dtype=bool)
    if min_voxels > 1:
        keep &= counts >= min_voxels
    for lid in largest_only:
        ids = np.flatnonzero(owner == lid)
        ids = ids[ids != 0]
        if ids.size > 1:
            keep[ids] = False
            keep[ids[np.argmax(counts[ids])]] = True
    keep[0] = True
    return np.where(keep[components], label, 0).astype(label.dtype, copy=False)


def keep_largest_component(label: np.ndarray, ids: Iterable[int] = SINGLE_BODY_IDS, *, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of each label in `ids` (others untouched)."""
    return filter_components(label, largest_only=ids, connectivity=connectivity)


def min_voxels_for(min_ml: float, spacing: Sequence[float]) -> int:
    """The fewest voxels of `spacing` (mm) that hold at least `min_ml` millilitres (0 for no minimum)."""
    return int(np.ceil(min_ml / voxel_volume_ml(spacing) - 1e-9)) if min_ml > 0 else 0


def remove_small_islands(label: np.ndarray, min_ml: float, spacing: Sequence[float], *, connectivity: int = 26) -> np.ndarray:
    """Remove every connected component (any foreground label) whose volume is below `min_ml` millilitres."""
    return filter_components(label, min_voxels=min_voxels_for(min_ml, spacing), connectivity=connectivity)


def fill_holes(label: np.ndarray, ids: Iterable[int] = ALL_FOREGROUND_IDS) -> np.ndarray:
    """Fill the enclosed cavities of each label in `ids`, but only where the map is background.

    A cavity is a region of other voxels that the label encloses in 3-D (not connected to the
    boundary of the label's bounding box). Voxels of another label inside the cavity are kept.
    """
    out = label.copy()
    present = set(int(v) for v in np.unique(label)) - {0}
    objects = ndimage.find_objects(label.astype(np.int32, copy=False))
    for lid in ids:
        if lid not in present or lid - 1 >= len(objects) or objects[lid - 1] is None:
            continue
        region = objects[lid - 1]
        view = out[region]
        mask = view == lid
        filled = fill_voids.fill(mask, in_place=False)
        view[filled & (view == 0)] = lid
    return out


def postprocess(label: np.ndarray, spacing: Sequence[float], config: PostprocessConfig) -> np.ndarray:
    """Apply the enabled rules of `config` to `label` (voxel size `spacing` in mm): islands, largest component, holes.

    Returns:
        A new array (a copy when nothing is enabled). An empty map stays empty.
    """
    out = label
    if config.min_island_ml > 0 or config.largest_component:
        out = filter_components(
            out,
            min_voxels=min_voxels_for(config.min_island_ml, spacing),
            largest_only=config.single_body_ids if config.largest_component else (),
            connectivity=config.connectivity,
        )
    if config.fill_holes:
        out = fill_holes(out, config.fill_ids)
    return out if out is not label else label.copy()
