"""Painting the unlabelled body (label 0) around the organs: background (air, table, skin, fat,
wall), lung bases and heart, bowel, muscles, vessels and bones.

Each painter draws nothing from a random generator: everything random is in the
:class:`~flareseg.data.synthetic.anatomy.Anatomy` and the :class:`~flareseg.data.synthetic.scanner.Scan`.
The order in which :func:`flareseg.data.synthetic.render.render` calls them decides which
structure wins where two meet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from flareseg.data.synthetic.anatomy import Anatomy, Tube
from flareseg.data.synthetic.scanner import Canvas, Scan
from flareseg.data.synthetic.shapes import Shape, capsule_shape, ellipsoid_sdf, plate_shape


def background(anat: Anatomy, scan: Scan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """HU of air, table, subcutaneous fat, skin, abdominal-wall and back muscles and visceral fat.

    Args:
        x, y, z: 1-D axes (mm, patient frame), usually a coarse lattice over the whole grid.

    Returns:
        The (len(x), len(y), len(z)) float32 HU.
    """
    hu = scan.hu
    tor = anat.torso
    b = tor.body
    s = tor.s
    X = x.astype(np.float32)[:, None]
    Y = y.astype(np.float32)[None, :]
    # Muscle wall outline (ellipse around the cavity) and the body outline over it (fat).
    yc, ca, cb = tor.cavity
    ma, mb = ca + b.muscle_lat, cb + b.muscle_ant
    r_m = np.sqrt((X / ma) ** 2 + ((Y - yc) / mb) ** 2)
    yc_o = 0.5 * (b.y_post + b.y_ant)
    bo = 0.5 * (b.y_post - b.y_ant)
    u, v = X / b.a, (Y - yc_o) / bo
    theta = np.arctan2(v, u)
    p = np.where(v > 0, b.flat, 2.0).astype(np.float32)
    rho = (np.abs(u) ** p + np.abs(v) ** p) ** (1 / p)
    wob = 1.0 + sum(w * np.cos((k + 2) * theta + ph) for k, (w, ph) in enumerate(zip(b.wobble, b.phase)))
    rho /= wob
    r_mm = np.sqrt(X**2 + (Y - yc_o) ** 2)
    radius = r_mm / np.maximum(rho, 1e-3)  # outline radius (mm) along each in-plane ray
    wall_radius = r_mm / np.maximum(r_m, 1e-3)
    fat = np.maximum(radius - wall_radius, 3.0)
    taper = 1.0 + b.taper * (z / 150.0) + 0.04 * np.sin(z / 70.0 + b.phase[0])
    d_body = r_mm[:, :, None] - (wall_radius[:, :, None] + fat[:, :, None] * taper.astype(np.float32)[None, None, :])

    # In-plane tissue map inside the body.
    d_wall = (r_m - 1.0) * min(ma, mb)
    d_cav = tor.cavity_sdf2(x, y)
    tissue = np.full(X.shape[:1] + Y.shape[1:], hu["fat"], np.float32)
    tissue += 6 * anat.tex((x, y, np.zeros(1)))[:, :, 0]
    muscle = (d_wall < 0) & (d_cav > 0)
    linea_alba = (np.abs(X) < 5 * s) & (Y < yc - 0.5 * cb)
    tissue[muscle & ~linea_alba] = hu["muscle"]
    tissue[d_cav <= 0] = hu["visceral_fat"]
    yv0 = float(tor.yv(0.0))
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


def paint_thorax(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Lung bases above the diaphragm domes and the heart above the central tendon (label 0)."""
    hu = scan.hu
    tor = anat.torso
    s = tor.s
    yc, ca, cb = tor.cavity
    z_dome_min = min(tor.dome_right, tor.dome_left) - 90 * tor.h
    lo = np.array([-ca, yc - cb, z_dome_min])
    hi = np.array([ca, yc + cb, 400.0])

    def lung_sdf(x, y, z):
        X = x.astype(np.float32)[:, None]
        Y = y.astype(np.float32)[None, :]
        cav = tor.cavity_sdf2(x, y, 2.0)
        yv0 = float(tor.yv(0.0))
        spine = (np.sqrt((X / (50 * s)) ** 2 + ((Y - yv0 - 22 * s) / (50 * s)) ** 2) - 1) * 45 * s
        media = (np.sqrt(((X - 8 * s) / (32 * s)) ** 2 + ((Y + 30 * s) / (100 * s)) ** 2) - 1) * 30 * s
        f2 = np.maximum(np.maximum(cav, -spine), -media)
        dome = tor.dome(X, Y)
        return np.maximum(f2[:, :, None], (dome[:, :, None] + 5.0) - z.astype(np.float32)[None, None, :])

    def lung_hu(f, axes):
        t = anat.tex(axes, fine=True)
        vessels = np.clip((t - 1.3) * 2.5, 0, 1) * 750  # a few vessels crossing the slices
        vessels += hu["lung"] + 15 * t
        return vessels

    canvas.paint(Shape(lung_sdf, lo, hi, (2.0, 2.0, 2.0)), lung_hu)
    c, r = anat.heart.center, anat.heart.radii
    heart = ellipsoid_sdf(c, r)

    def heart_sdf(x, y, z):
        dome = tor.dome(x.astype(np.float32)[:, None], y.astype(np.float32)[None, :])
        return np.maximum(heart(x, y, z), (dome[:, :, None] + 2.0) - z.astype(np.float32)[None, None, :])

    canvas.paint(
        Shape(heart_sdf, c - r - 5, c + r + 5, (2.5, 2.5, 2.5)),
        lambda f, axes: np.where(f > -11, np.float32(hu["myocardium"]), np.float32(hu["heart_blood"])),
    )


def paint_bowel(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Small-bowel loops and the colon (label 0), with walls, fluid, gas, stool or oral contrast."""
    hu = scan.hu
    tor, gut = anat.torso, anat.gut
    g1, g2, g3 = gut.bowel_fields
    lo, hi = gut.bowel_lo, gut.bowel_hi
    r = gut.bowel_radius
    yv0 = float(tor.yv(0.0))
    contrast = gut.oral_contrast

    def lumen_hu(f, axes):
        # Content by a smooth field: collapsed loops (soft tissue), fluid (or oral contrast), gas.
        t = g3(*axes)
        fluid = hu["fluid"] + (230.0 if contrast else 0.0)
        out = np.where(t < -0.5, np.float32(hu["gi_wall"] - 15), np.float32(fluid))
        out[t > 1.5] = -990.0
        out += 10 * anat.tex(axes, fine=True)
        out[f > -2.5] = hu["gi_wall"]
        return out

    def bowel_sdf(x, y, z):
        # Tubes around the curves where two smooth random fields both vanish (|g| / |grad g| ~ distance).
        a, b = g1(x, y, z), g2(x, y, z)
        f = np.sqrt(a * a + b * b) * 10.5 - r
        region = np.maximum(tor.cavity_sdf2(x, y, 4.0), (y.astype(np.float32) - (yv0 - 12 * tor.s))[None, :])[:, :, None]
        return np.maximum(np.maximum(f, region), (z.astype(np.float32) - hi[2])[None, None, :])

    canvas.paint(Shape(bowel_sdf, lo, hi, (2.5, 2.5, 2.5)), lumen_hu)

    # Colon: wall first over every piece, then the contents (stool and gas), so joints stay clean.
    pieces = [capsule_shape(tube.points, tube.radii, (2.0, 2.0, 2.0), margin=4) for tube in gut.colon]
    for shape in pieces:
        canvas.paint(shape, hu["gi_wall"])
    for shape in pieces:
        inner = Shape(lambda x, y, z, sdf=shape.sdf: sdf(x, y, z) + 2.5, shape.lo, shape.hi, shape.detail)
        canvas.paint(inner, lambda f, axes: np.where(anat.tex(axes, True) > 0.5, np.float32(-950.0), np.float32(-20.0)) + 25 * anat.tex(axes))


def paint_muscles(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Psoas (growing caudally beside the spine), quadratus lumborum and the gluteal muscles."""
    tor = anat.torso
    s, h = tor.s, tor.h
    for side in (-1, 1):
        zs = np.array([25, 0, -40, -80, -120, -170]) * h
        pts = np.array([[side * (26 + 0.12 * (25 - z / h)) * s, float(tor.yv(z)) - 2 * s - 0.06 * (25 - z / h) * s, z] for z in zs])
        rad = np.clip(4 + 0.13 * (25 - zs / h), 4, 25) * s
        canvas.paint(capsule_shape(pts, rad, (2.0, 2.0, 4.0), yscale=1.15), scan.hu["muscle"] - 3)
        ql = np.array([[side * 60 * s, float(tor.yv(z)) + 22 * s, z] for z in np.array([30, -20, -70, -120]) * h])
        canvas.paint(capsule_shape(ql, np.array([7, 10, 12, 10]) * s, (2.0, 2.0, 4.0), yscale=1.6), scan.hu["muscle"] - 3)
    for wing in anat.ilium:
        canvas.paint(plate_shape(wing.gluteus, wing.gluteus_radii, wing.crest + 6, scan.z_range[0] - 5, (2.0, 2.0, 2.0)), scan.hu["muscle"])


def paint_tubes(canvas: Canvas, tubes: Sequence[Tube], hu_value: float, detail=(1.5, 1.5, 2.0), **kw) -> None:
    """Paint each capsule chain of `tubes` with one HU value; `kw` as for :meth:`Canvas.paint`."""
    for tube in tubes:
        canvas.paint(capsule_shape(tube.points, tube.radii, detail, margin=4), hu_value, **kw)


def paint_vessels(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """The unlabelled vessels outside the organs: portal system and renal veins, visceral and iliac vessels."""
    hu = scan.hu
    v = anat.vessels
    paint_tubes(canvas, v.outside_veins, hu["portal_vein"])
    paint_tubes(canvas, v.visceral_arteries, hu["aorta"], detail=(1.0, 1.0, 1.5))
    paint_tubes(canvas, v.iliac_arteries, hu["aorta"])
    paint_tubes(canvas, v.iliac_veins, hu["ivc"])


def _segment(X, Y, a, b, r):
    """2-D distance (mm) to the in-plane segment a-b, minus radius r (mm); X, Y broadcasting arrays."""
    ab = np.subtract(b, a)
    t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1]) / float(ab @ ab), 0, 1)
    return np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2) - r


def _paint_spine(canvas: Canvas, anat: Anatomy, scan: Scan, bone_hu: Callable) -> None:
    """Vertebral bodies (HU by `bone_hu`), discs, arches with their processes and the canal (CSF)."""
    hu = scan.hu
    tor = anat.torso
    s = tor.s
    sp = anat.spine
    z_lo, z_hi = scan.z_range
    yv_lo = float(min(tor.yv(z_lo), tor.yv(z_hi)))
    yv_hi = float(max(tor.yv(z_lo), tor.yv(z_hi)))
    lo = np.array([-60 * s, yv_lo - sp.ry - 6, z_lo - 5])
    hi = np.array([60 * s, yv_hi + 75 * s, z_hi + 5])

    def local(x, y, z):
        X = x.astype(np.float32)[:, None, None]
        Yr = y.astype(np.float32)[None, :, None] - tor.yv(z).astype(np.float32)[None, None, :]
        Z = z.astype(np.float32)
        dz = (np.mod(Z - sp.phase, sp.period) - 0.5 * sp.period)[None, None, :]
        thoracic = np.clip((Z - 20 * tor.h) / (40 * tor.h), 0, 1)[None, None, :]
        return X, Yr, dz, thoracic

    canal_y, canal_r = sp.ry + 10 * s, 8.5 * s

    def body_2d(X, Yr, thoracic):
        rx = sp.rx * (1 - 0.25 * thoracic)
        ry = sp.ry * (1 - 0.15 * thoracic)
        oval = (np.sqrt((X / rx) ** 2 + (Yr / ry) ** 2) - 1) * ry
        return np.maximum(oval, canal_r + 6 * s - np.sqrt(X**2 + (Yr - canal_y) ** 2))  # concave back

    def disc_sdf(x, y, z):
        X, Yr, _, th = local(x, y, z)
        return body_2d(X, Yr, th)

    def vertebra_sdf(x, y, z):
        X, Yr, dz, th = local(x, y, z)
        return np.maximum(body_2d(X, Yr, th), np.abs(dz) - 0.5 * sp.height)

    def arch_sdf(x, y, z):
        X, Yr, dz, _ = local(x, y, z)
        Xa = np.abs(X)
        h = tor.h
        root = (canal_r + 3 * s, canal_y)
        roof = (0.0, canal_y + canal_r + 4 * s)
        pedicle = _segment(Xa, Yr, (0.5 * sp.rx, sp.ry - 4 * s), root, 4.5 * s)
        lamina = _segment(Xa, Yr, root, roof, 3.8 * s)
        spinous = np.minimum(_segment(Xa, Yr, roof, (0.0, roof[1] + 26 * s), 3.5 * s), _segment(Xa, Yr, (0.0, roof[1] + 24 * s), (0.0, roof[1] + 30 * s), 5.5 * s))
        lumbar = np.clip((30 * h - z.astype(np.float32)) / (10 * h), 0, 1)[None, None, :]
        tip_x = root[0] + 6 * s + 28 * s * lumbar
        transverse = np.sqrt((Xa - np.clip(Xa, root[0], tip_x)) ** 2 + (Yr - canal_y - 1.5 * s) ** 2) - 4.0 * s + 0.05 * (Xa - root[0]).clip(0)
        half = 0.5 * sp.height
        arch = np.maximum(np.minimum(pedicle, lamina), np.abs(dz + 3 * h) - half - 1)
        spinous = np.maximum(spinous, np.abs(dz + 3 * h + 0.35 * np.maximum(Yr - roof[1], 0)) - half + 3)
        transverse = np.maximum(transverse, np.abs(dz) - 7 * h)
        return np.minimum(np.minimum(arch, spinous), transverse)

    def canal_sdf(x, y, z):
        X, Yr, _, _ = local(x, y, z)
        return np.sqrt(X**2 + (Yr - canal_y) ** 2) - canal_r

    canvas.paint(Shape(disc_sdf, lo, hi, (1.0, 1.0, 2.0)), hu["disc"])
    canvas.paint(Shape(vertebra_sdf, lo, hi, (1.0, 1.0, 1.0)), bone_hu)
    canvas.paint(Shape(arch_sdf, lo + [0, 2 * sp.ry, 0], hi, (1.0, 1.0, 1.0)), bone_hu)
    canvas.paint(Shape(canal_sdf, lo, hi, (1.0, 1.0, 2.0)), hu["csf"])


def paint_bones(canvas: Canvas, anat: Anatomy, scan: Scan) -> None:
    """Vertebrae (bodies with cortex and marrow, discs, arches, canal), iliac wings and ribs (label 0)."""
    hu = scan.hu

    def bone_hu(f, axes):
        return np.where(f > -1.8, np.float32(hu["bone_cortex"]), hu["bone_marrow"] + 40 * anat.tex(axes, fine=True))

    _paint_spine(canvas, anat, scan, bone_hu)
    for wing in anat.ilium:
        canvas.paint(plate_shape(wing.wing, wing.wing_radii, wing.crest, scan.z_range[0] - 5, (1.0, 1.0, 1.5)), bone_hu)

    # Ribs: cortex over the whole rib first, then the marrow, so segment joints stay clean.
    segments = []
    for rib in anat.ribs:
        pts, rad, cart = rib.points, rib.radius, rib.cartilage
        for i in range(len(pts) - 1):
            seg = capsule_shape(pts[i : i + 2], [rad, rad], (1.0, 1.0, 1.0), margin=3)
            segments.append((seg, cart[i + 1]))
    for seg, cart in segments:
        canvas.paint(seg, hu["cartilage"] if cart else hu["bone_cortex"])
    for seg, cart in segments:
        if not cart:
            inner = Shape(lambda x, y, z, sdf=seg.sdf: sdf(x, y, z) + 1.8, seg.lo, seg.hi, seg.detail)
            canvas.paint(inner, hu["bone_marrow"])
