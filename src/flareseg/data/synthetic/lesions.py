"""Lesions of a phantom: how many, in which host, of which kind, where and how large (mm, patient frame).

Hosts and kinds follow the FLARE23 pan-cancer mix loosely: mostly liver, then kidneys, pancreas,
spleen, the gut and lymph nodes outside the organs. A lesion is a deformed ellipsoid whose centre is
drawn deep inside its host; painting it clips it to the host's voxels (``paint._paint_lesions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import flareseg.labels as L
from flareseg.data.synthetic.anatomy import Anatomy
from flareseg.data.synthetic.shapes import Field, Shape, ellipsoid_sdf, perturbed, random_rotation

_LESION_HOSTS = {  # host: (weight, max radius mm, {kind: probability})
    L.LIVER: (0.36, 30.0, {"hypo": 0.55, "hyper": 0.25, "cystic": 0.1, "necrotic": 0.1}),
    L.RIGHT_KIDNEY: (0.1, 24.0, {"hyper": 0.4, "hypo": 0.3, "cystic": 0.3}),
    L.LEFT_KIDNEY: (0.1, 24.0, {"hyper": 0.4, "hypo": 0.3, "cystic": 0.3}),
    L.PANCREAS: (0.12, 14.0, {"hypo": 0.8, "cystic": 0.2}),
    L.SPLEEN: (0.07, 20.0, {"hypo": 0.8, "cystic": 0.2}),
    L.STOMACH: (0.05, 16.0, {"hyper": 0.5, "hypo": 0.5}),
    L.DUODENUM: (0.02, 9.0, {"hyper": 0.5, "hypo": 0.5}),
    L.GALLBLADDER: (0.02, 9.0, {"hyper": 1.0}),
    0: (0.16, 20.0, {"node": 1.0}),
}
MAX_LESIONS = 8


@dataclass
class Lesion:
    """One lesion.

    Attributes:
        host: organ id, or 0 for "elsewhere" (fat and soft tissue outside the organs).
        kind: ``hypo``, ``hyper``, ``cystic``, ``necrotic`` or ``node``.
        center: (3,) mm, patient frame.
        radius: mean radius (mm).
        shape: the deformed ellipsoid.
        contrast: HU offset from the host (hypo < 0 < hyper); cystic: absolute HU.
    """

    host: int
    kind: str
    center: np.ndarray
    radius: float
    shape: Shape
    contrast: float


def draw_lesion_count(rng: np.random.Generator, lesion_free_fraction: float) -> int:
    """0 with probability `lesion_free_fraction`, else 1-8 (geometric, mean ~2)."""
    if rng.random() < lesion_free_fraction:
        return 0
    return int(min(rng.geometric(0.45), MAX_LESIONS))


def _draw_center(rng: np.random.Generator, anat: Anatomy, host: int) -> np.ndarray:
    """A centre (3,) mm deep in organ `host`; host 0: beside the aorta or in the mesentery."""
    if host != 0:
        return anat.organs[host].seeds(rng)
    if rng.random() < 0.5:  # para-aortic node
        ao = anat.organs[L.AORTA]
        return ao.seeds(rng) + np.array([rng.choice([-1, 1]) * rng.uniform(18, 28) * anat.torso.s, rng.uniform(-8, 8), 0])
    return rng.uniform(anat.gut.bowel_lo, anat.gut.bowel_hi)  # mesenteric / peritoneal


def _draw_contrast(rng: np.random.Generator, kind: str, phase: str) -> float:
    """The lesion's HU offset from its host (cystic: its absolute HU) in contrast `phase`."""
    if kind == "hypo":
        return -rng.uniform(25, 65)
    if kind == "hyper":
        return rng.uniform(35, 90) if phase == "arterial" else rng.uniform(15, 45)
    if kind == "cystic":
        return rng.uniform(2, 18)
    if kind == "necrotic":
        return -rng.uniform(20, 40)
    return rng.uniform(-15, 20)  # node


def draw_lesions(rng: np.random.Generator, anat: Anatomy, count: int, *, z_range: tuple[float, float], phase: str) -> list[Lesion]:
    """Draw `count` lesions for a scan covering `z_range` (mm, patient frame) in contrast `phase`.

    The first lies deep in a large organ inside the field of view, so that a case asked to have
    lesions always shows at least one; the others may fall outside the view.
    """
    z_lo, z_hi = z_range
    hosts = list(_LESION_HOSTS)
    weights = np.array([_LESION_HOSTS[k][0] for k in hosts])
    lesions = []
    for i in range(count):
        if i == 0:
            host = int(rng.choice([L.LIVER, L.RIGHT_KIDNEY, L.LEFT_KIDNEY, L.SPLEEN], p=[0.55, 0.15, 0.15, 0.15]))
            radius = rng.uniform(7.0, 18.0)
        else:
            host = int(rng.choice(hosts, p=weights / weights.sum()))
            radius = float(np.exp(rng.uniform(np.log(4.0), np.log(_LESION_HOSTS[host][1]))))
        kinds = _LESION_HOSTS[host][2]
        kind = str(rng.choice(list(kinds), p=list(kinds.values())))
        c = _draw_center(rng, anat, host)
        if i == 0:
            for _ in range(20):  # redraw until the centre lies inside the field of view
                if z_lo + radius + 4 <= c[2] <= z_hi - radius - 4:
                    break
                c = anat.organs[host].seeds(rng)
            else:  # the liver always spans z 0-40 mm, which every field of view contains
                host, kind = L.LIVER, "hypo"
                c = anat.organs[L.LIVER].seeds(rng)
                c[2] = 20 * anat.torso.h
        contrast = _draw_contrast(rng, kind, phase)
        radii = radius * rng.uniform(0.8, 1.2, 3)
        rot = random_rotation(rng, 90)
        lo, hi = c - radii.max() * 1.4 - 3, c + radii.max() * 1.4 + 3
        sdf = perturbed(ellipsoid_sdf(c, radii, rot), Field(rng, lo, hi, max(radius, 5.0), 0.15 * radius))
        d = min(1.5, radius / 3)
        lesions.append(Lesion(host, kind, c, float(radius), Shape(sdf, lo, hi, (d, d, d)), float(contrast)))
    return lesions
