"""One patient's anatomy in the patient frame (mm), as typed values; drawn by
:func:`flareseg.data.synthetic.patient.build_anatomy`.

Frame: ITK's LPS, ``+x`` the patient's left, ``+y`` posterior, ``+z`` superior, ``z = 0`` near the
renal hila (L1/L2). An :class:`Anatomy` holds the torso (body outline, abdominal wall, diaphragm),
the 13 labelled organs as implicit shapes (:mod:`flareseg.data.synthetic.shapes`) with draws of
points deep inside them where lesions may be seeded, and the unlabelled structures painted around
them (vessels, bowel, heart, ribs, spine, iliac wings). Nothing here depends on the voxel grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flareseg.data.synthetic.shapes import Axes, Field, Shape, coarsen, upsample


@dataclass(frozen=True)
class Body:
    """The body outline and wall in the axial plane (mm); see ``paint._background`` for their use.

    Attributes:
        a: half-width of the body outline (mm).
        y_post, y_ant: y of the posterior and anterior skin (mm).
        muscle_lat, muscle_ant: thickness of the lateral and anterior abdominal wall muscles (mm).
        flat: exponent of the superellipse of the posterior outline (2 = an ellipse; flatter above 2).
        wobble, phase: (4,) amplitudes and phases of the outline's harmonics 2-5.
        taper: relative change of the fat thickness per 150 mm of height.
    """

    a: float
    y_post: float
    y_ant: float
    muscle_lat: float
    muscle_ant: float
    flat: float
    wobble: np.ndarray
    phase: np.ndarray
    taper: float


@dataclass(frozen=True)
class Torso:
    """The patient's proportions, abdominal cavity and diaphragm (mm, patient frame).

    Attributes:
        s: in-plane body scale; h: cranio-caudal scale; obesity: 0 (lean) to 1 (obese).
        cavity: inner abdominal wall ellipse: (centre y, half-axis along x, half-axis along y) in mm.
        body: the body outline and wall.
        dome_right, dome_left: z (mm) of the tops of the right and left diaphragm domes.
        dome_curvature: scale of the domes' fall-off away from their tops (about 1).
    """

    s: float
    h: float
    obesity: float
    cavity: tuple[float, float, float]
    body: Body
    dome_right: float
    dome_left: float
    dome_curvature: float

    def yv(self, z):
        """y (mm) of the vertebral bodies' centre at height z (lordosis / kyphosis)."""
        return self.s * (46.0 + 0.045 * np.asarray(z) / self.h)

    def dome(self, x, y):
        """z (mm) of the diaphragm surface above in-plane point (x, y); broadcasting arrays."""
        s = self.s
        q_right = ((x + 55 * s) / (95 * s)) ** 2 + ((y + 5 * s) / (85 * s)) ** 2
        q_left = ((x - 55 * s) / (95 * s)) ** 2 + (y / (85 * s)) ** 2
        depth = self.dome_curvature * 55 * self.h
        return np.maximum(self.dome_right - depth * (q_right + q_right**2), self.dome_left - depth * (q_left + q_left**2))

    def cavity_sdf2(self, x: np.ndarray, y: np.ndarray, inset: float = 0.0) -> np.ndarray:
        """In-plane signed distance (mm, approximate) to the inner abdominal wall, shrunk by `inset` mm.

        Returns:
            A (len(x), len(y)) float32 array for the 1-D axes `x` and `y` (mm).
        """
        yc, a, b = self.cavity
        X = x.astype(np.float32)[:, None]
        Y = (y - yc).astype(np.float32)[None, :]
        rho = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
        return (rho - 1.0) * min(a, b) + inset


@dataclass
class Organ:
    """A labelled structure: its shape, and a draw of a point (3,) mm deep inside it (for lesions)."""

    shape: Shape
    seeds: Callable[[np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid: centre (3,) mm, semi-axes (3,) mm along the rows of `rot` (3, 3; None: x, y, z)."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray | None = None


@dataclass(frozen=True)
class Tube:
    """A chain of capsules: centre-line points (N, 3) mm and radii (N,) mm."""

    points: np.ndarray
    radii: np.ndarray


@dataclass(frozen=True)
class Vessels:
    """The unlabelled vessels (label 0, except the liver veins, which keep the liver's label)."""

    iliac_arteries: list[Tube]
    iliac_veins: list[Tube]
    outside_veins: list[Tube]  # portal, splenic, superior mesenteric and renal veins
    visceral_arteries: list[Tube]  # superior mesenteric artery, coeliac trunk and splenic artery
    liver_veins: list[Tube]  # hepatic and portal branches inside the liver


@dataclass(frozen=True)
class Gut:
    """The unlabelled bowel and the contents of the gut.

    Attributes:
        colon: ascending, transverse, descending and sigmoid colon.
        bowel_fields: three smooth unit fields; small-bowel loops run where the first two both vanish,
            the third picks their contents (collapsed, fluid or gas).
        bowel_lo, bowel_hi: (3,) box (mm) of the small-bowel region.
        bowel_radius: small-bowel loop radius (mm).
        stomach_air: fraction of the stomach's anterior-posterior depth filled with air (0-0.45).
        oral_contrast: positive oral contrast in the stomach, duodenum and bowel.
    """

    colon: list[Tube]
    bowel_fields: tuple[Field, Field, Field]
    bowel_lo: np.ndarray
    bowel_hi: np.ndarray
    bowel_radius: float
    stomach_air: float
    oral_contrast: bool


@dataclass(frozen=True)
class Rib:
    """One rib from its head at the spine: points (N, 3) mm, radius mm, (N,) costal-cartilage flags."""

    points: np.ndarray
    radius: float
    cartilage: np.ndarray


@dataclass(frozen=True)
class Spine:
    """The vertebral column: segment period, phase and body height (mm, along z), body half-axes (mm)."""

    period: float
    phase: float
    height: float
    rx: float
    ry: float


@dataclass(frozen=True)
class IliacWing:
    """One iliac wing and the gluteal muscles behind it, as curved plates (:func:`~.shapes.plate_shape`).

    Attributes:
        wing, gluteus: (5, 2) in-plane centre lines (mm); wing_radii, gluteus_radii: (5,) half-thickness (mm).
        crest: (5,) z (mm) of the iliac crest along the wing.
    """

    wing: np.ndarray
    wing_radii: np.ndarray
    crest: np.ndarray
    gluteus: np.ndarray
    gluteus_radii: np.ndarray


@dataclass(frozen=True)
class Anatomy:
    """All patient-specific geometry (mm, patient frame), independent of the voxel grid.

    Attributes:
        torso: proportions, body outline, cavity and diaphragm.
        organs: the 13 labelled organs by label id.
        texture, fine_texture: smooth unit fields (correlation ~18 mm and ~6 mm) for tissue texture.
        stomach: the stomach's centre line; stomach and bowel contents are in `gut`.
        vessels, gut, heart, ribs, spine, ilium: the unlabelled structures.
        aorta_calcified: the aortic wall carries calcified plaques.
        z_top_organs: highest point (mm) of liver, spleen, stomach and the gastro-oesophageal junction.
        z_bottom_organs: lowest point (mm) of the kidneys and the duodenum.
    """

    torso: Torso
    organs: dict[int, Organ]
    texture: Field
    fine_texture: Field
    stomach: Tube
    vessels: Vessels
    gut: Gut
    aorta_calcified: bool
    heart: Ellipsoid
    ribs: list[Rib]
    spine: Spine
    ilium: list[IliacWing]
    z_top_organs: float
    z_bottom_organs: float

    def tex(self, axes: Axes, fine: bool = False) -> np.ndarray:
        """The smooth unit texture (correlation ~18 mm, or ~6 mm if `fine`) on the box `axes` (mm):
        a (len x, len y, len z) float32 array, evaluated on a 5 mm (2 mm) lattice and upsampled."""
        field, detail = (self.fine_texture, 2.0) if fine else (self.texture, 5.0)
        coarse, plans = coarsen(axes, (detail,) * 3)
        return upsample(field(*coarse), plans)
