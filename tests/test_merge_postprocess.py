import numpy as np
import pytest

from flareseg.errors import ConfigError, GeometryError
from flareseg.labels import AORTA, LESION, LIVER, SPLEEN, STOMACH
from flareseg.transforms.merge import lesions_touching, merge_labels
from flareseg.transforms.postprocess import (
    DEFAULT,
    OFF,
    PostprocessConfig,
    fill_holes,
    filter_components,
    keep_largest_component,
    postprocess,
    remove_small_islands,
    voxel_volume_ml,
)


def _blank(shape=(30, 30, 30)):
    return np.zeros(shape, np.uint8)


# ---------------------------------------------------------------------------------------------- merge
def test_lesion_wins_over_any_organ():
    organ = _blank()
    organ[5:20, 5:20, 5:20] = LIVER
    organ[20:25, 5:20, 5:20] = SPLEEN
    lesion = _blank()
    lesion[15:23, 10:12, 10:12] = 1  # inside the liver, the spleen and background
    lesion[0:2, 0:2, 0:2] = 1
    merged = merge_labels(organ, lesion)
    assert merged.dtype == np.uint8
    np.testing.assert_array_equal(merged[lesion > 0], LESION)
    np.testing.assert_array_equal(merged[lesion == 0], organ[lesion == 0])


def test_merge_accepts_a_label_map_of_the_tumour_model():
    organ = _blank()
    tumor = _blank()
    tumor[3:5, 3:5, 3:5] = LESION
    assert (merge_labels(organ, tumor) == LESION).sum() == 8


def test_merge_does_not_modify_its_inputs():
    organ = _blank()
    organ[5:10] = LIVER
    lesion = _blank()
    lesion[6:8] = 1
    before = organ.copy()
    merge_labels(organ, lesion)
    np.testing.assert_array_equal(organ, before)


def test_merge_rejects_different_shapes():
    with pytest.raises(GeometryError, match="shape"):
        merge_labels(_blank((10, 10, 10)), _blank((10, 10, 11)))


def test_tumor_in_organs_only_keeps_lesions_in_or_touching_host_organs():
    organ = _blank()
    organ[2:12, 2:12, 2:12] = LIVER
    organ[20:28, 20:28, 2:6] = AORTA  # not a lesion host
    lesion = _blank()
    lesion[5:8, 5:8, 5:8] = 1  # inside the liver
    lesion[12:14, 4:6, 4:6] = 1  # touching the liver's face from outside
    lesion[22:24, 22:24, 3:5] = 1  # inside the aorta only
    lesion[25:28, 2:5, 20:24] = 1  # in the background, far from everything
    kept = lesions_touching(lesion, organ)
    assert kept[5:8, 5:8, 5:8].all() and kept[12:14, 4:6, 4:6].all()
    assert not kept[22:24, 22:24, 3:5].any() and not kept[25:28, 2:5, 20:24].any()
    merged = merge_labels(organ, lesion, host_ids=(LIVER, SPLEEN))
    assert (merged == LESION).sum() == 27 + 8
    assert (merged[22:24, 22:24, 3:5] == AORTA).all()
    # Without the restriction every lesion voxel counts.
    assert (merge_labels(organ, lesion) == LESION).sum() == lesion.sum()


def test_tumor_in_organs_only_with_no_host_drops_every_lesion():
    lesion = _blank()
    lesion[1:3, 1:3, 1:3] = 1
    assert not lesions_touching(lesion, _blank()).any()
    assert not lesions_touching(_blank(), _blank()).any()


# ---------------------------------------------------------------------------------------------- post-processing
def test_largest_component_per_single_body_organ():
    label = _blank()
    label[2:10, 2:10, 2:10] = LIVER  # 512 voxels
    label[20:23, 20:23, 20:23] = LIVER  # 27 voxels: a stray island
    label[2:5, 20:25, 2:5] = STOMACH
    label[25:27, 2:4, 25:27] = LESION  # lesions may be many: not a single-body id
    label[15:17, 2:4, 25:27] = LESION
    out = keep_largest_component(label)
    assert (out == LIVER).sum() == 512 and not out[20:23, 20:23, 20:23].any()
    assert (out == STOMACH).sum() == 45
    assert (out == LESION).sum() == 16


def test_touching_organs_are_separate_components():
    label = _blank()
    label[2:10, 2:10, 2:10] = LIVER
    label[10:12, 2:10, 2:10] = SPLEEN  # touches the liver
    out = keep_largest_component(label)
    np.testing.assert_array_equal(out, label)


def test_remove_small_islands_uses_millilitres():
    spacing = (2.0, 2.0, 2.0)  # 8 ul per voxel
    assert voxel_volume_ml(spacing) == pytest.approx(0.008)
    label = _blank()
    label[2:6, 2:6, 2:6] = LESION  # 64 voxels = 0.512 ml
    label[20:22, 20:22, 20:22] = LESION  # 8 voxels = 0.064 ml
    label[10:13, 20:23, 2:5] = LIVER  # 27 voxels = 0.216 ml
    out = remove_small_islands(label, 0.1, spacing)
    assert (out == LESION).sum() == 64 and (out == LIVER).sum() == 27
    out = remove_small_islands(label, 0.3, spacing)
    assert (out == LESION).sum() == 64 and not (out == LIVER).any()
    # 0 disables
    np.testing.assert_array_equal(remove_small_islands(label, 0.0, spacing), label)


def test_connectivity_decides_what_is_one_component():
    label = _blank()
    label[5, 5, 5] = LIVER
    label[6, 6, 6] = LIVER  # corner neighbour
    assert (filter_components(label, largest_only=[LIVER], connectivity=26) == LIVER).sum() == 2
    assert (filter_components(label, largest_only=[LIVER], connectivity=6) == LIVER).sum() == 1


def test_fill_holes_fills_background_cavities_only():
    label = _blank()
    label[5:15, 5:15, 5:15] = LIVER
    label[8:11, 8:11, 8:11] = 0  # an enclosed cavity: filled
    label[11:13, 11:13, 11:13] = LESION  # a lesion inside the liver: kept
    label[5:15, 5:7, 20:25] = STOMACH
    label[7:9, 5:7, 20:22] = 0  # a notch open to the outside: not a hole
    out = fill_holes(label)
    assert (out[8:11, 8:11, 8:11] == LIVER).all()
    assert (out[11:13, 11:13, 11:13] == LESION).all()
    assert (out[7:9, 5:7, 20:22] == 0).all()
    assert (out == STOMACH).sum() == (label == STOMACH).sum()


def test_fill_holes_respects_its_ids():
    label = _blank()
    label[5:15, 5:15, 5:15] = LIVER
    label[8:11, 8:11, 8:11] = 0
    np.testing.assert_array_equal(fill_holes(label, ids=[SPLEEN]), label)


def test_postprocess_switches():
    label = _blank()
    label[2:10, 2:10, 2:10] = LIVER
    label[5, 5, 5] = 0  # hole
    label[20:22, 20:22, 20:22] = LIVER  # island, 8 voxels
    spacing = (1.0, 1.0, 1.0)
    off = postprocess(label, spacing, OFF)
    np.testing.assert_array_equal(off, label)
    assert off is not label
    out = postprocess(label, spacing, PostprocessConfig(largest_component=True))
    assert not out[20:22, 20:22, 20:22].any() and out[5, 5, 5] == 0
    out = postprocess(label, spacing, PostprocessConfig(fill_holes=True))
    assert out[5, 5, 5] == LIVER and out[20:22, 20:22, 20:22].all()
    out = postprocess(label, spacing, DEFAULT)
    assert out[5, 5, 5] == LIVER and not out[20:22, 20:22, 20:22].any()


def test_postprocess_of_an_empty_map_is_empty():
    empty = _blank()
    assert not postprocess(empty, (1.0, 1.0, 1.0), DEFAULT).any()


def test_postprocess_config_validation():
    with pytest.raises(ConfigError, match="min_island_ml"):
        PostprocessConfig(min_island_ml=-1)
    with pytest.raises(ConfigError, match="connectivity"):
        PostprocessConfig(connectivity=8)
    assert not OFF.enabled and DEFAULT.enabled
