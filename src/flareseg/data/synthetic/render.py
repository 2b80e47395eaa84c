"""Rendering a phantom onto its voxel grid: the body, the 13 labelled organs, then the lesions.

:func:`render` paints in a fixed order (later structures overwrite earlier ones, so organs abut
instead of overlapping): background, thorax, bowel, muscles and vessels (label 0), the organs
(labels 1-13), the bones (label 0) and last the lesions (label 14, inside their host). It draws
nothing from a random generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import flareseg.labels as L
from flareseg.data.synthetic.anatomy import Anatomy
from flareseg.data.synthetic.body import background, paint_bones, paint_bowel, paint_muscles, paint_thorax, paint_tubes, paint_vessels
from flareseg.data.synthetic.lesions import Lesion
from flareseg.data.synthetic.scanner import Canvas, Scan
from flareseg.data.synthetic.shapes import CanonicalGrid, coarsen, upsample_rows

_HOST_TISSUE = {  # the tissue (key of Scan.hu) a lesion's HU is relative to
    L.LIVER: "liver",
    L.RIGHT_KIDNEY: "kidney_cortex",
    L.LEFT_KIDNEY: "kidney_cortex",
    L.PANCREAS: "pancreas",
    L.SPLEEN: "spleen",
    L.STOMACH: "gi_wall",
    L.DUODENUM: "gi_wall",
    L.GALLBLADDER: "gi_wall",  # a polyp on the wall
    0: "muscle",
}


@dataclass
class Rendered:
    """A rendered phantom on the canonical grid, before noise.

    Attributes:
        image: (I, J, K) float32 HU.
        label: (I, J, K) uint8 complete label map, ids 0-14.
        organs: the label map before the lesions were painted (`label` itself when there are none).
        lesions: one record per lesion: host, kind, radius_mm, voxels (0 when out of view), center_lps_mm.
    """

    image: np.ndarray
    label: np.ndarray
    organs: np.ndarray
    lesions: list[dict[str, Any]]


def _flat(anat: Anatomy, value: float, amp: float = 4.0, fine_amp: float = 0.0) -> Callable:
    """HU function: `value` plus `amp` HU of the coarse texture and `fine_amp` HU of the fine one."""

    def f(_, axes):
        out = value + amp * anat.tex(axes)
        if fine_amp:
            out += fine_amp * anat.tex(axes, fine=True)
        return out

    return f


def _paint_solid_organs(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Liver (with its veins), spleen (heterogeneous in the arterial phase), kidneys (cortex, medulla)."""
    hu, O = scan.hu, anat.organs
    canvas.paint(O[L.LIVER].shape, _flat(anat, hu["liver"], 4.0, 2.0), L.LIVER)
    paint_tubes(canvas, anat.vessels.liver_veins, hu["hepatic_vein"], label=None, within=lambda sl: canvas.label[sl] == L.LIVER)
    spleen_fine = 22.0 if scan.phase == "arterial" else 2.0
    canvas.paint(O[L.SPLEEN].shape, _flat(anat, hu["spleen"], 4.0, spleen_fine), L.SPLEEN)

    def kidney_hu(f, axes):
        depth = np.clip((-f - 6.0) / 2.0 + 0.5, 0, 1)  # 0 in the cortex, 1 from 7 mm deep
        pyramids = np.clip((0.3 - anat.tex(axes, fine=True)) * 2.0, 0, 1)
        medulla = depth * pyramids
        return hu["kidney_cortex"] + (hu["kidney_medulla"] - hu["kidney_cortex"]) * medulla + 3 * anat.tex(axes)

    canvas.paint(O[L.RIGHT_KIDNEY].shape, kidney_hu, L.RIGHT_KIDNEY)
    canvas.paint(O[L.LEFT_KIDNEY].shape, kidney_hu, L.LEFT_KIDNEY)


def _paint_digestive_organs(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Oesophagus, stomach (air-fluid level), pancreas (lobulated), duodenum and gallbladder, with walls."""
    hu, O, gut = scan.hu, anat.organs, anat.gut
    lumen_value = hu["fluid"] + (230.0 if gut.oral_contrast else 0.0)
    air_esophagus = gut.stomach_air > 0.2

    def esophagus_hu(f, axes):
        out = np.full(f.shape, hu["esophagus"], np.float32)
        if air_esophagus:
            out[f < -6.0] = -900.0  # a thin air lumen
        return out

    canvas.paint(O[L.ESOPHAGUS].shape, esophagus_hu, L.ESOPHAGUS)

    st_pts = anat.stomach.points
    y_air = st_pts[:, 1].min() + gut.stomach_air * (st_pts[:, 1].max() - st_pts[:, 1].min())

    def stomach_hu(f, axes):
        y = axes[1].astype(np.float32)[None, :, None]
        lumen = np.where(y < y_air, np.float32(-990.0), np.float32(lumen_value)) + 10 * anat.tex(axes, fine=True)
        return np.where(f > -4.0, np.float32(hu["gi_wall"]), lumen)

    canvas.paint(O[L.STOMACH].shape, stomach_hu, L.STOMACH)

    def pancreas_hu(f, axes):
        lob = np.clip(anat.tex(axes, fine=True) - 0.5, 0, 1.2)
        return hu["pancreas"] + 4 * anat.tex(axes) - 45 * lob

    canvas.paint(O[L.PANCREAS].shape, pancreas_hu, L.PANCREAS)

    def duodenum_hu(f, axes):
        t = anat.tex(axes, fine=True)
        lumen = np.where(t > 1.0, np.float32(-990.0), np.float32(lumen_value))
        return np.where(f > -2.5, np.float32(hu["gi_wall"]), lumen)

    canvas.paint(O[L.DUODENUM].shape, duodenum_hu, L.DUODENUM)
    canvas.paint(
        O[L.GALLBLADDER].shape,
        lambda f, axes: np.where(f > -1.5, np.float32(hu["gi_wall"] - 10), np.float32(hu["gallbladder"])),
        L.GALLBLADDER,
    )


def _paint_adrenals_and_great_vessels(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Adrenal glands, IVC and aorta (with wall calcification where the anatomy has it)."""
    hu, O = scan.hu, anat.organs
    canvas.paint(O[L.RIGHT_ADRENAL].shape, _flat(anat, hu["adrenal"], 3.0), L.RIGHT_ADRENAL)
    canvas.paint(O[L.LEFT_ADRENAL].shape, _flat(anat, hu["adrenal"], 3.0), L.LEFT_ADRENAL)
    canvas.paint(O[L.IVC].shape, _flat(anat, hu["ivc"], 4.0), L.IVC)
    calcified = anat.aorta_calcified

    def aorta_hu(f, axes):
        out = hu["aorta"] + 3 * anat.tex(axes)
        if calcified:
            plaque = (f > -2.0) & (anat.tex(axes, fine=True) > 1.2)
            out = np.where(plaque, np.float32(600.0), out)
        return out

    canvas.paint(O[L.AORTA].shape, aorta_hu, L.AORTA)


def _paint_lesions(canvas: Canvas, anat: Anatomy, scan: Scan, lesions: list[Lesion]) -> list[dict[str, Any]]:
    """Paint the lesions (label 14) inside their host organ, or in fat and soft tissue outside organs.

    Returns:
        One record per lesion: host, kind, radius_mm, voxels (labelled voxels; 0 when out of view)
        and center_lps_mm (physical LPS centre).
    """
    records = []
    for les in lesions:
        host_hu = scan.hu[_HOST_TISSUE[les.host]]

        def within(sl, les=les):
            lab = canvas.label[sl]
            if les.host:
                return lab == les.host
            img = canvas.image[sl]
            return (lab == 0) & (img > -200) & (img < 150)

        def lesion_hu(f, axes, les=les, host_hu=host_hu):
            t = anat.tex(axes, fine=True)
            if les.kind == "cystic":
                return les.contrast + 3 * t
            if les.kind == "necrotic":
                core = f < -0.35 * les.radius
                return np.where(core, np.float32(15.0), np.float32(host_hu + 25.0)) + 5 * t
            if les.kind == "node":
                return scan.hu["muscle"] + les.contrast + 5 * t
            return host_hu + les.contrast + 0.2 * abs(les.contrast) * t

        res = canvas.paint(les.shape, lesion_hu, L.LESION, within=within)
        records.append(
            {
                "host": L.name_of(les.host) if les.host else "elsewhere",
                "kind": les.kind,
                "radius_mm": round(les.radius, 1),
                "voxels": int(res[1].sum()) if res is not None else 0,
                "center_lps_mm": [round(float(c + o), 1) for c, o in zip(les.center, canvas.grid.shift)],
            }
        )
    return records


def render(anat: Anatomy, scan: Scan, grid: CanonicalGrid, lesions: list[Lesion]) -> Rendered:
    """Paint the phantom onto `grid`: the background on a coarse lattice upsampled to the voxels, then
    every structure in turn (see the module docstring for the order)."""
    coarse, plans = coarsen(grid.axes, (1.5, 1.5, 8.0))
    back = background(anat, scan, *coarse)
    image = np.empty(grid.shape, np.float32)
    for rows, values in upsample_rows(back, plans):
        image[rows] = values
    del back
    canvas = Canvas(grid, image, edge_mm=0.8 * grid.spacing[0])
    paint_thorax(canvas, anat, scan)
    paint_bowel(canvas, anat, scan)
    paint_muscles(canvas, anat, scan)
    paint_vessels(canvas, anat, scan)
    _paint_solid_organs(canvas, anat, scan)
    _paint_digestive_organs(canvas, anat, scan)
    _paint_adrenals_and_great_vessels(canvas, anat, scan)
    paint_bones(canvas, anat, scan)
    organs = canvas.label.copy() if lesions else canvas.label
    records = _paint_lesions(canvas, anat, scan, lesions)
    return Rendered(image, canvas.label, organs, records)
