"""Tests of the synthetic phantom cohort (flareseg.data.synthetic). Small cases only, except one `slow` test."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

import flareseg.labels as L
import flareseg.data.synthetic as S
from flareseg.errors import ConfigError
from flareseg.io import Volume, read_image, read_label


@pytest.fixture(scope="module")
def small_case():
    """One small portal-venous case with all organs in view and two lesions."""
    return S.synthesize_case(11, size="small", phase="portal-venous", lesions=2, fov_cut=False, orientation="LPS")


def physical_centroid(label: Volume, ids) -> np.ndarray:
    """LPS centroid (mm) of the voxels of `label` whose id is in `ids`, through the volume's geometry."""
    idx = np.argwhere(np.isin(label.array, ids)).mean(axis=0)
    return np.asarray(label.origin) + np.asarray(label.direction) @ (idx * np.asarray(label.spacing))


def test_same_seed_gives_identical_arrays(small_case):
    image, label, meta = S.synthesize_case(11, size="small", phase="portal-venous", lesions=2, fov_cut=False, orientation="LPS")
    assert np.array_equal(image.array, small_case[0].array)
    assert np.array_equal(label.array, small_case[1].array)
    assert meta == small_case[2]
    other = S.synthesize_case(12, size="small", phase="portal-venous", lesions=2, fov_cut=False, orientation="LPS")
    assert other[0].shape != image.shape or not np.array_equal(other[0].array, image.array)


def test_case_rng_is_per_index():
    a = S.case_rng(3, 5).integers(0, 2**32, 4)
    assert np.array_equal(a, S.case_rng(3, 5).integers(0, 2**32, 4))
    assert not np.array_equal(a, S.case_rng(3, 6).integers(0, 2**32, 4))
    assert not np.array_equal(a, S.case_rng(4, 5).integers(0, 2**32, 4))


def test_full_case_has_all_organs_and_valid_volumes(small_case):
    image, label, meta = small_case
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert image.same_grid(label)
    assert set(np.unique(label.array)) <= set(range(15))
    assert meta["organs_present"] == list(L.ORGAN_IDS)
    assert meta["lesion_count"] >= 1 and (label.array == L.LESION).any()
    ml = meta["volumes_ml"]
    assert 700 < ml["liver"] < 2600 and 50 < ml["spleen"] < 450
    for kidney in ("right kidney", "left kidney"):
        assert 60 < ml[kidney] < 300
    for adrenal in ("right adrenal gland", "left adrenal gland"):  # small but visible at 2 mm
        assert 1.5 < ml[adrenal] < 8
    assert 10 < ml["gallbladder"] < 120
    # Small profile: 192-256 in-plane at 1.5-2.0 mm, 2-5 mm slices.
    assert 192 <= image.shape[0] == image.shape[1] <= 256
    assert 1.5 <= image.spacing[0] <= 2.0 and 2.0 <= image.spacing[2] <= 5.0


def test_intensities_are_plausible_hu(small_case):
    image, label, _ = small_case
    hu, lab = image.array.astype(np.float32), label.array
    assert hu.min() <= -1000 and hu.max() > 500  # air and bone
    assert (hu <= -990).mean() > 0.1  # air around the body
    body_fat = hu[(lab == 0) & (hu > -150) & (hu < -50)]
    assert body_fat.size > 1000 and -120 < np.median(body_fat) < -80

    def mean(i):
        return float(hu[lab == i].mean())

    assert 80 < mean(L.LIVER) < 160 and mean(L.LIVER) > np.median(body_fat) + 150
    assert 90 < mean(L.SPLEEN) < 170
    assert 100 < mean(L.AORTA) < 250
    assert -20 < mean(L.GALLBLADDER) < 50  # bile
    assert 90 < mean(L.RIGHT_KIDNEY) < 230


def test_contrast_phases_enhance_differently():
    means = {}
    for phase in S.PHASES:
        image, label, meta = S.synthesize_case(21, size="small", phase=phase, lesions=0, fov_cut=False, orientation="LPS")
        assert meta["phase"] == phase and meta["lesion_count"] == 0 and not (label.array == L.LESION).any()
        hu = image.array.astype(np.float32)
        means[phase] = {i: float(hu[label.array == i].mean()) for i in (L.LIVER, L.AORTA, L.RIGHT_KIDNEY)}
    nc, art, pv = (means[p] for p in S.PHASES)
    assert nc[L.AORTA] < 70 and art[L.AORTA] > 220 and art[L.AORTA] > pv[L.AORTA] > nc[L.AORTA] + 60
    assert pv[L.LIVER] > art[L.LIVER] > nc[L.LIVER] - 10 and pv[L.LIVER] > nc[L.LIVER] + 30
    assert art[L.RIGHT_KIDNEY] > nc[L.RIGHT_KIDNEY] + 60


def test_anatomy_sits_at_the_right_physical_places(small_case):
    _, label, _ = small_case
    c = {i: physical_centroid(label, [i]) for i in L.ORGAN_IDS}
    # LPS: +x patient left, +y posterior, +z superior.
    assert c[L.LIVER][0] < c[L.AORTA][0] < c[L.SPLEEN][0]
    assert c[L.RIGHT_KIDNEY][0] < c[L.IVC][0] < c[L.AORTA][0] < c[L.LEFT_KIDNEY][0]
    assert c[L.RIGHT_ADRENAL][0] < c[L.LEFT_ADRENAL][0] and c[L.GALLBLADDER][0] < c[L.AORTA][0]
    assert c[L.RIGHT_KIDNEY][1] > c[L.AORTA][1] and c[L.LEFT_KIDNEY][1] > c[L.PANCREAS][1]
    assert c[L.LIVER][2] > c[L.RIGHT_KIDNEY][2] and c[L.RIGHT_KIDNEY][2] < c[L.LEFT_KIDNEY][2]
    assert c[L.ESOPHAGUS][2] > c[L.STOMACH][2] > c[L.DUODENUM][2]


@pytest.mark.parametrize("code", ["RAS", "PLI", "SPL"])
def test_oriented_case_keeps_the_physical_anatomy(small_case, code):
    image, label, meta = S.synthesize_case(11, size="small", phase="portal-venous", lesions=2, fov_cut=False, orientation=code)
    assert meta["orientation"] == code
    assert sorted(image.shape) == sorted(small_case[0].shape)
    # In the stored (flipped / permuted) geometry the liver is still on the patient's right (-x in LPS).
    liver, spleen = physical_centroid(label, [L.LIVER]), physical_centroid(label, [L.SPLEEN])
    assert liver[0] < spleen[0]
    np.testing.assert_allclose(liver, physical_centroid(small_case[1], [L.LIVER]), atol=1e-6)
    # DICOMOrient to LPS gives back exactly the LPS-stored case.
    lps = Volume.from_sitk(sitk.DICOMOrient(image.to_sitk(), "LPS"))
    lps_label = Volume.from_sitk(sitk.DICOMOrient(label.to_sitk(), "LPS"))
    assert np.array_equal(lps.array, small_case[0].array) and np.array_equal(lps_label.array, small_case[1].array)
    assert lps.same_grid(small_case[0])


def test_lesions_asked_for_always_show():
    for seed in range(6):  # cut fields of view are the hardest case
        _, label, meta = S.synthesize_case(seed, size="small", lesions=1, fov_cut=True)
        assert meta["fov_cut"] != "none"
        assert meta["lesion_count"] >= 1 and (label.array == L.LESION).sum() > 20


def test_small_case_is_fast():
    S.synthesize_case(0, size="small")  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    image, _, _ = S.synthesize_case(1, size="small")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"small case {image.shape}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    assert cpu < 1.5  # ~0.2-0.5 s on one unloaded core


def test_regime_counts_are_exact():
    assert S.regime_counts(7, dict(S.SynthConfig().proportions)) == {"full": 2, "lesion": 2, "partial": 2, "none": 1}
    assert S.regime_counts(0, {"full": 1.0}) == {"full": 0, "lesion": 0, "partial": 0, "none": 0}
    for n in range(40):
        counts = S.regime_counts(n, (("full", 0.25), ("lesion", 0.35), ("partial", 0.4)))
        assert sum(counts.values()) == n and counts["none"] == 0
        for name, frac in (("full", 0.25), ("lesion", 0.35), ("partial", 0.4)):
            assert abs(counts[name] - n * frac) < 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cases": -1}, "cases"),
        ({"val_cases": 1.5}, "val_cases"),
        ({"cases": 0, "val_cases": 0}, "nothing to generate"),
        ({"size": "huge"}, "size"),
        ({"proportions": {"full": 0.5, "lesion": 0.3}}, "sum to 1"),
        ({"proportions": {"full": 0.5, "weird": 0.5}}, "unknown regime"),
        ({"proportions": {"full": 1.5, "none": -0.5}}, ">= 0"),
        ({"lesion_free_fraction": 1.2}, "lesion_free_fraction"),
        ({"prefix": "a b"}, "prefix"),
        ({"cases": 10**11}, "at most 100,000"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.SynthConfig(**kwargs)


def test_a_cohort_larger_than_the_free_disk_is_refused_before_anything_is_removed(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    out = tmp_path / "cohort"
    S.generate_cohort(out, S.SynthConfig(cases=1, val_cases=0, size="small"), progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))  # 1 MB free
    with pytest.raises(ConfigError, match="need about 10 MB; the disk has 1 MB free"):
        S.generate_cohort(out, S.SynthConfig(cases=2, val_cases=0, size="small"), progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_bad_case_options_raise():
    with pytest.raises(ConfigError, match="size"):
        S.synthesize_case(0, size="medium")
    with pytest.raises(ConfigError, match="phase"):
        S.synthesize_case(0, size="small", phase="venous")
    with pytest.raises(ConfigError, match="orientation"):
        S.synthesize_case(0, size="small", orientation="LPX")
    with pytest.raises(ConfigError, match="orientation"):
        S.synthesize_case(0, size="small", orientation="LRS")
    with pytest.raises(ConfigError, match="lesions"):
        S.synthesize_case(0, size="small", lesions=-1)
    with pytest.raises(ConfigError, match="rng_or_seed"):
        S.synthesize_case(-3, size="small")


def test_config_accepts_a_mapping_and_serialises():
    cfg = S.SynthConfig(cases=3, proportions={"full": 0.5, "none": 0.5})
    assert cfg.proportions == (("full", 0.5), ("none", 0.5))
    assert json.loads(json.dumps(cfg.to_dict()))["proportions"] == {"full": 0.5, "none": 0.5}


def test_two_processes_write_the_same_cohort_byte_for_byte(tmp_path):
    config = S.SynthConfig(cases=2, val_cases=1, seed=3, size="small", proportions={"full": 0.5, "partial": 0.5})
    serial = S.generate_cohort(tmp_path / "serial", config, progress=False)
    assert S.generate_cohort(tmp_path / "parallel", config, progress=False, workers=2) == serial
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.nii.gz"))
    assert len(files) == 6  # 2 training and 1 validation case, each an image and a label
    for rel in files:
        assert (tmp_path / "parallel" / rel).read_bytes() == (tmp_path / "serial" / rel).read_bytes()


def test_cohort_layout_manifest_and_label_regimes(tmp_path):
    config = S.SynthConfig(
        cases=8,
        val_cases=2,
        seed=5,
        size="small",
        proportions={"full": 0.25, "lesion": 0.25, "partial": 0.25, "none": 0.25},
        fov_cut_fraction=0.5,
        oriented_fraction=0.5,
    )
    manifest = S.generate_cohort(tmp_path, config, progress=False)
    assert json.loads((tmp_path / S.MANIFEST_NAME).read_text()) == manifest
    assert manifest["complete"] and manifest["config"]["seed"] == 5
    assert manifest["regime_counts"] == {"full": 2, "lesion": 2, "partial": 2, "none": 2}
    cases = manifest["cases"]
    assert [c["regime"] for c in cases if c["split"] == "train"].count("lesion") == 2
    assert len(list((tmp_path / "imagesTr").glob("*_0000.nii.gz"))) == 6
    assert len(list((tmp_path / "labelsTr").glob("*.nii.gz"))) == 6
    assert len(list((tmp_path / "unlabeledTr").glob("*_0000.nii.gz"))) == 2
    assert len(list((tmp_path / "imagesVal").glob("*_0000.nii.gz"))) == 2
    assert len(list((tmp_path / "labelsVal").glob("*.nii.gz"))) == 2
    assert [c["case"] for c in cases] == [f"FLARESynth_{i:04d}" for i in range(1, 11)]
    assert any(c["orientation"] != "LPS" for c in cases) and any(c["fov_cut"] != "none" for c in cases)
    for c in cases:
        image = read_image(tmp_path / c["image"])
        assert list(image.shape) == c["shape"] and image.spacing == pytest.approx(c["spacing"])
        if c["regime"] == "none":
            assert c["label"] is None and c["image"].startswith("unlabeledTr/")
            continue
        label = read_label(tmp_path / c["label"], image)
        ids = {int(i) for i in np.unique(label.array)} - {0}
        if {L.LIVER, L.SPLEEN} <= ids:  # read back from disk, any storage orientation: liver on the right
            assert physical_centroid(label, [L.LIVER])[0] < physical_centroid(label, [L.SPLEEN])[0]
        assert sorted(ids) == c["labels_in_file"] and ids <= set(c["labels_annotated"])
        if c["regime"] == "lesion":
            assert ids == {L.LESION} and c["lesion_count"] >= 1
        elif c["regime"] == "full":  # training `full` cases and all validation cases: complete labels
            assert c["labels_annotated"] == list(L.ALL_FOREGROUND_IDS)
            assert ids - {L.LESION} == set(c["organs_present"]) and (L.LESION in ids) == (c["lesion_count"] > 0)
            if c["split"] == "train":  # all 13 organs in view
                assert c["fov_cut"] == "none" and ids >= set(L.ORGAN_IDS)
            else:
                assert c["image"].startswith("imagesVal/") and c["label"].startswith("labelsVal/")
        else:  # partial
            organs = set(c["labels_annotated"]) - {L.LESION}
            assert 1 <= len(organs) <= 12 and ids - {L.LESION} <= organs
    # Running again into the same folder replaces the earlier cohort's files.
    S.generate_cohort(tmp_path, S.SynthConfig(cases=1, val_cases=0, seed=1, size="small", proportions={"none": 1.0}), progress=False)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.nii.gz"))
    assert files == ["unlabeledTr/FLARESynth_0001_0000.nii.gz"]


def test_cohort_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        S.generate_cohort(tmp_path, S.SynthConfig(cases=1, val_cases=0, size="small"), progress=False)


def test_plot_case_writes_a_png(tmp_path, small_case):
    path = S.plot_case(small_case[0], small_case[1], tmp_path / "case.png", title="phantom")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_full_case_speed_and_same_anatomy_as_small():
    S.synthesize_case(0, size="small")  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    image, label, meta = S.synthesize_case(11, size="full", phase="portal-venous", lesions=2, fov_cut=False, orientation="LPS", spacing=(0.8, 1.5))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_200 = 200 / image.shape[2]
    print(f"full case {image.shape}: {wall:.2f} s wall, {cpu:.2f} s CPU ({cpu * per_200:.2f} s CPU per 512x512x200)")
    assert image.shape[:2] == (512, 512) and 150 < image.shape[2] < 260
    assert cpu * per_200 < 5.0
    small = S.synthesize_case(11, size="small", phase="portal-venous", lesions=2, fov_cut=False, orientation="LPS")
    assert meta["patient"] == small[2]["patient"]
    for organ in (L.LIVER, L.SPLEEN, L.RIGHT_KIDNEY, L.AORTA):  # same anatomy in mm, whatever the grid
        np.testing.assert_allclose(physical_centroid(label, [organ]), physical_centroid(small[1], [organ]), atol=4.0)
