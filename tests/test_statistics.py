"""Segmentation statistics against analytic phantoms with known answers."""

import numpy as np
import pytest

from flareseg.evaluation.statistics import segmentation_statistics, statistics_csv
from flareseg.labels import LESION, LIVER, SPLEEN


def _ball(shape, spacing, centre_mm, radius_mm):
    idx = np.indices(shape).reshape(3, -1).T * np.asarray(spacing)
    inside = ((idx - np.asarray(centre_mm)) ** 2).sum(1) <= radius_mm**2
    return inside.reshape(shape)


def test_a_ball_at_anisotropic_spacing_has_its_volume_and_diameter():
    spacing, radius = (0.7, 0.9, 2.5), 15.0
    shape = (60, 50, 20)
    label = np.zeros(shape, np.uint8)
    label[_ball(shape, spacing, (21.0, 22.5, 25.0), radius)] = LESION
    big = _ball(shape, spacing, (21.0, 22.5, 25.0), 19.0) & (label == 0)
    label[big] = LIVER
    stats = segmentation_statistics(label, np.full(shape, 60.0, np.float32), spacing=spacing)
    (lesion,) = stats["lesions"]
    assert lesion["volume_ml"] == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.02)
    assert abs(lesion["longest_axial_diameter_mm"] - 2 * radius) <= max(spacing[:2])
    assert lesion["host"] == "liver" and stats["lesion_burden_ml"] == {"liver": lesion["volume_ml"]}
    assert stats["organs"]["liver"]["hu_mean"] == 60.0 and stats["lesion_count"] == 1


def test_organ_figures_and_two_lesions_in_different_hosts():
    label = np.zeros((40, 40, 40), np.uint8)
    label[2:12, 2:12, 2:12] = LIVER
    label[20:30, 20:30, 20:30] = SPLEEN
    label[5:7, 5:7, 5:7] = LESION
    label[24:26, 24:26, 24:26] = LESION
    image = np.where(label == LIVER, 100.0, 0.0).astype(np.float32)
    stats = segmentation_statistics(label, image, spacing=(2.0, 2.0, 2.0), origin=(10.0, 0.0, 0.0))
    assert stats["organs"]["liver"]["volume_ml"] == pytest.approx((1000 - 8) * 8 / 1000)
    assert stats["organs"]["liver"]["bbox_mm"] == [[14.0, 4.0, 4.0], [32.0, 22.0, 22.0]]
    assert sorted(l["host"] for l in stats["lesions"]) == ["liver", "spleen"]
    assert "hu_mean" not in segmentation_statistics(label, None, spacing=(2.0, 2.0, 2.0))["organs"]["liver"]
    assert statistics_csv(stats).count("\n") == 1 + 2 + 2


def test_an_empty_map_has_no_organs_and_no_lesions():
    stats = segmentation_statistics(np.zeros((5, 5, 5), np.uint8), None, spacing=(1.0, 1.0, 1.0))
    assert stats == {"organs": {}, "lesions": [], "lesion_count": 0, "lesion_burden_ml": {}}


def test_label_tables_list_every_label_with_its_colour(tmp_path):
    from flareseg.io.label_tables import write_label_tables
    from flareseg.labels import LABELS

    slicer, itksnap = write_label_tables(tmp_path)
    rows = [line.split() for line in slicer.read_text().splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [c.id for c in LABELS]
    assert rows[14][1:5] == ["lesion", "0", "255", "255"] and rows[2][1] == "right_kidney"
    snap = [line for line in itksnap.read_text().splitlines() if not line.startswith("#")]
    assert len(snap) == 15 and snap[1].split()[:4] == ["1", "220", "80", "60"] and snap[1].endswith('"liver"')
