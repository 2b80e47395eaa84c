"""Tests of flareseg.evaluation.metrics: known answers, the FLARE rules, and agreement with a transcription of the
official algorithm (DeepMind's compute_surface_distances + the FLARE23 per-case loop); and of the lesion-wise
detection beside it (flareseg.evaluation.lesions), on crafted cases of known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

import flareseg.evaluation.metrics as metrics
from flareseg.errors import GeometryError
from flareseg.evaluation.lesions import LesionCounts, detect_lesions, pool_detections
from flareseg.labels import AORTA, ESOPHAGUS, IVC, LESION, LIVER, Z_CROPPED_IDS, tolerance_of

# --------------------------------------------------------------------------------------------------
# Transcription of the official algorithm (reference for the tests only).
# DeepMind surface-distance `compute_surface_distances`: crop to the bounding box of gt | pred with one
# zero voxel added at the far end of each axis, neighbour codes by correlation with a 2x2x2 kernel,
# border = code not in {0, 255}, distances from a full Euclidean distance transform with sampling.
# FLARE23_DSC_NSD_Eval.py: the per-class rules of the loop over labels 1-14.
# --------------------------------------------------------------------------------------------------

_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def _official_surface_distances(gt, pred, spacing):
    table = metrics.surfel_area_table(spacing)
    union = gt | pred
    if not union.any():
        return np.array([]), np.array([]), np.array([]), np.array([])
    nz = np.nonzero(union)
    lo = [int(i.min()) for i in nz]
    hi = [int(i.max()) for i in nz]
    shape = tuple(h - l + 2 for l, h in zip(lo, hi))
    region = tuple(slice(l, h + 1) for l, h in zip(lo, hi))
    crops = []
    for mask in (gt, pred):
        crop = np.zeros(shape, np.uint8)
        crop[:-1, :-1, :-1] = mask[region]
        crops.append(crop)
    codes = [ndimage.correlate(c, _KERNEL, mode="constant", cval=0) for c in crops]
    borders = [(c != 0) & (c != 255) for c in codes]
    dmaps = [
        ndimage.distance_transform_edt(~b, sampling=spacing) if b.any() else np.full(b.shape, np.inf) for b in borders
    ]
    d_gt_to_pred = dmaps[1][borders[0]]
    d_pred_to_gt = dmaps[0][borders[1]]
    return d_gt_to_pred, d_pred_to_gt, table[codes[0][borders[0]]], table[codes[1][borders[1]]]


def _official_nsd(gt, pred, spacing, tol):
    d_gp, d_pg, a_g, a_p = _official_surface_distances(gt, pred, spacing)
    return (np.sum(a_g[d_gp <= tol]) + np.sum(a_p[d_pg <= tol])) / (np.sum(a_g) + np.sum(a_p))


def _official_case(ref, sub, spacing, gate=0.1):
    ref, sub = ref.astype(np.int8), sub.astype(np.int8)
    out = {}
    for i in range(1, 15):
        g_any, s_any = np.sum(ref == i) > 0, np.sum(sub == i) > 0
        if not g_any and not s_any:
            dsc, nsd = 1, 1
        elif not g_any or not s_any:
            dsc, nsd = 0, 0
        else:
            if i in (5, 6, 10):
                z = np.where(ref == i)[2]
                g, s = ref[:, :, z.min() : z.max()] == i, sub[:, :, z.min() : z.max()] == i
            else:
                g, s = ref == i, sub == i
            dsc = 2 * np.sum(g & s) / (np.sum(g) + np.sum(s))
            nsd = 0 if dsc < gate else _official_nsd(g, s, spacing, tolerance_of(i))
        out[i] = (float(np.round(np.float64(dsc), 4)), float(np.round(np.float64(nsd), 4)))
    return out


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _blobs(rng, shape, n, radius):
    mask = np.zeros(shape, bool)
    for _ in range(n):
        mask[tuple(rng.integers(0, shape))] = True
    return ndimage.binary_dilation(mask, iterations=radius) if radius else mask


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


# --------------------------------------------------------------------------------------------------
# No torch
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Surfel area table
# --------------------------------------------------------------------------------------------------


def test_surfel_area_table_known_codes():
    t = metrics.surfel_area_table((1, 1, 1))
    assert t[0] == 0 and t[255] == 0
    assert t[1] == pytest.approx(math.sqrt(3) / 8)  # one corner cut off
    assert t[15] == pytest.approx(1.0)  # four corners of one face: a unit square
    assert t[23] == pytest.approx(3 * math.sqrt(3) / 4)  # corner and its 3 neighbours: regular hexagon
    assert t[7] == pytest.approx(0.5 + math.sqrt(3) / 4 + math.sqrt(3) / 8)  # non-planar pentagon
    # Complement codes have the same surface.
    assert np.allclose(t, t[::-1])
    # A face perpendicular to axis 0 scales with spacing[1] * spacing[2].
    assert metrics.surfel_area_table((0.7, 1.3, 2.9))[15] == pytest.approx(1.3 * 2.9)


def test_surfel_area_table_fingerprint():
    # Sums of DeepMind's table (lookup_tables.create_table_neighbour_code_to_surface_area).
    assert metrics.surfel_area_table((1, 1, 1)).sum() == pytest.approx(241.34313970553745, rel=1e-12)
    assert metrics.surfel_area_table((0.7, 1.3, 2.9)).sum() == pytest.approx(591.6622968920756, rel=1e-12)


def test_surfel_area_table_equals_deepmind_when_installed():
    lookup_tables = pytest.importorskip("surface_distance.lookup_tables")
    rng = np.random.default_rng(0)
    for spacing in [(1, 1, 1), (0.8, 0.8, 2.5)] + [tuple(rng.uniform(0.2, 7, 3)) for _ in range(5)]:
        ref = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(metrics.surfel_area_table(spacing), ref, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------------
# Dice, surface distances, NSD: known answers
# --------------------------------------------------------------------------------------------------


def test_dice_known_values():
    g = _cube((10, 10, 10), (0, 0, 0), (4, 4, 4))  # 64 voxels
    p = _cube((10, 10, 10), (2, 0, 0), (6, 4, 4))  # 64 voxels, 32 shared
    assert metrics.dice(g, p) == pytest.approx(0.5)
    assert metrics.dice(g, g) == 1.0
    assert metrics.dice(g, np.zeros_like(g)) == 0.0
    assert math.isnan(metrics.dice(np.zeros_like(g), np.zeros_like(g)))


def test_identical_masks_nsd_one():
    rng = np.random.default_rng(3)
    g = _blobs(rng, (20, 22, 18), 3, 3)
    assert metrics.normalized_surface_dice(g, g, (0.8, 0.8, 2.5), 0.0) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_single_voxels_shifted_anisotropic(axis):
    # A single voxel's surface is 8 equal corner triangles at the voxel's 8 corners. Shifted by d voxels
    # along `axis`, the nearest corners of the other voxel lie (d-1)*s and d*s away: NSD steps 0 -> 0.5 -> 1.
    spacing = (0.5, 0.7, 3.0)
    s = spacing[axis]
    for d in (1, 2):
        g = np.zeros((9, 9, 9), bool)
        p = np.zeros_like(g)
        g[3, 3, 3] = True
        idx = [3, 3, 3]
        idx[axis] += d
        p[tuple(idx)] = True
        nsd = lambda tol: metrics.normalized_surface_dice(g, p, spacing, tol)  # noqa: E731
        assert nsd((d - 1) * s) == pytest.approx(0.5)
        assert nsd(d * s - 1e-9) == pytest.approx(0.5)
        assert nsd(d * s) == pytest.approx(1.0)
        if d == 2:
            assert nsd(s - 1e-9) == 0.0


def test_deepmind_single_pixel_example():
    # DeepMind's own example: single voxels 2 mm apart at spacing (3, 2, 1), surface Dice at 1 mm = 0.5.
    g = np.zeros((128, 128, 128), bool)
    p = np.zeros_like(g)
    g[50, 60, 70] = True
    p[50, 60, 72] = True
    assert metrics.normalized_surface_dice(g, p, (3, 2, 1), 1) == pytest.approx(0.5)
    assert metrics.dice(g, p) == 0.0


def test_shift_within_tolerance_gives_one_for_any_shape():
    # Every surfel of a mask shifted by v voxels has a surfel of the other surface exactly |v|_mm away.
    rng = np.random.default_rng(5)
    spacing = (1.5, 0.8, 2.5)
    g = np.zeros((30, 30, 30), bool)
    g[5:25, 5:25, 5:25] = _blobs(rng, (20, 20, 20), 4, 3)
    for axis in range(3):
        p = np.roll(g, 1, axis=axis)
        assert metrics.normalized_surface_dice(g, p, spacing, spacing[axis]) == 1.0
        below = metrics.normalized_surface_dice(g, p, spacing, spacing[axis] * 0.99)
        assert 0 < below < 1
        assert below == pytest.approx(_official_nsd(g, p, spacing, spacing[axis] * 0.99), abs=1e-12)


def test_shifted_cube_beyond_tolerance():
    spacing = (1.0, 1.0, 1.0)
    g = _cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    p = np.roll(g, 4, axis=0)
    value = metrics.normalized_surface_dice(g, p, spacing, 2.0)
    assert 0 < value < 1
    assert value == pytest.approx(_official_nsd(g, p, spacing, 2.0), abs=1e-12)


def test_one_or_both_masks_empty():
    g = _cube((8, 8, 8), (2, 2, 2), (5, 5, 5))
    empty = np.zeros_like(g)
    assert metrics.normalized_surface_dice(g, empty, (1, 1, 1), 5) == 0.0
    assert metrics.normalized_surface_dice(empty, g, (1, 1, 1), 5) == 0.0
    assert math.isnan(metrics.normalized_surface_dice(empty, empty, (1, 1, 1), 5))
    sd = metrics.surface_distances(g, empty, (1, 1, 1))
    assert np.all(np.isinf(sd.distances_gt_to_pred)) and sd.distances_pred_to_gt.size == 0
    assert sd.surfel_areas_pred.size == 0 and sd.surfel_areas_gt.size > 0


def test_masks_touching_the_array_border():
    g = np.zeros((12, 10, 8), bool)
    g[0:6] = True
    p = np.zeros_like(g)
    p[0:7] = True
    for tol in (0.5, 1.0, 2.0):
        assert metrics.normalized_surface_dice(g, p, (2, 1, 1), tol) == pytest.approx(
            _official_nsd(g, p, (2, 1, 1), tol), abs=1e-12
        )


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0), (0.703125, 0.703125, 5.0), (0.8000000119, 0.8000000119, 2.5), (2.1, 0.37, 1.3)]
)
def test_surface_distances_equal_official_transcription(spacing):
    rng = np.random.default_rng(int(sum(spacing) * 1000))
    for _ in range(12):
        shape = tuple(int(s) for s in rng.integers(6, 26, 3))
        g = _blobs(rng, shape, int(rng.integers(1, 4)), int(rng.integers(0, 4)))
        p = _blobs(rng, shape, int(rng.integers(1, 4)), int(rng.integers(0, 4)))
        if rng.random() < 0.4:
            p = np.roll(g, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3)))
        d_gp, d_pg, a_g, a_p = _official_surface_distances(g, p, spacing)
        sd = metrics.surface_distances(g, p, spacing)
        # The same multiset of distances, to the bit.
        np.testing.assert_array_equal(np.sort(sd.distances_gt_to_pred), np.sort(d_gp))
        np.testing.assert_array_equal(np.sort(sd.distances_pred_to_gt), np.sort(d_pg))
        assert sd.surfel_areas_gt.sum() == pytest.approx(a_g.sum(), rel=1e-12)
        assert sd.surfel_areas_pred.sum() == pytest.approx(a_p.sum(), rel=1e-12)
        for tol in (0.0, 1.0, 2.0, 3.0, 5.0, 7.0, spacing[0], 2 * spacing[2]):
            assert metrics.normalized_surface_dice(g, p, spacing, tol) == pytest.approx(
                _official_nsd(g, p, spacing, tol), abs=1e-12
            )


def test_shape_mismatch_raises_geometry_error():
    a, b = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool)
    with pytest.raises(GeometryError):
        metrics.dice(a, b)
    with pytest.raises(GeometryError):
        metrics.normalized_surface_dice(a, b, (1, 1, 1), 1)
    with pytest.raises(GeometryError):
        metrics.score_case(a.astype(np.uint8), b.astype(np.uint8), (1, 1, 1))


def test_bad_arguments():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError):
        metrics.score_case(a, a, (1, 0, 1))
    with pytest.raises(ValueError):
        metrics.score_case(a, a, (1, 1, 1), label_ids=[0])
    with pytest.raises(ValueError):
        metrics.score_case(a, a, (1, 1, 1), nsd_gate=1.5)


# --------------------------------------------------------------------------------------------------
# score_case: the FLARE rules
# --------------------------------------------------------------------------------------------------


def test_score_case_empty_rules():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:5, 2:5, 2:5] = LIVER
    pred[6:8, 6:8, 6:8] = 3  # spleen predicted, absent in GT
    gt[7, 1, 1] = LESION  # lesion in GT, not predicted
    scores = metrics.score_case(gt, pred, (1, 1, 1))
    assert set(scores) == set(range(1, 15))
    assert scores[LIVER] == (0.0, 0.0)  # GT only
    assert scores[3] == (0.0, 0.0)  # prediction only
    assert scores[LESION] == (0.0, 0.0)
    assert scores[2] == (1.0, 1.0)  # both empty
    pred[2:5, 2:5, 2:5] = LIVER
    assert metrics.score_case(gt, pred, (1, 1, 1))[LIVER] == (1.0, 1.0)


def _tube(shape, label, z_lo, z_hi):
    labels = np.zeros(shape, np.uint8)
    labels[4:8, 4:8, z_lo : z_hi + 1] = label
    return labels


@pytest.mark.parametrize("label", Z_CROPPED_IDS)
def test_z_crop_drops_the_top_reference_slice(label):
    shape = (12, 12, 20)
    gt = _tube(shape, label, 5, 14)
    pred = gt.copy()
    pred[:, :, 14] = 0  # the GT's top slice missed ...
    pred[2:10, 2:10, 17:20] = label  # ... and a blob above the GT's extent
    pred[4:8, 4:8, 0:5] = label  # ... and below it
    assert metrics.score_case(gt, pred, (1, 1, 2), label_ids=[label])[label] == (1.0, 1.0)
    # The same difference costs a class without the crop.
    gt_liver, pred_liver = (np.where(a == label, LIVER, 0).astype(np.uint8) for a in (gt, pred))
    dsc, nsd = metrics.score_case(gt_liver, pred_liver, (1, 1, 2), label_ids=[LIVER])[LIVER]
    assert dsc < 1 and nsd < 1


def test_z_crop_prediction_only_outside_reference_range():
    gt = _tube((12, 12, 20), AORTA, 5, 14)
    pred = np.zeros_like(gt)
    pred[4:8, 4:8, 16:19] = AORTA
    assert metrics.score_case(gt, pred, (1, 1, 1), label_ids=[AORTA], nsd_gate=0.0)[AORTA] == (0.0, 0.0)


def test_z_crop_single_slice_reference_scores_that_slice():
    # The official code crops to an empty slab here (and crashes); flareseg scores the one labelled slice.
    gt = _tube((12, 12, 10), IVC, 4, 4)
    pred = gt.copy()
    pred[4:8, 4:8, 5] = IVC
    assert metrics.score_case(gt, pred, (1, 1, 1), label_ids=[IVC])[IVC] == (1.0, 1.0)
    pred[:, :, 4] = 0
    assert metrics.score_case(gt, pred, (1, 1, 1), label_ids=[IVC])[IVC] == (0.0, 0.0)


def _flat_overlap(shape, n_gt, n_pred, n_both, label=LIVER):
    """Label maps whose masks hold n_gt and n_pred voxels, n_both of them shared (C order runs)."""
    size = int(np.prod(shape))
    assert n_gt + n_pred - n_both <= size
    gt = np.zeros(size, np.uint8)
    pred = np.zeros(size, np.uint8)
    gt[:n_gt] = label
    pred[n_gt - n_both : n_gt - n_both + n_pred] = label
    return gt.reshape(shape), pred.reshape(shape)


def test_nsd_gate_point_one_versus_point_two():
    gt, pred = _flat_overlap((40, 40, 25), 20000, 20000, 3000)  # DSC 0.15
    low = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER], nsd_gate=0.1)[LIVER]
    high = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER], nsd_gate=0.2)[LIVER]
    assert low[0] == high[0] == 0.15
    assert low[1] > 0
    assert high[1] == 0.0


def test_nsd_gate_applies_to_the_unrounded_dsc():
    gt, pred = _flat_overlap((50, 50, 20), 25000, 25000, 2499)  # DSC 0.09996, rounds to 0.1
    dsc, nsd = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER])[LIVER]
    assert dsc == 0.1
    assert nsd == 0.0
    gt, pred = _flat_overlap((50, 50, 20), 25000, 25000, 2500)  # DSC exactly 0.1: not below the gate
    dsc, nsd = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER])[LIVER]
    assert dsc == 0.1 and nsd > 0


def test_rounding_to_four_decimals_numpy_style():
    gt, pred = _flat_overlap((40, 40, 25), 20000, 20000, 2469)  # DSC 0.12345 exactly in decimal
    dsc, _ = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER])[LIVER]
    # The official scorer rounds numpy floats, i.e. numpy's rounding: 0.1234 (Python's round gives 0.1235).
    assert dsc == 0.1234
    raw, _ = metrics.score_case(gt, pred, (1, 1, 1), label_ids=[LIVER], decimals=None)[LIVER]
    assert raw == 2 * 2469 / 40000
    g = _cube((9, 9, 9), (0, 0, 0), (3, 1, 1))
    p = _cube((9, 9, 9), (0, 0, 0), (1, 1, 1))
    scores = metrics.score_case(g.astype(np.uint8), p.astype(np.uint8), (1, 1, 1), label_ids=[LIVER])
    assert scores[LIVER][0] == 0.5  # 2*1/(3+1)
    p[1, 0, 0] = True
    assert metrics.score_case(g.astype(np.uint8), p.astype(np.uint8), (1, 1, 1), label_ids=[LIVER])[LIVER][0] == 0.8


def test_int8_cast_of_large_ids():
    gt = np.zeros((8, 8, 8), np.int16)
    gt[2:4, 2:4, 2:4] = LESION
    pred = np.zeros_like(gt)
    pred[2:4, 2:4, 2:4] = 270  # 270 -> int8 14, as the official get_fdata().astype(np.int8)
    pred[5, 5, 5] = 142  # -> -114: no class
    assert metrics.score_case(gt, pred, (1, 1, 1))[LESION] == (1.0, 1.0)
    assert metrics.as_official_labels(np.array([270.0, 200.0, 1.7, 14.0])).tolist() == [14, -56, 1, 14]


def test_label_ids_subset():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:3, 1:3, 1:3] = 2
    scores = metrics.score_case(gt, gt, (1, 1, 1), label_ids=[2, LESION])
    assert scores == {2: (1.0, 1.0), LESION: (1.0, 1.0)}


def test_score_case_equals_official_transcription_on_random_label_maps():
    rng = np.random.default_rng(11)
    spacings = [(0.8, 0.8, 2.5), (1.0, 1.0, 1.0), (0.703125, 0.703125, 5.0), (1.7, 0.6, 0.9)]
    nontrivial = 0
    for case in range(8):
        shape = tuple(int(s) for s in rng.integers(18, 34, 3))
        spacing = spacings[case % len(spacings)]
        gt = np.zeros(shape, np.int16)
        pred = np.zeros(shape, np.int16)
        for label in range(1, 15):
            if rng.random() < 0.15:
                continue
            if label in (AORTA, IVC, ESOPHAGUS):
                m = np.zeros(shape, bool)
                x, y = rng.integers(2, shape[0] - 2), rng.integers(2, shape[1] - 2)
                z0 = rng.integers(0, shape[2] // 2)
                m[x - 2 : x + 2, y - 2 : y + 2, z0 : rng.integers(z0 + 2, shape[2] + 1)] = True
            else:
                m = _blobs(rng, shape, int(rng.integers(1, 3)), int(rng.integers(1, 5)))
            gt[m] = label
            r = rng.random()
            if r < 0.1:
                p = np.zeros(shape, bool)
            elif r < 0.4:
                p = np.roll(m, int(rng.integers(-4, 5)), axis=int(rng.integers(0, 3)))
            elif r < 0.5:
                p = _blobs(rng, shape, 2, 2)
            else:
                band = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4)))
                p = (m | (band & _blobs(rng, shape, 6, 3))) & ~_blobs(rng, shape, 3, 2)
            pred[p] = label
        for gate in (0.1, 0.2):
            ours = metrics.score_case(gt, pred, spacing, nsd_gate=gate)
            assert ours == _official_case(gt, pred, spacing, gate)
        nontrivial += sum(0 < nsd < 1 for _, nsd in ours.values())
    assert nontrivial >= 10  # the comparison exercised real surface distances


def test_large_case_is_fast():
    import time

    shape = (256, 256, 150)
    gt = np.zeros(shape, np.uint8)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    gt[((x - 128) / 90) ** 2 + ((y - 128) / 80) ** 2 + ((z - 75) / 60) ** 2 < 1] = LIVER
    gt[((x - 60) / 20) ** 2 + ((y - 60) / 20) ** 2 + ((z - 75) / 30) ** 2 < 1] = 3
    pred = np.roll(gt, 2, axis=0)
    start = time.perf_counter()
    scores = metrics.score_case(gt, pred, (0.8, 0.8, 2.5))
    assert time.perf_counter() - start < 10
    assert scores[LIVER][1] == 1.0  # a 1.6 mm shift, 5 mm tolerance


# --------------------------------------------------------------------------------------------------
# Lesion-wise detection (DESIGN 7b): crafted cases of known answers
# --------------------------------------------------------------------------------------------------


def _masks(shape=(20, 20, 20)):
    return np.zeros(shape, bool), np.zeros(shape, bool)


def test_missed_lesion():
    ref, pred = _masks()
    ref[2:5, 2:5, 2:5] = True
    counts = detect_lesions(ref, pred)
    assert counts == LesionCounts(reference=1, detected=0, predicted=0, false_positives=0)
    assert counts.missed == 1


def test_false_positive_lesion():
    ref, pred = _masks()
    ref[2:5, 2:5, 2:5] = True
    pred[2:5, 2:5, 2:5] = True  # the reference lesion, found
    pred[12:14, 12:14, 12:14] = True  # and one elsewhere
    assert detect_lesions(ref, pred) == LesionCounts(reference=1, detected=1, predicted=2, false_positives=1)
    assert detect_lesions(np.zeros_like(ref), pred) == LesionCounts(0, 0, 2, 2)


def test_split_lesion_is_one_true_positive_and_no_false_positive():
    ref, pred = _masks()
    ref[2:10, 2:5, 2:5] = True
    pred[2:4, 2:5, 2:5] = True
    pred[7:10, 2:5, 2:5] = True  # two predicted components inside the one reference lesion
    counts = detect_lesions(ref, pred)
    assert counts == LesionCounts(reference=1, detected=1, predicted=2, false_positives=0)
    assert pool_detections([counts])["f1"] == 1.0


def test_merged_prediction_detects_both_reference_lesions():
    ref, pred = _masks()
    ref[2:5, 2:5, 2:5] = True
    ref[8:11, 2:5, 2:5] = True
    pred[3:10, 3:4, 3:4] = True  # one bar through both, bridging the background between them
    counts = detect_lesions(ref, pred)
    assert counts == LesionCounts(reference=2, detected=2, predicted=1, false_positives=0)
    assert pool_detections([counts])["sensitivity"] == 1.0


def test_partial_overlap_counts_as_detection_not_false_positive():
    ref, pred = _masks()
    ref[2:5, 2:5, 2:5] = True
    pred[4:9, 4:9, 4:9] = True  # one shared voxel, most of it outside
    assert detect_lesions(ref, pred) == LesionCounts(1, 1, 1, 0)


def test_lesions_are_26_connected():
    ref, pred = _masks()
    ref[2, 2, 2] = ref[3, 3, 3] = True  # corner neighbours: one lesion
    ref[6, 6, 6] = True  # two voxels from the last: another
    assert detect_lesions(ref, pred).reference == 2
    pred[3, 3, 3] = True
    assert detect_lesions(ref, pred) == LesionCounts(2, 1, 1, 0)


def test_no_lesion_anywhere():
    ref, pred = _masks()
    counts = detect_lesions(ref, pred)
    assert counts == LesionCounts(0, 0, 0, 0)
    pooled = pool_detections([counts, counts])
    assert pooled == {
        "n_cases": 2, "reference_lesions": 0, "detected": 0, "missed": 0, "predicted_lesions": 0,
        "false_positives": 0, "sensitivity": None, "fp_per_case": 0.0, "f1": None,
    }
    assert pool_detections([])["fp_per_case"] is None


def test_pooled_known_values():
    # Case a: 2 reference lesions, 1 found, 1 false positive; case b: no reference lesion, 1 false positive.
    pooled = pool_detections([LesionCounts(2, 1, 2, 1), LesionCounts(0, 0, 1, 1), LesionCounts(1, 1, 1, 0)])
    assert (pooled["reference_lesions"], pooled["detected"], pooled["missed"]) == (3, 2, 1)
    assert (pooled["predicted_lesions"], pooled["false_positives"]) == (4, 2)
    assert pooled["sensitivity"] == pytest.approx(2 / 3)
    assert pooled["fp_per_case"] == pytest.approx(2 / 3)
    assert pooled["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 4/7


def test_lesion_masks_of_different_shapes():
    with pytest.raises(GeometryError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        detect_lesions(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
