import numpy as np
import pytest

from flareseg.config import Fingerprint, PreprocessConfig
from flareseg.errors import ConfigError, GeometryError
from flareseg.io import Volume, orientation_code, read_image, read_label
from flareseg.transforms.preprocessing import (
    Grid,
    body_bounding_box,
    body_crop,
    compute_fingerprint,
    low_resolution_axis,
    nonzero_bounding_box,
    normalize,
    preprocess_case,
    resample_image,
    resample_label,
    resampled_grid,
    restore_label,
    stored_flips,
    to_canonical,
)

from conftest import REAL_CASES, phantom_ct

FP = Fingerprint(-100.0, 300.0, 80.0, 60.0)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _round_trip(image, label, spacing):
    case = preprocess_case(image, label, config=PreprocessConfig(target_spacing=spacing), fingerprint=None)
    return case, restore_label(case.label, case.record)


@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_real_round_trip_at_native_spacing_is_identical(real_data, name):
    image_rel, label_rel = REAL_CASES[name]
    image = read_image(real_data / image_rel)
    label = read_label(real_data / label_rel, image)
    native = to_canonical(image).spacing
    _, back = _round_trip(image, label, native)
    np.testing.assert_array_equal(back, label.array)


# Structures only a few voxels thick at 2 mm that no resampling keeps at Dice 0.95 (nearest neighbour
# gives 0.90 / 0.92 / 0.83): the DICOM sample's 2.5 ml pancreas tip, 9 ml IVC stub and 2.4 ml right
# adrenal, cut to 20 slices. Their floors guard against regressions.
THIN_AT_2MM = {("totalsegmentator_dicom", 4): 0.90, ("totalsegmentator_dicom", 6): 0.91, ("totalsegmentator_dicom", 7): 0.82}


@pytest.mark.parametrize("name", sorted(REAL_CASES))
@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_real_round_trip_keeps_organs(real_data, name, spacing):
    """Every organ above 1000 voxels keeps Dice >= 0.95 through resampling to `spacing` mm and back."""
    image_rel, label_rel = REAL_CASES[name]
    image = read_image(real_data / image_rel)
    label = read_label(real_data / label_rel, image)
    _, back = _round_trip(image, label, (spacing,) * 3)
    assert back.shape == label.shape
    for value in np.unique(label.array)[1:]:
        ref = label.array == value
        if ref.sum() <= 1000:
            continue
        score = _dice(ref, back == value)
        bar = THIN_AT_2MM.get((name, int(value)), 0.95) if spacing == 2.0 else 0.95
        assert score >= bar, f"{name} label {value} at {spacing} mm: Dice {score:.4f} < {bar}"


@pytest.mark.parametrize(
    "direction",
    [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float), np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float)],
)
def test_any_orientation_round_trips_and_canonical_is_lps(direction):
    image, label = phantom_ct(direction=direction)
    canonical_spacing = to_canonical(image).spacing
    case, back = _round_trip(image, label, canonical_spacing)
    np.testing.assert_array_equal(back, label.array)
    assert orientation_code(np.array(case.record.network.direction).reshape(3, 3)) == "LPS"
    # A coarser grid and back still lands every voxel of the large organ in place.
    _, coarse_back = _round_trip(image, label, (3.0, 3.0, 3.0))
    assert _dice(coarse_back == 1, label.array == 1) > 0.9


@pytest.mark.parametrize(
    ("direction", "flips"),
    [
        (np.eye(3), ()),
        (np.diag([-1.0, -1.0, 1.0]), (0, 1)),  # RAS
        (np.diag([1.0, -1.0, -1.0]), (1, 2)),  # LAI
        (np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float), ()),  # a permutation without flips
        (np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], float), (0, 2)),
    ],
)
def test_stored_flips_are_the_lps_axes_stored_the_other_way(direction, flips):
    image, _ = phantom_ct(direction=direction)
    assert stored_flips(direction) == flips
    canonical = to_canonical(image).array
    if orientation_code(np.abs(direction)) == "LPS":  # flips only: undoing them gives the stored array back
        np.testing.assert_array_equal(np.flip(canonical, flips), image.array)


def test_spline_resampling_is_a_third_order_spline_that_keeps_the_samples():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(0, 100, (30, 26, 20)).astype(np.float32), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), np.eye(3))
    grid = resampled_grid(volume.grid, (1.7, 1.3, 2.0))
    got = resample_image(volume, grid, "spline").array
    start = (np.asarray(grid.spacing) - np.asarray(volume.spacing)) / 2 / np.asarray(volume.spacing)  # voxel centres stay aligned
    coords = np.meshgrid(*[start[a] + np.arange(grid.shape[a]) * grid.spacing[a] / volume.spacing[a] for a in range(3)], indexing="ij")
    expected = ndimage.map_coordinates(volume.array.astype(np.float64), coords, order=3, mode="nearest")  # scipy's, in float64
    np.testing.assert_allclose(got, expected, atol=1e-3)
    np.testing.assert_allclose(resample_image(volume, volume.grid, "spline").array, volume.array, atol=1e-3)  # interpolating: samples kept
    linear = resample_image(volume, grid).array
    assert np.abs(linear - got).mean() > 1.0  # the linear default smooths: a different image


def test_spline_resampling_takes_the_nearest_slice_along_the_low_resolution_axis():
    """nnU-Net's separate-z rule: an anisotropic scan's thick axis is resampled by nearest neighbour."""
    assert low_resolution_axis((0.8, 0.8, 5.0), (1.5, 1.5, 3.0)) == 2
    assert low_resolution_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # the target's, when the source is isotropic
    assert low_resolution_axis((1.0, 1.0, 2.5), (1.5, 1.5, 2.5)) is None
    assert low_resolution_axis((5.0, 5.0, 1.0), (5.0, 5.0, 1.0)) is None  # two thick axes: nnU-Net does not separate
    slices = np.arange(8, dtype=np.float32) * 100  # every slice constant in-plane, 100 HU apart
    volume = Volume(np.broadcast_to(slices, (20, 18, 8)).copy(), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), np.eye(3))
    got = resample_image(volume, resampled_grid(volume.grid, (1.5, 1.5, 3.0)), "spline").array
    values = np.unique(np.round(got, 3))
    np.testing.assert_array_equal(values, slices)  # whole slices (every one of them), no value between two


@pytest.mark.parametrize("resample", ["linear", "spline"])
def test_a_region_of_the_grid_is_resampled_as_the_whole_grid_is_there(resample):
    """preprocess_case(within=...) reads the region plus the interpolation's reach: its voxels are the whole grid's."""
    image, _ = phantom_ct(shape=(60, 56, 40), spacing=(1.0, 1.0, 2.0))
    config = PreprocessConfig(target_spacing=(1.2, 1.2, 2.4), crop="nonzero", resample=resample)  # little smoothing: a short reach
    whole = preprocess_case(image, config=config, fingerprint=None)
    part = preprocess_case(image, config=config, fingerprint=None, within=((20, 40), (18, 38), (10, 30)))
    start = np.rint((np.asarray(part.record.network.origin) - whole.record.network.origin) / np.asarray(whole.record.network.spacing)).astype(int)
    inside = whole.image[tuple(slice(a, a + n) for a, n in zip(start, part.image.shape))]
    assert part.image.shape < whole.image.shape
    np.testing.assert_allclose(part.image, inside, atol=1e-4 * np.ptp(whole.image))


def test_body_crop_excludes_air_and_keeps_body():
    image, label = phantom_ct(shape=(50, 50, 20))
    box = body_bounding_box(image, margin_mm=0)
    body = image.array > -500
    for axis, (a, b) in enumerate(box):
        idx = np.flatnonzero(body.any(axis=tuple(x for x in range(3) if x != axis)))
        assert (a, b) == (idx[0], idx[-1] + 1)
    assert box[0][1] - box[0][0] < 50  # air around the body is cut


def test_body_crop_of_a_large_volume_is_found_on_a_strided_mask_and_still_holds_the_body():
    """Above BODY_MASK_MAX_VOXELS the body is labelled on every 2nd voxel: the box holds the exact one
    and exceeds it by at most stride - 1 voxels a side; a separate smaller blob (the table) stays out."""
    from flareseg.transforms.preprocessing import BODY_MASK_MAX_VOXELS

    array = np.full((260, 250, 130), -1000.0, np.float32)
    array[41:200, 57:181, 13:120] = 40.0  # the body
    array[230:240, 10:240, 5:125] = 300.0  # a table, apart from it
    assert array.size > BODY_MASK_MAX_VOXELS
    box = body_bounding_box(Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), margin_mm=0)
    for (a, b), (lo, hi) in zip(box, ((41, 200), (57, 181), (13, 120))):
        assert a <= lo and hi <= b and lo - a <= 1 and b - hi <= 1


def test_nonzero_crop_is_nnunets_box_of_the_voxels_that_are_not_zero():
    """nnU-Net crops to the non-zero voxels, air (-1000 HU) included: only an exact-zero border goes."""
    array = np.full((12, 10, 8), -1000.0, np.float32)
    array[:2] = 0.0  # a zero-padded border, as some scanners write outside the field of view
    array[:, 9] = 0.0
    array[5, 5, 5] = 0.0  # a zero inside keeps the box
    image = Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert nonzero_bounding_box(image) == ((2, 12), (0, 9), (0, 8))
    assert nonzero_bounding_box(Volume(np.zeros((3, 4, 5), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))) == ((0, 3), (0, 4), (0, 5))


def test_the_crop_setting_picks_the_box_and_a_shared_crop_is_found_again_for_another_setting():
    image, _ = phantom_ct(shape=(50, 50, 20))
    body = body_crop(image, PreprocessConfig(body_margin_mm=0.0))
    assert body.box == body_bounding_box(to_canonical(image), margin_mm=0.0)
    assert body.box[0][1] - body.box[0][0] < 50
    assert body.for_config(PreprocessConfig(body_margin_mm=0.0)) is body
    nonzero = body.for_config(PreprocessConfig(crop="nonzero"))
    assert nonzero.box == ((0, 50), (0, 50), (0, 20))  # the phantom's air is -1000 HU, not 0
    assert nonzero.for_config(PreprocessConfig(crop="nonzero", body_margin_mm=50.0)) is nonzero  # body settings do not apply
    case = preprocess_case(image, config=PreprocessConfig(target_spacing=(2.0, 2.0, 3.0), crop="nonzero"), fingerprint=None)
    assert case.record.crop == ((0, 50), (0, 50), (0, 20)) and case.image.shape == (50, 50, 20)
    with pytest.raises(ConfigError, match="preprocess.crop must be one of body, nonzero"):
        PreprocessConfig(crop="bones")
    with pytest.raises(ConfigError, match="preprocess.resample must be one of linear, spline"):
        PreprocessConfig(resample="cubic")


def test_body_crop_of_all_air_keeps_everything():
    image = Volume(np.full((5, 6, 7), -1000.0, np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert body_bounding_box(image) == ((0, 5), (0, 6), (0, 7))


def test_resampled_grid_covers_the_same_box():
    grid = Grid((100, 80, 20), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    out = resampled_grid(grid, (1.0, 1.0, 1.0))
    assert out.shape == (80, 64, 100)
    # first voxel's lower corner is unchanged: origin - spacing/2 equal
    np.testing.assert_allclose(np.array(out.origin) - 0.5, np.array(grid.origin) - np.array(grid.spacing) / 2)


def test_resample_label_makes_no_new_values():
    _, label = phantom_ct()
    out = resample_label(label, resampled_grid(label.grid, (1.3, 1.7, 2.2)))
    assert set(np.unique(out.array)) <= set(np.unique(label.array))


def test_normalize_uses_fingerprint():
    out = normalize(np.array([-1000.0, 80.0, 1000.0]), FP)
    np.testing.assert_allclose(out, [(-100 - 80) / 60, 0.0, (300 - 80) / 60], rtol=1e-6)
    assert out.dtype == np.float32


def test_fingerprint_statistics():
    samples = np.arange(1001, dtype=np.float32)
    fp = compute_fingerprint(samples)
    assert fp.percentile_00_5 == pytest.approx(5.0) and fp.percentile_99_5 == pytest.approx(995.0)
    assert fp.mean == pytest.approx(500.0)
    with pytest.raises(ValueError):
        compute_fingerprint(np.array([]))


def test_label_on_other_grid_is_rejected():
    image, label = phantom_ct()
    moved = Volume(label.array, label.spacing, (1.0, 2.0, 3.0), label.direction)
    with pytest.raises(GeometryError):
        preprocess_case(image, moved, config=PreprocessConfig(), fingerprint=FP)


def test_restore_rejects_wrong_shape():
    image, label = phantom_ct()
    case = preprocess_case(image, label, config=PreprocessConfig(target_spacing=(2.0, 2.0, 3.0)), fingerprint=FP)
    with pytest.raises(GeometryError):
        restore_label(np.zeros((3, 3, 3), np.uint8), case.record)


def test_a_resampled_grid_larger_than_flareseg_handles_is_refused():
    """A fine target spacing on a large CT is a GeometryError before any array is allocated."""
    grid = Grid((512, 512, 1000), (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(GeometryError, match="more than the"):
        resampled_grid(grid, (0.1, 0.1, 0.1))
    assert resampled_grid(grid, (1.0, 1.0, 1.0)).shape == (410, 410, 1000)


@pytest.mark.parametrize("slices", [3, 4, 40])
def test_anti_aliasing_works_on_thin_volumes_and_keeps_the_mean(slices):
    """Downsampling smooths axis by axis; an axis of 3 voxels (the 3-slice DICOM series) is smoothed too."""
    from flareseg.transforms.preprocessing import resample_image

    array = np.random.default_rng(0).normal(40.0, 30.0, size=(64, 64, slices)).astype(np.float32)
    volume = Volume(array, (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    grid = resampled_grid(volume.grid, (3.0, 3.0, 3.0))
    out = resample_image(volume, grid)
    assert out.shape == grid.shape
    assert abs(float(out.array.mean()) - 40.0) < 3.0
    assert float(out.array.std()) < 0.5 * float(array.std())  # smoothed, not sub-sampled noise


def _reference_resample_image(volume: Volume, grid: Grid) -> np.ndarray:
    """The all-axes-at-once pipeline resample_image is separable to: ITK's Gaussian per axis on the
    whole volume, then one trilinear pass (sitk.Resample)."""
    import SimpleITK as sitk

    from flareseg.transforms.preprocessing import anti_aliasing_sigma

    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    source, target = np.asarray(volume.spacing), np.asarray(grid.spacing)
    sigma = anti_aliasing_sigma(source, target)
    for axis in np.flatnonzero(target / source > 1.3):
        image = sitk.RecursiveGaussian(image, float(sigma[axis]), False, sitk.RecursiveGaussianImageFilter.ZeroOrder, int(axis))
    out = sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume.from_sitk(out).array


@pytest.mark.parametrize("order", ["C", "F"])
def test_separable_resampling_equals_smoothing_then_trilinear(order):
    """Axis-by-axis smoothing and interpolation give what smoothing everything, then one trilinear pass
    gives (ITK), on an anisotropic grid shrinking two axes and growing one, a crop's sub-grid included."""
    from scipy import ndimage

    from flareseg.transforms.preprocessing import resample_image, sub_grid

    rng = np.random.default_rng(3)
    array = np.asarray(ndimage.gaussian_filter(rng.normal(0, 300, size=(90, 70, 24)), 1.5), order=order).astype(np.int16)
    volume = Volume(array, (0.7, 0.9, 5.0), (3.0, -2.0, 10.0), np.eye(3))
    for grid in (resampled_grid(volume.grid, (4.0, 2.5, 2.0)), sub_grid(resampled_grid(volume.grid, (3.0, 3.0, 3.0)), ((2, 15), (1, 20), (5, 30)))):
        ours = resample_image(volume, grid).array
        np.testing.assert_allclose(ours, _reference_resample_image(volume, grid), atol=0.02)
        assert ours.dtype == np.float32 and ours.shape == grid.shape


def test_separable_label_resampling_equals_affine_trilinear():
    """resample_label's per-axis interpolation labels every voxel as scipy's trilinear affine_transform of each indicator does."""
    from scipy import ndimage

    _, label = phantom_ct()
    for spacing in ((1.3, 1.7, 2.2), (0.4, 0.6, 0.5)):
        grid = resampled_grid(label.grid, spacing)
        scale = np.asarray(spacing) / np.asarray(label.spacing)
        offset = (np.asarray(grid.origin) - np.asarray(label.origin)) / np.asarray(label.spacing)
        best = np.full(grid.shape, 0.5, np.float32)
        expected = np.zeros(grid.shape, np.uint8)
        for value in np.unique(label.array)[1:]:
            values = ndimage.affine_transform((label.array == value).astype(np.float32), scale, offset=offset, output_shape=grid.shape, order=1, mode="nearest")
            expected[values >= best] = value
            best = np.maximum(best, values)
        got = resample_label(label, grid).array
        assert np.mean(got != expected) < 1e-4
