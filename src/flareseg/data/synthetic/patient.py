"""Drawing one patient's anatomy (mm, patient frame) from a random generator: :func:`build_anatomy`.

Each structure has its own builder; :func:`build_anatomy` calls them in a fixed order, and that
order is the order in which the generator is consumed: changing it changes every phantom drawn
from a seed. Positions are written for an average patient and scaled by the patient's in-plane
and cranio-caudal scales (:class:`_Placer`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import flareseg.labels as L
from flareseg.data.synthetic.anatomy import (
    Anatomy,
    Body,
    Ellipsoid,
    Gut,
    IliacWing,
    Organ,
    Rib,
    Spine,
    Torso,
    Tube,
    Vessels,
)
from flareseg.data.synthetic.shapes import (
    Field,
    Shape,
    capsule_shape,
    capsules_sdf,
    ellipsoid_sdf,
    perturbed,
    random_rotation,
    smooth_min,
    spline,
)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class _Placer:
    """Draws from `rng` in the patient's proportions (mm): in-plane scaled by `s`, along z by `h`."""

    def __init__(self, rng: np.random.Generator, s: float, h: float):
        self.rng, self.s, self.h = rng, s, h

    def __call__(self, x: float, y: float, z: float, jitter: float = 0.0) -> np.ndarray:
        """The point (x s, y s, z h) mm, plus Gaussian jitter of sd `jitter` mm (no draw when 0)."""
        return np.array([x * self.s, y * self.s, z * self.h]) + (self.rng.normal(0, jitter, 3) if jitter else 0.0)

    def deform(self, sdf: Callable, lo, hi, step: float, amp: float) -> Callable:
        """`sdf` deformed by a random field of correlation ~`step` mm and sd ~`amp` mm over the box [lo, hi]."""
        return perturbed(sdf, Field(self.rng, lo, hi, step, amp))


def _clip_to_cavity(torso: Torso, inner: Callable, inset: float = 2.0, dome_gap: float = 3.0) -> Callable:
    """Intersect a shape with the abdominal cavity (shrunk by `inset` mm) and the space `dome_gap` mm
    below the diaphragm."""

    def sdf(x, y, z):
        f = inner(x, y, z)
        cav = torso.cavity_sdf2(x, y, inset)[:, :, None]
        dome = torso.dome(x.astype(np.float32)[:, None], y.astype(np.float32)[None, :])[:, :, None]
        below = z.astype(np.float32)[None, None, :] - (dome - dome_gap)
        return np.maximum(np.maximum(f, cav), below)

    return sdf


def _ball_seeds(center, radii, rot, frac=0.55):
    """Draws of a point uniform in the ellipsoid (`center`, `radii` x `frac`, `rot`) (mm)."""
    c, r = np.asarray(center, float), np.asarray(radii, float)
    rot = np.eye(3) if rot is None else np.asarray(rot, float)

    def seeds(rng):
        u = rng.normal(size=3)
        u *= rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(u)
        return c + rot.T @ (u * r * frac)

    return seeds


def _tube_seeds(points, radii, frac=0.4):
    """Draws of a point near the centre line `points` (N, 3) mm, within `frac` of the local radius."""
    p, r = np.asarray(points, float), np.asarray(radii, float)

    def seeds(rng):
        i = rng.integers(0, len(p) - 1)
        t = rng.uniform()
        return p[i] + t * (p[i + 1] - p[i]) + rng.uniform(-1, 1, 3) * frac * (r[i] + t * (r[i + 1] - r[i]))

    return seeds


# ---------------------------------------------------------------------------------------------
# Builders, in the order they draw
# ---------------------------------------------------------------------------------------------


def _draw_torso(rng: np.random.Generator) -> Torso:
    """Body scales, obesity, the cavity ellipse, the wall and the diaphragm domes."""
    s = rng.uniform(0.88, 1.12)
    h = s * rng.uniform(0.94, 1.06)
    obesity = rng.beta(1.6, 2.2)
    cav_y, cav_a, cav_b = -5 * s, 138 * s * rng.uniform(0.95, 1.05), 95 * s * rng.uniform(0.95, 1.05)
    fat = {"lat": 6 + 40 * obesity, "ant": 6 + 45 * obesity, "post": 5 + 25 * obesity}
    muscle = {"lat": rng.uniform(8, 12), "ant": rng.uniform(7, 10)}
    body = Body(
        a=cav_a + muscle["lat"] + fat["lat"],
        y_post=112 * s + fat["post"],
        y_ant=cav_y - cav_b - muscle["ant"] - fat["ant"],
        muscle_lat=muscle["lat"],
        muscle_ant=muscle["ant"],
        flat=rng.uniform(2.2, 3.0),  # lying on the table
        wobble=rng.normal(0, 0.02, 4),
        phase=rng.uniform(0, 2 * np.pi, 4),
        taper=rng.uniform(-0.05, 0.05),
    )
    return Torso(
        s=s,
        h=h,
        obesity=obesity,
        cavity=(cav_y, cav_a, cav_b),
        body=body,
        dome_right=rng.uniform(98, 112) * h,
        dome_left=rng.uniform(88, 100) * h,
        dome_curvature=rng.uniform(0.85, 1.15),
    )


def _draw_liver_lobes(P: _Placer) -> tuple[Ellipsoid, Ellipsoid, Ellipsoid]:
    """The right lobe, left lobe and caudate lobe of the liver."""
    s = P.s
    rl_c, rl_r = P(-68, 0, 42, 4), np.array([74, 84, 76]) * s * P.rng.uniform(0.9, 1.08, 3)
    ll_c, ll_r = P(12, -48, 58, 5), np.array([58, 34, 34]) * s * P.rng.uniform(0.85, 1.12, 3)
    cd_c, cd_r = P(-12, 12, 48, 3), np.array([18, 18, 26]) * s
    rl_rot = random_rotation(P.rng, 8, (0, -12, 0))
    ll_rot = random_rotation(P.rng, 10, (0, 15, -10))
    return Ellipsoid(rl_c, rl_r, rl_rot), Ellipsoid(ll_c, ll_r, ll_rot), Ellipsoid(cd_c, cd_r)


def _draw_kidney_pose(P: _Placer, position: tuple[float, float, float], base_deg: tuple[float, float, float]) -> Ellipsoid:
    """A kidney's ellipsoid around the scaled `position`, tilted by `base_deg` (Euler angles) plus jitter."""
    c = P(*position, 4)
    r = np.array([24, 24, 52]) * P.s * P.rng.uniform(0.92, 1.08, 3)
    return Ellipsoid(c, r, random_rotation(P.rng, 6, base_deg))


def _liver(P: _Placer, torso: Torso, lobes: tuple[Ellipsoid, Ellipsoid, Ellipsoid], right_kidney: Ellipsoid) -> Organ:
    """Three lobes blended, the right kidney's bed cut out, clipped by wall and diaphragm, deformed."""
    right, left, caudate = lobes
    rl = ellipsoid_sdf(right.center, right.radii, right.rot)
    ll = ellipsoid_sdf(left.center, left.radii, left.rot)
    cd = ellipsoid_sdf(caudate.center, caudate.radii)
    rk = right_kidney

    def liver_core(x, y, z):
        f = smooth_min(smooth_min(rl(x, y, z), ll(x, y, z), 18.0), cd(x, y, z), 8.0)
        kid = ellipsoid_sdf(rk.center, rk.radii + 3, rk.rot)(x, y, z)
        return np.maximum(f, -kid)

    lo = np.minimum(right.center - right.radii.max(), left.center - left.radii.max()) - 12
    hi = np.maximum(right.center + right.radii.max(), left.center + left.radii.max()) + 12
    hi[2] = min(hi[2], max(torso.dome_right, torso.dome_left) + 5)
    liver = _clip_to_cavity(torso, P.deform(liver_core, lo, hi, 35.0, 6.0))
    return Organ(Shape(liver, lo, hi, (2.5, 2.5, 2.5)), _ball_seeds(right.center + P(0, -10, 0), right.radii, right.rot, 0.5))


def _spleen(P: _Placer, torso: Torso) -> Organ:
    """Posterior left, its long axis along the ribs."""
    sp_c, sp_r = P(92, 42, 52, 5), np.array([25, 58, 48]) * P.s * P.rng.uniform(0.85, 1.15, 3)
    sp_rot = random_rotation(P.rng, 8, (15, 0, -38))
    sp = ellipsoid_sdf(sp_c, sp_r, sp_rot)
    lo, hi = sp_c - sp_r.max() - 12, sp_c + sp_r.max() + 12
    spleen = _clip_to_cavity(torso, P.deform(sp, lo, hi, 25.0, 4.0))
    return Organ(Shape(spleen, lo, hi, (2.0, 2.0, 2.0)), _ball_seeds(sp_c, sp_r, sp_rot))


def _kidney(P: _Placer, pose: Ellipsoid, side: int) -> Organ:
    """A bean: the ellipsoid `pose` minus a medial hilum notch (`side` -1 right, +1 left), deformed."""
    c, r, rot = pose.center, pose.radii, pose.rot
    notch_c = c + np.array([-side * r[0] * 0.95, -r[1] * 0.2, 0])
    notch = ellipsoid_sdf(notch_c, np.array([11, 9, 20]) * P.s)
    kidney = ellipsoid_sdf(c, r, rot)
    lo, hi = c - r.max() - 10, c + r.max() + 10

    def kidney_sdf(x, y, z):
        return np.maximum(kidney(x, y, z), -notch(x, y, z))

    return Organ(Shape(P.deform(kidney_sdf, lo, hi, 25.0, 2.5), lo, hi, (1.5, 1.5, 2.0)), _ball_seeds(c, r, rot, 0.5))


def _adrenals(P: _Placer) -> dict[int, Organ]:
    """Inverted-Y tubes above and medial to the kidneys' upper poles (all positions drawn first)."""
    s, h = P.s, P.h
    organs = {}
    for label, apex, limbs in (
        (L.RIGHT_ADRENAL, P(-36, 24, 52, 2), (P(-28, 44, 32, 2), P(-48, 40, 34, 2))),
        (L.LEFT_ADRENAL, P(36, 8, 36, 2), (P(28, 32, 14, 2), P(50, 30, 18, 2))),
    ):
        top = apex + np.array([0, -4 * s, 12 * h])
        rad = P.rng.uniform(4.0, 4.6)
        parts = [capsules_sdf(np.array([top, apex, limb]), [rad * 0.9, rad, rad * 0.8]) for limb in limbs]
        pts = np.array([top, apex, *limbs])
        lo, hi = pts.min(0) - 10, pts.max(0) + 10

        def adrenal_sdf(x, y, z, parts=parts):
            return np.minimum(parts[0](x, y, z), parts[1](x, y, z))

        organs[label] = Organ(Shape(adrenal_sdf, lo, hi, (1.0, 1.0, 1.0)), _tube_seeds(pts[:3], [rad] * 3, 0.2))
    return organs


def _gallbladder(P: _Placer) -> Organ:
    """A pear from the neck (near the porta hepatis) to the fundus (anterior, inferior)."""
    neck, fundus = P(-38, -22, 22, 3), P(-58, -62, -6, 4)
    mid = 0.5 * (neck + fundus) + np.array([-5 * P.s, 0, -2])
    gb_r = P.rng.uniform(0.85, 1.15) * P.s
    gb_pts, gb_rad = np.array([neck, mid, fundus]), np.array([8, 13, 15]) * gb_r
    return Organ(capsule_shape(gb_pts, gb_rad, (1.5, 1.5, 1.5)), _tube_seeds(gb_pts[1:], gb_rad[1:], 0.3))


def _stomach(P: _Placer, torso: Torso) -> tuple[Tube, Organ, float]:
    """A curved tube from the fundus to the pylorus, clipped by the wall and the diaphragm.

    Returns:
        (centre line, organ, air fraction of the lumen depth).
    """
    st_pts = spline([P(58, 18, 84, 4), P(56, -12, 60, 4), P(50, -45, 34, 4), P(32, -62, 12, 4), P(4, -62, 2, 3), P(-16, -46, 6, 2)], 14)
    st_rad = np.interp(np.linspace(0, 1, 14), [0, 0.25, 0.5, 0.75, 1], np.array([30, 34, 30, 22, 13]) * P.s * P.rng.uniform(0.8, 1.15))
    lo, hi = st_pts.min(0) - st_rad.max() - 10, st_pts.max(0) + st_rad.max() + 10
    stomach = _clip_to_cavity(torso, P.deform(capsules_sdf(st_pts, st_rad), lo, hi, 30.0, 4.0))
    organ = Organ(Shape(stomach, lo, hi, (2.0, 2.0, 2.0)), _tube_seeds(st_pts, st_rad, 0.5))
    return Tube(st_pts, st_rad), organ, P.rng.uniform(0.0, 0.45)


def _duodenum(P: _Placer, pylorus: np.ndarray) -> tuple[Tube, Organ]:
    """A C-loop around the pancreatic head, from the `pylorus` (3,) mm to the duodenojejunal flexure."""
    du_pts = spline(
        [pylorus, P(-36, -34, 8, 2), P(-50, -10, -2, 2), P(-52, 0, -32, 3), P(-44, 2, -62, 3), P(-18, -12, -74, 3), P(8, -16, -76, 3), P(26, -16, -60, 3), P(32, -20, -40, 3)],
        24,
    )
    du_rad = np.full(len(du_pts), 11.0 * P.s * P.rng.uniform(0.85, 1.15))
    return Tube(du_pts, du_rad), Organ(capsule_shape(du_pts, du_rad, (1.5, 1.5, 1.5)), _tube_seeds(du_pts, du_rad, 0.3))


def _pancreas(P: _Placer) -> Organ:
    """Head in the C-loop, neck, body across the aorta, tail to the splenic hilum."""
    pa_pts = spline([P(-32, -16, -38, 2), P(-30, -20, -18, 2), P(-8, -40, -4, 2), P(28, -30, 6, 3), P(62, 6, 16, 3), P(82, 26, 24, 3)], 16)
    pa_rad = np.interp(np.linspace(0, 1, 16), [0, 0.2, 0.45, 1], np.array([13, 15, 11, 8]) * P.s * P.rng.uniform(0.85, 1.15))
    lo, hi = pa_pts.min(0) - 20, pa_pts.max(0) + 20
    pancreas = P.deform(capsules_sdf(pa_pts, pa_rad), lo, hi, 15.0, 2.0)
    return Organ(Shape(pancreas, lo, hi, (1.5, 1.5, 1.5)), _tube_seeds(pa_pts, pa_rad, 0.3))


def _esophagus(P: _Placer) -> Organ:
    """From the top of the scan along the front of the spine to the gastric cardia."""
    es_pts = spline([P(4, 20, 260), P(6, 16, 160, 2), P(16, 2, 100, 2), P(30, -4, 80, 2), P(42, 4, 72, 2)], 16)
    es_rad = np.full(len(es_pts), P.rng.uniform(7.5, 9.5) * P.s)
    return Organ(capsule_shape(es_pts, es_rad, (1.5, 1.5, 3.0), yscale=1.2), _tube_seeds(es_pts[6:], es_rad[6:], 0.2))


def _aorta(P: _Placer, torso: Torso) -> tuple[Tube, Organ]:
    """Left-anterior of the spine, down to its bifurcation at L4."""
    s, h = P.s, P.h
    ao_z = np.array([260, 160, 110, 60, 0, -60, -100]) * h
    ao_pts = np.array([[30 * s, float(torso.yv(z)) - 12 * s, z] for z in ao_z[:2]] + [
        [(22 - 0.1 * i) * s, float(torso.yv(z)) - (24 + 5 * i) * s, z] for i, z in enumerate(ao_z[2:])
    ])
    ao_pts[2:, 0] = np.array([22, 15, 11, 7, 4]) * s
    ao_pts += P.rng.normal(0, 1.5, ao_pts.shape) * [1, 1, 0]
    ao_rad = np.array([13, 13, 12, 11.5, 11, 10, 9]) * s * P.rng.uniform(0.85, 1.15)
    return Tube(ao_pts, ao_rad), Organ(capsule_shape(ao_pts, ao_rad, (1.5, 1.5, 3.0)), _tube_seeds(ao_pts, ao_rad, 0.2))


def _ivc(P: _Placer) -> tuple[Tube, Organ]:
    """Right of the aorta, flattened front to back."""
    iv_pts = np.array([P(-14, 0, 118), P(-20, 6, 90, 1.5), P(-22, 8, 45, 1.5), P(-24, 10, 0, 1.5), P(-20, 14, -60, 1.5), P(-10, 18, -104, 1.5)])
    iv_rad = np.array([14, 13, 12, 12, 11, 10]) * P.s * P.rng.uniform(0.85, 1.15)
    return Tube(iv_pts, iv_rad), Organ(capsule_shape(iv_pts, iv_rad, (1.5, 1.5, 3.0), yscale=1.35), _tube_seeds(iv_pts, iv_rad, 0.2))


def _vessels(P: _Placer, aorta: Tube, ivc: Tube, right_kidney: Ellipsoid, left_kidney: Ellipsoid) -> Vessels:
    """Iliac vessels, the portal system, renal veins, SMA and coeliac trunk, veins inside the liver."""
    s, h = P.s, P.h
    ao_pts, iv_pts = aorta.points, ivc.points
    iliac_arteries = [Tube(np.array([ao_pts[-1], P(side * 30, 26, -140), P(side * 52, 34, -200)]), np.array([8, 7, 6]) * s) for side in (-1, 1)]
    iliac_veins = [Tube(np.array([iv_pts[-1], P(side * 32, 34, -142), P(side * 58, 44, -200)]), np.array([9, 9, 8]) * s) for side in (-1, 1)]
    pv_conf = P(-4, -20, -2, 2)
    rk_c, lk_c = right_kidney.center, left_kidney.center
    outside_veins = [
        Tube(np.array([pv_conf, P(-22, -18, 16, 2), P(-40, -14, 32, 2)]), np.array([8, 8, 7]) * s),  # portal vein
        Tube(np.array([pv_conf, P(28, -16, 6, 2), P(62, 22, 16, 2), P(78, 34, 26, 2)]), np.array([5, 5, 4.5, 4.5]) * s),  # splenic vein
        Tube(np.array([pv_conf, P(-6, -30, -40, 2), P(-8, -34, -90, 2)]), np.array([7, 6, 5]) * s),  # SMV
        Tube(np.array([rk_c + np.array([22 * s, -4 * s, 0]), iv_pts[3]]), np.array([6, 6]) * s),  # right renal vein
        Tube(np.array([lk_c + np.array([-22 * s, -4 * s, 0]), P(12, -6, -6), iv_pts[3]]), np.array([6, 6, 6]) * s),  # left renal vein
    ]
    visceral_arteries = [
        Tube(np.array([ao_pts[4] + [0, -8 * s, -4 * h], P(8, -36, -40, 2), P(6, -40, -90, 2)]), np.array([4, 4, 3.5]) * s),  # SMA
        Tube(np.array([ao_pts[4] + [0, -4, 8 * h], P(4, -30, 14), P(40, -20, 18)]), np.array([3.5, 3.5, 3]) * s),  # coeliac / splenic
    ]
    hv_top = P(-16, 4, 100)
    liver_veins = [
        Tube(np.array([hv_top, P(-80, -20, 70, 5), P(-120, -30, 40, 6)]), np.array([6, 5, 3]) * s),
        Tube(np.array([hv_top, P(-45, -50, 60, 5), P(-60, -80, 30, 6)]), np.array([6, 5, 3]) * s),
        Tube(np.array([hv_top, P(5, -40, 75, 5), P(30, -70, 55, 6)]), np.array([5, 4, 3]) * s),
        Tube(np.array([P(-40, -14, 32), P(-75, -5, 35, 5), P(-110, 10, 20, 6)]), np.array([6, 4.5, 3]) * s),
        Tube(np.array([P(-40, -14, 32), P(-30, -45, 45, 5), P(-20, -75, 30, 6)]), np.array([5, 4, 3]) * s),
        Tube(np.array([P(-40, -14, 32), P(-70, 20, 60, 5), P(-95, 30, 85, 6)]), np.array([5, 4, 3]) * s),
    ]
    return Vessels(iliac_arteries, iliac_veins, outside_veins, visceral_arteries, liver_veins)


def _gut(P: _Placer, torso: Torso, stomach_air: float) -> Gut:
    """Colon (ascending, transverse, descending, sigmoid), the small-bowel region and oral contrast."""
    s, h = P.s, P.h
    colon = [
        (spline([P(-78, -5, -175), P(-92, 2, -110, 4), P(-96, 0, -50, 4), P(-85, -25, -18, 4)], 10), 24 * s),
        (spline([P(-85, -25, -18), P(-50, -75, -25, 6), P(0, -85, -32, 8), P(50, -75, -20, 6), P(92, -15, 20, 4)], 14), 22 * s),
        (spline([P(92, -15, 20), P(104, 20, -30, 4), P(98, 14, -90, 4), P(80, 0, -160, 4)], 10), 19 * s),
        (spline([P(80, 0, -160), P(50, -30, -190, 6), P(10, -20, -200, 6), P(-20, 10, -230, 6)], 10), 17 * s),
    ]
    cav_y, cav_a, cav_b = torso.cavity
    bowel_lo = np.array([-cav_a, cav_y - cav_b, -260 * h])
    bowel_hi = np.array([cav_a, torso.yv(0) - 10 * s, 15 * h])
    fields = (Field(P.rng, bowel_lo, bowel_hi, 20.0, 1.0), Field(P.rng, bowel_lo, bowel_hi, 20.0, 1.0), Field(P.rng, bowel_lo, bowel_hi, 25.0, 1.0))
    return Gut(
        colon=[Tube(pts, np.full(len(pts), rad)) for pts, rad in colon],
        bowel_fields=fields,
        bowel_lo=bowel_lo,
        bowel_hi=bowel_hi,
        bowel_radius=P.rng.uniform(10.0, 13.0) * s,
        stomach_air=stomach_air,
        oral_contrast=bool(P.rng.random() < 0.2),
    )


def _ribs(P: _Placer, torso: Torso) -> list[Rib]:
    """Seven ribs a side from the spine, sloping down anteriorly, the last part cartilage (> 135 deg)."""
    s, h = P.s, P.h
    cav_y, cav_a, cav_b = torso.cavity
    ribs = []
    for k, (theta_end, drop) in enumerate(((75, 30), (105, 50), (140, 75), (165, 90), (172, 100), (176, 105), (178, 108))):
        z_head = (30 + 32 * k) * h + P.rng.normal(0, 2)
        for side in (-1, 1):
            theta = np.radians(np.linspace(28, theta_end, 12))
            a_r, b_r = cav_a + torso.body.muscle_lat * 0.45, cav_b + torso.body.muscle_ant * 0.5
            xs = side * a_r * np.sin(theta)
            ys = cav_y + b_r * np.cos(theta)
            zs = z_head - 8 - drop * h * ((theta - theta[0]) / np.pi) ** 1.2
            head = np.array([side * 22 * s, float(torso.yv(z_head)) + 24 * s, z_head])
            pts = np.vstack([head, np.stack([xs, ys, zs], 1)])
            cart = np.degrees(np.r_[0, theta]) > 135
            ribs.append(Rib(pts, P.rng.uniform(4.2, 5.2) * s, cart))
    return ribs


def _ilium(P: _Placer, torso: Torso) -> list[IliacWing]:
    """Iliac wings below the crests (L4), with the gluteal muscles behind and beside them."""
    s, h = P.s, P.h
    y_pelvis = float(torso.yv(-110 * h)) / s - 46
    wing = np.array([[30, 62], [52, 58], [80, 35], [105, 5], [118, -25]], float) + [0, y_pelvis]
    glut = np.array([[40, 75], [65, 72], [95, 45], [118, 12], [128, -20]], float) + [0, y_pelvis]
    crest = np.array([-100, -88, -80, -84, -100]) * h + P.rng.normal(0, 4)
    return [
        IliacWing(wing * [side * s, s], np.array([9, 7, 5, 5, 6]) * s, crest, glut * [side * s, s], np.array([14, 18, 18, 14, 8]) * s)
        for side in (-1, 1)
    ]


def build_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy (mm, patient frame). Uses only `rng`, in the order of the calls below."""
    torso = _draw_torso(rng)
    s, h, b = torso.s, torso.h, torso.body
    box_lo = np.array([-b.a, b.y_ant, -260 * h]) - 20
    box_hi = np.array([b.a, b.y_post, 260 * h]) + 20
    texture = Field(rng, box_lo, box_hi, 18.0, 1.0)
    fine_texture = Field(rng, box_lo, box_hi, 6.0, 1.0)
    P = _Placer(rng, s, h)
    organs: dict[int, Organ] = {}
    lobes = _draw_liver_lobes(P)
    right_kidney = _draw_kidney_pose(P, (-72, 45, -16), (-10, -12, 15))
    organs[L.LIVER] = _liver(P, torso, lobes, right_kidney)
    organs[L.SPLEEN] = _spleen(P, torso)
    left_kidney = _draw_kidney_pose(P, (72, 42, -4), (-10, 12, -15))  # the left kidney sits higher
    organs[L.RIGHT_KIDNEY] = _kidney(P, right_kidney, -1)
    organs[L.LEFT_KIDNEY] = _kidney(P, left_kidney, 1)
    organs.update(_adrenals(P))
    organs[L.GALLBLADDER] = _gallbladder(P)
    stomach, organs[L.STOMACH], stomach_air = _stomach(P, torso)
    duodenum, organs[L.DUODENUM] = _duodenum(P, stomach.points[-1])
    organs[L.PANCREAS] = _pancreas(P)
    organs[L.ESOPHAGUS] = _esophagus(P)
    aorta, organs[L.AORTA] = _aorta(P, torso)
    ivc, organs[L.IVC] = _ivc(P)
    vessels = _vessels(P, aorta, ivc, right_kidney, left_kidney)
    gut = _gut(P, torso, stomach_air)
    calcified = bool(rng.random() < 0.35)  # aortic wall calcification
    heart = Ellipsoid(P(18, -30, 150, 5), np.array([62, 52, 55]) * s)  # above the central diaphragm
    ribs = _ribs(P, torso)
    spine = Spine(period=32.0 * h, phase=rng.uniform(0, 32.0 * h), height=24.0 * h, rx=22.0 * s, ry=17.0 * s)
    ilium = _ilium(P, torso)
    rk, lk = right_kidney, left_kidney
    z_bottom = min(rk.center[2] - rk.radii[2] * 1.1, lk.center[2] - lk.radii[2] * 1.1, duodenum.points[:, 2].min() - duodenum.radii[0])
    return Anatomy(
        torso=torso,
        organs=organs,
        texture=texture,
        fine_texture=fine_texture,
        stomach=stomach,
        vessels=vessels,
        gut=gut,
        aorta_calcified=calcified,
        heart=heart,
        ribs=ribs,
        spine=spine,
        ilium=ilium,
        z_top_organs=float(max(torso.dome_right, torso.dome_left) + 5),
        z_bottom_organs=float(z_bottom),
    )
