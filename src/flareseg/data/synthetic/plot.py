"""A figure of a phantom: axial and coronal slices, plain and with the labels (matplotlib imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import flareseg.labels as L
from flareseg.io import Volume, save_figure


def _slice_levels(lab: np.ndarray) -> tuple[list[int], int]:
    """The axial slices to show of an (I, J, K) LPS label map and the coronal slice through the kidneys.

    Axial: near the liver dome, at the pancreas and adrenals, at the kidneys, just above the kidneys'
    lower poles, and the slice with the most lesion (in place of a level near it). Where a structure is
    out of view a fixed fraction of the height stands in.

    Returns:
        (axial slice indices along K, coronal slice index along J).
    """
    nz = lab.shape[2]

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
    y_cor = int(round(kc[1])) if kc is not None else lab.shape[1] // 2
    return levels, y_cor


def plot_case(image: Volume, label: Volume, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save a PNG of a few axial slices and one coronal slice, each plain and with the labels overlaid.

    The volumes are reoriented to LPS first, and shown in radiological convention (patient's right
    on the image's left, anterior up in axial slices, superior up in the coronal slice) with an
    abdominal window (W 400, L 40) and the colours of :func:`flareseg.labels.colormap`.

    Args:
        image: CT in HU.
        label: label map (ids 0-14) on the image's grid.
        path: the PNG to write (atomically; missing folders are made).
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

    levels, y_cor = _slice_levels(lab)

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
    return save_figure(fig, path)
