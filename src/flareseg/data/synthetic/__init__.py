"""Synthetic abdominal CT phantoms and FLARE23-style cohorts with partial labels.

A phantom is built in a patient frame in millimetres, in ITK's LPS convention: ``+x`` is the
patient's left, ``+y`` posterior, ``+z`` superior; ``z = 0`` lies near the renal hila (L1/L2). Every
structure is a smooth implicit shape (a signed distance in mm, negative inside): ellipsoids, sums of
blobs and tubes along centre lines, deformed by low-frequency random fields and clipped against the
abdominal wall and the diaphragm. Each shape is evaluated only inside its bounding box, on a coarse
lattice where that is accurate enough, and linearly upsampled to the voxel grid; the intensity is
painted with a one-voxel partial-volume edge and the label is the inside of the shape. Later
structures overwrite earlier ones, so organs abut instead of overlapping.

The random draws that make the anatomy (sizes, positions, deformations, lesions), the scan (contrast
phase, HU, field of view, position, orientation) and the voxel grid come from separate streams of
one :class:`numpy.random.Generator`, so the same seed gives the same anatomy in millimetres whatever
the ``size`` profile, and the same arrays on every run.

Modules, from the bottom up: ``shapes`` (signed-distance primitives, random fields, evaluation on
a coarse lattice and upsampling), ``anatomy`` (the patient as typed values: torso, organs, vessels,
bowel, bones), ``patient`` (drawing one patient's anatomy), ``lesions`` (lesion draws), ``scanner``
(phase and HU, field of view, grid, canvas, noise, orientation), ``body`` and ``render`` (painting
onto the grid), ``case`` (one case), ``cohort`` (configuration, regimes, the cohort folder and its
manifest), ``plot`` (a figure of a case).

Public API: :class:`SynthConfig`, :func:`synthesize_case`, :func:`generate_cohort`,
:func:`plot_case`, :func:`regime_counts`, :func:`case_rng`.
"""

from flareseg.data.synthetic.case import synthesize_case
from flareseg.data.synthetic.cohort import MANIFEST_NAME, REGIMES, SynthConfig, case_rng, generate_cohort, regime_counts
from flareseg.data.synthetic.plot import plot_case
from flareseg.data.synthetic.scanner import ORIENTATIONS, PHASES, SIZES

__all__ = [
    "MANIFEST_NAME",
    "ORIENTATIONS",
    "PHASES",
    "REGIMES",
    "SIZES",
    "SynthConfig",
    "case_rng",
    "generate_cohort",
    "plot_case",
    "regime_counts",
    "synthesize_case",
]
