"""Merging the organ and tumour predictions into the final label map (DESIGN section 1). Numpy only.

The rule: start from the organ label map (ids 0-13); every voxel the tumour model calls lesion becomes
14, whatever the organ model said there. Optionally, lesion components that touch none of the organs
that can hold a lesion are dropped first (a lesion floating in fat or air is a false positive).
"""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np
from scipy import ndimage

from flareseg.errors import GeometryError
from flareseg.labels import LESION, LESION_HOST_IDS


def lesions_touching(lesion: np.ndarray, organ: np.ndarray, host_ids: Iterable[int] = LESION_HOST_IDS, *, connectivity: int = 26) -> np.ndarray:
    """The lesion mask restricted to the connected components that overlap or touch a host organ.

    Args:
        lesion: (I, J, K) mask, non-zero = lesion.
        organ: (I, J, K) organ label map on the same grid.
        host_ids: organ ids a lesion may lie in or against.
        connectivity: 6, 18 or 26, for both the lesion components and "touch".

    Returns:
        A bool mask: the components of `lesion` with at least one voxel in, or face/edge/corner
        adjacent to (per `connectivity`), a voxel of a host organ. Empty input gives an empty mask.
    """
    _check_same_shape(lesion, organ)
    mask = lesion != 0
    if not mask.any():
        return mask
    host = np.isin(organ, np.asarray(list(host_ids), dtype=organ.dtype))
    if not host.any():
        return np.zeros_like(mask)
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    near_host = ndimage.binary_dilation(host, structure=structure)
    components = cc3d.connected_components(mask, connectivity=connectivity)
    keep = np.unique(components[near_host & mask])
    return np.isin(components, keep[keep != 0])


def merge_labels(
    organ: np.ndarray,
    lesion: np.ndarray,
    *,
    lesion_id: int = LESION,
    host_ids: Iterable[int] | None = None,
    connectivity: int = 26,
) -> np.ndarray:
    """Overlay the lesion mask on the organ label map; the lesion wins.

    Args:
        organ: (I, J, K) integer organ labels (0 background, 1-13 organs).
        lesion: (I, J, K) mask on the same grid, non-zero = lesion (a 0/14 label map works as is).
        lesion_id: value written for lesion voxels.
        host_ids: when given, only lesion components that overlap or touch one of these organs are kept
            (see :func:`lesions_touching`); None keeps every lesion voxel.

    Returns:
        (I, J, K) uint8: ``lesion_id`` where the (kept) lesion mask is set, else the organ label.

    Raises:
        GeometryError: the two arrays differ in shape.
    """
    _check_same_shape(lesion, organ)
    mask = lesion != 0 if host_ids is None else lesions_touching(lesion, organ, host_ids, connectivity=connectivity)
    out = organ.astype(np.uint8, copy=True)
    out[mask] = lesion_id
    return out


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise GeometryError(f"lesion mask shape {a.shape} differs from organ label shape {b.shape}")
