"""Statistics of a segmentation: organ volumes and intensities, lesions and their burden per host organ.

Numpy only. Units: volumes in millilitres, lengths in millimetres, intensities in HU. Voxel positions
are physical LPS coordinates (``origin + direction @ (index * spacing)``), so the figures do not depend
on the file's orientation. A lesion is a 26-connected component of label 14 (as in
:mod:`flareseg.evaluation.lesions`); its longest axial diameter is the largest distance between two of
its voxel centres in one axial plane (constant LPS z, within a quarter voxel), plus one voxel's
in-plane extent; its host organ is the organ that most of the voxels touching it belong to.
"""

from __future__ import annotations

from typing import Any

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from flareseg.errors import GeometryError
from flareseg.labels import BY_ID, LESION, ORGAN_IDS


def _physical(indices: np.ndarray, spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(n, 3) voxel indices -> (n, 3) LPS positions in mm."""
    return origin + (indices * spacing) @ direction.T


def _longest_axial_diameter(points: np.ndarray, in_plane_voxel_mm: float) -> float:
    """Largest distance (mm) between two points that share an axial plane, plus one voxel's extent."""
    z = points[:, 2]
    tolerance = max(in_plane_voxel_mm / 4, 1e-3)
    best = 0.0
    order = np.argsort(z)
    points, z = points[order], z[order]
    starts = np.flatnonzero(np.r_[True, np.diff(z) > tolerance])
    for a, b in zip(starts, np.r_[starts[1:], len(z)]):
        plane = points[a:b, :2]
        if len(plane) > 3:
            try:
                plane = plane[ConvexHull(plane).vertices]
            except QhullError:  # collinear points
                pass
        if len(plane) > 1:
            d = np.sqrt(((plane[:, None, :] - plane[None, :, :]) ** 2).sum(-1)).max()
            best = max(best, float(d))
    return best + in_plane_voxel_mm


def segmentation_statistics(
    label: np.ndarray,
    image: np.ndarray | None,
    *,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-organ and per-lesion statistics of an (I, J, K) label map (ids 0-14).

    Args:
        label: the label map.
        image: the CT in HU on the same grid, or None (no intensity figures).
        spacing, origin, direction: the grid (mm, LPS; direction's columns are the index axes).

    Returns:
        ``{"organs": {name: {id, volume_ml, voxels, hu_mean, hu_median, hu_std, bbox_mm}}, "lesions":
        [{index, volume_ml, longest_axial_diameter_mm, host, centre_mm}], "lesion_count",
        "lesion_burden_ml": {host: ml}}``. Organs absent from the map are left out; ``bbox_mm`` is the
        (min, max) LPS corner of the organ's voxel centres.

    Raises:
        GeometryError: `image` and `label` differ in shape.
    """
    if image is not None and image.shape != label.shape:
        raise GeometryError(f"image shape {image.shape} differs from the label map's {label.shape}")
    spacing_a = np.asarray(spacing, dtype=float)
    origin_a = np.asarray(origin, dtype=float)
    direction_a = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    voxel_ml = float(np.prod(spacing_a)) / 1000.0
    organs: dict[str, Any] = {}
    for organ_id in ORGAN_IDS:
        mask = label == organ_id
        count = int(mask.sum())
        if not count:
            continue
        points = _physical(np.argwhere(mask), spacing_a, origin_a, direction_a)
        entry: dict[str, Any] = {
            "id": organ_id, "voxels": count, "volume_ml": round(count * voxel_ml, 3),
            "bbox_mm": [points.min(0).round(2).tolist(), points.max(0).round(2).tolist()],
        }
        if image is not None:
            values = image[mask]
            entry.update(hu_mean=round(float(values.mean()), 2), hu_median=round(float(np.median(values)), 2), hu_std=round(float(values.std()), 2))
        organs[BY_ID[organ_id].name] = entry
    lesions, burden = [], {}
    components = cc3d.connected_components((label == LESION).astype(np.uint8), connectivity=26)
    extent = np.abs(direction_a) @ spacing_a  # one voxel's extent along LPS x, y, z
    in_plane = float(min(extent[0], extent[1]))
    for index in range(1, int(components.max()) + 1):
        mask = components == index
        points = _physical(np.argwhere(mask), spacing_a, origin_a, direction_a)
        shell = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool)) & ~mask
        around = label[shell]
        around = around[(around > 0) & (around != LESION)]
        host = BY_ID[int(np.bincount(around).argmax())].name if around.size else "none"
        volume = round(int(mask.sum()) * voxel_ml, 3)
        lesions.append({
            "index": index, "volume_ml": volume, "longest_axial_diameter_mm": round(_longest_axial_diameter(points, in_plane), 2),
            "host": host, "centre_mm": points.mean(0).round(2).tolist(),
        })
        burden[host] = round(burden.get(host, 0.0) + volume, 3)
    return {"organs": organs, "lesions": lesions, "lesion_count": len(lesions), "lesion_burden_ml": burden}


def statistics_csv(stats: dict[str, Any]) -> str:
    """The statistics as CSV: one row per organ and per lesion."""
    lines = ["kind,name,volume_ml,hu_mean,hu_median,hu_std,longest_axial_diameter_mm,host"]
    for name, o in stats["organs"].items():
        lines.append(f"organ,{name},{o['volume_ml']},{o.get('hu_mean', '')},{o.get('hu_median', '')},{o.get('hu_std', '')},,")
    for lesion in stats["lesions"]:
        lines.append(f"lesion,lesion {lesion['index']},{lesion['volume_ml']},,,,{lesion['longest_axial_diameter_mm']},{lesion['host']}")
    return "\n".join(lines) + "\n"
