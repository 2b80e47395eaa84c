"""Two-step inference: geometry of the written map, modes, batch behaviour, regions of interest.

Two kinds of models are used: tiny random DynUNets saved as model folders (the real loading and
network path; their output is noise, geometry is what is tested), and threshold 'networks' (a voxel
is an organ where its HU exceeds a threshold), whose output is known, so that where the labels land
can be checked in any orientation.
"""

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import flareseg.io.write as fio
from flareseg.config import Fingerprint, InferenceDefaults, get_preset
from flareseg.errors import ConfigError, GeometryError, InputError
from flareseg.io import Volume, read_image, read_label, write_volume
from flareseg.labels import LESION, LIVER, RIGHT_KIDNEY
from flareseg.model.folder import WEIGHTS_FILE, ModelConfig, channel_labels_for, save_tensors, write_model_config
from flareseg.model.network import build_network
from flareseg.inference import MODES, InferenceConfig, TwoStepPredictor, predict_case, predict_folder, run_folder
from flareseg.io import case_name, find_cases
from flareseg.transforms.postprocess import OFF
from flareseg.model.predictor import ModelPredictor
from flareseg.io import Grid
from flareseg.transforms.roi import (
    bounding_box,
    ensure_min_size,
    expand_box,
    intersect,
    is_empty,
    label_box,
    map_box,
    margin_voxels,
    middle_slab,
    scale_box,
    slices_for_extent,
)

from conftest import REAL_CASES, phantom_ct

IDENTITY_FP = Fingerprint(-1000.0, 1000.0, 0.0, 1.0)
"""Normalisation that leaves HU unchanged, so threshold networks can think in HU."""
FAST = InferenceConfig.for_mode("fast", step=1.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks on a busy 2-core machine run faster and steadier on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- models
class ThresholdNet(torch.nn.Module):
    """Per voxel: output channel c scores t_c where the input exceeds t_c (else -1e4); background scores 0.

    The highest threshold exceeded wins the arg-max; a constant per voxel, so blending is exact.
    """

    def __init__(self, channels: int, thresholds: dict[int, float]):
        super().__init__()
        self.channels, self.thresholds = channels, thresholds

    def forward(self, x):
        out = torch.full((x.shape[0], self.channels, *x.shape[2:]), -1e4)
        out[:, 0] = 0
        for c, t in self.thresholds.items():
            out[:, c] = torch.where(x[:, 0] > t, torch.tensor(float(t)), torch.tensor(-1e4))
        return out


def threshold_predictor(task: str, thresholds: dict[int, float], spacing=(4.0, 4.0, 4.0), inference: InferenceDefaults | None = None) -> ModelPredictor:
    p = get_preset("tiny", task)
    cfg = ModelConfig(
        task, "tiny", p.network, dataclasses.replace(p.preprocess, target_spacing=spacing), IDENTITY_FP, p.train, channel_labels_for(task),
        inference=inference,
    )
    return ModelPredictor(cfg, ThresholdNet(p.network.out_channels, thresholds), "cpu")


def organ_thresholds():
    # phantom_ct: body 40 HU, organ 1 at 120 HU, organ 2 at 200 HU
    return threshold_predictor("organ", {LIVER: 90.0, RIGHT_KIDNEY: 160.0})


def tumor_thresholds(spacing=(4.0, 4.0, 4.0)):
    # below the 200 HU of organ 2 by more than the partial-volume blur of the 4 mm grid
    return threshold_predictor("tumor", {1: 130.0}, spacing)


def write_random_model(folder: Path, task: str, seed: int) -> Path:
    """A tiny random DynUNet model folder, at 8 mm with a 48^3 patch so a small CT is one tile."""
    p = get_preset("tiny", task)
    torch.manual_seed(seed)
    cfg = ModelConfig(
        task, "tiny", p.network, dataclasses.replace(p.preprocess, target_spacing=(8.0, 8.0, 8.0)),
        Fingerprint(-150.0, 250.0, 60.0, 70.0), dataclasses.replace(p.train, patch_size=(48, 48, 48)), channel_labels_for(task),
    )
    save_tensors(build_network(p.network).state_dict(), folder / WEIGHTS_FILE)
    write_model_config(folder, cfg)
    return folder


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_random_model(root / "organ", "organ", 0), write_random_model(root / "tumor", "tumor", 1)


@pytest.fixture(scope="module")
def thresholds():
    return TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST)


def assert_same_geometry(output: Path, reference: Volume):
    image = sitk.ReadImage(str(output))
    assert image.GetSize() == reference.shape
    np.testing.assert_allclose(image.GetSpacing(), reference.spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), reference.origin, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), reference.direction, rtol=0, atol=1e-6)
    assert image.GetPixelID() == sitk.sitkUInt8


def reoriented(volume: Volume, code: str) -> Volume:
    """The same voxels and physical object stored in another orientation (axes permuted and flipped)."""
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), code))


def _dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * np.logical_and(a, b).sum() / s


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.real
@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_real_samples_output_geometry_equals_input(real_data, model_folders, tmp_path, name):
    image_path = real_data / REAL_CASES[name][0]
    organ, tumor = model_folders
    out = tmp_path / f"{name}.nii.gz"
    report = predict_case(image_path, out, organ_model=organ, tumor_model=tumor, config=FAST)
    reference = read_image(image_path)
    assert_same_geometry(out, reference)
    label = read_label(out, reference)  # raises GeometryError on any mismatch
    assert label.array.max() <= LESION
    assert {"load", "read", "preprocess", "organ", "tumor", "postprocess", "restore", "write", "total"} <= set(report.timings)
    assert report.timings["total"] >= report.timings["organ"] > 0
    assert report.input_shape == reference.shape


@pytest.mark.parametrize("code", ["RAS", "PLI", "SLA", "LPI"])
def test_any_orientation_gives_the_same_physical_labels(thresholds, tmp_path, code):
    image, truth = phantom_ct(shape=(40, 36, 30), spacing=(2.0, 2.0, 3.0))
    ref_label, _ = _arrays(thresholds.segment(image))
    other = reoriented(image, code)
    path = tmp_path / "in_0000.nii.gz"
    write_volume(other, path)
    out = tmp_path / "out.nii.gz"
    thresholds.predict(path, out)
    assert_same_geometry(out, other)
    back = Volume.from_sitk(sitk.DICOMOrient(sitk.ReadImage(str(out)), "LPS")).array
    np.testing.assert_array_equal(back, ref_label)
    # and the labels land on the structures they should (organ 1 with its dark core filled as a hole;
    # spheres of 12 and 8 mm radius on a 4 mm network grid)
    assert _dice(ref_label == LIVER, np.isin(truth.array, [1, LESION])) > 0.8
    assert _dice(ref_label == LESION, truth.array == 2) > 0.8


def test_in_memory_volume_with_permuted_flipped_direction(thresholds, tmp_path):
    image, _ = phantom_ct(direction=[[0, 0, -1], [1, 0, 0], [0, -1, 0]], origin=(10.0, -20.0, 30.5))
    out = tmp_path / "perm.nii.gz"
    report = predict_case(image, out, organ_model=thresholds.organ, tumor_model=thresholds.tumor, config=FAST)
    assert_same_geometry(out, image)
    assert report.voxel_counts.get(LIVER, 0) > 0 and report.voxel_counts.get(LESION, 0) > 0
    assert report.input is None and report.output == str(out)


def test_models_with_different_spacings(tmp_path):
    """The tumour model on its own grid: merge and post-processing happen on the input's grid."""
    predictor = TwoStepPredictor(organ_thresholds(), tumor_thresholds(spacing=(3.0, 3.0, 2.5)), config=FAST)
    image, truth = phantom_ct(direction=np.diag([-1.0, -1.0, 1.0]))
    label, report = _arrays(predictor.segment(image))
    assert label.shape == image.shape
    assert _dice(label == LESION, truth.array == 2) > 0.8
    assert _dice(label == LIVER, np.isin(truth.array, [1, LESION])) > 0.8
    assert "restore" in report.timings and "postprocess" in report.timings


def test_fast_mode_resamples_the_tumour_grid_around_the_lesion_hosts_only(monkeypatch):
    """With its own spacing, the tumour model's grid is the part of its whole-body grid around the
    host organs (at least one patch), not the body, and finds exactly the lesion of the whole grid."""
    import flareseg.inference.pipeline as pipeline

    regions = []
    real = pipeline.preprocess_case

    def recording(volume, **kwargs):
        regions.append(kwargs.get("within"))
        return real(volume, **kwargs)

    monkeypatch.setattr(pipeline, "preprocess_case", recording)
    image, truth = phantom_ct(shape=(80, 72, 40), spacing=(1.5, 1.5, 3.0))
    tumor = tumor_thresholds(spacing=(3.0, 3.0, 2.5))
    tumor.config = dataclasses.replace(tumor.config, inference=dataclasses.replace(tumor.config.inference, patch_size=(16, 16, 16)))
    fast = TwoStepPredictor(organ_thresholds(), tumor, config=FAST).segment(image).label.array
    assert regions[0] is None and regions[1] is not None and len(regions) == 2
    region = np.array(regions[1])
    assert (region[:, 1] - region[:, 0] < np.array(image.shape)).any()  # smaller than the volume
    whole = TwoStepPredictor(organ_thresholds(), tumor, config=dataclasses.replace(FAST, roi=False)).segment(image).label.array
    assert regions[2:] == [None, None]
    np.testing.assert_array_equal(fast == LESION, whole == LESION)  # the same voxels of the same grid
    assert _dice(fast == LESION, truth.array == 2) > 0.8


def test_organ_model_only(tmp_path):
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    image, truth = phantom_ct()
    label, report = _arrays(predictor.segment(image))
    assert set(np.unique(label)) <= {0, LIVER, RIGHT_KIDNEY}
    assert "tumor" not in report.timings


def test_wrong_model_for_a_step_is_rejected():
    with pytest.raises(ConfigError, match="14 output channels"):
        TwoStepPredictor(tumor_thresholds(), None)
    with pytest.raises(ConfigError, match="2 output channels"):
        TwoStepPredictor(organ_thresholds(), organ_thresholds())


def test_missing_model_folder(tmp_path):
    from flareseg.errors import ModelFolderError

    with pytest.raises(ModelFolderError):
        TwoStepPredictor(tmp_path / "nope", None)


def test_unreadable_input_names_the_file(thresholds, tmp_path):
    bad = tmp_path / "x_0000.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="x_0000.nii.gz"):
        thresholds.predict(bad, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- modes
def test_mode_presets():
    fast, accurate, paper = (InferenceConfig.for_mode(m) for m in MODES)
    assert InferenceConfig() == fast
    assert fast.roi and fast.mirror == () and fast.step is None and fast.paper_slices is None  # None: each model's own step
    assert not accurate.roi and accurate.step == 0.5 and accurate.mirror is None and accurate.paper_slices is None  # None: each model's trained axes
    assert paper.paper_slices == 50 and not paper.roi and paper.postprocess == OFF
    assert InferenceConfig.for_mode("fast", step=1.0, postprocess={"fill_holes": True}).postprocess.fill_holes
    assert InferenceConfig.for_mode("accurate").to_dict()["mirror"] is None and paper.mirror is None
    assert InferenceConfig.for_mode("accurate", mirror=[0, 1]).to_dict()["mirror"] == [0, 1]


def test_fast_mode_tiles_each_model_at_its_own_step_and_an_explicit_step_overrides_both():
    image, _ = phantom_ct(shape=(60, 56, 40))  # 30 x 28 x 30 voxels at 4 mm
    organ = threshold_predictor("organ", {LIVER: 90.0, RIGHT_KIDNEY: 160.0}, inference=InferenceDefaults(patch_size=(8, 8, 8), step=0.5))
    tumor = threshold_predictor("tumor", {1: 130.0}, inference=InferenceDefaults(patch_size=(8, 8, 8), step=0.8))
    own = TwoStepPredictor(organ, tumor, config=InferenceConfig.for_mode("fast", roi=False)).segment(image)
    shape = own.report.network_shape
    assert own.report.tiles["organ"] == organ.count_tiles(shape, 0.5) > organ.count_tiles(shape, 0.8)
    assert own.report.tiles["tumor"] == tumor.count_tiles(shape, 0.8) < tumor.count_tiles(shape, 0.5)
    assert own.report.steps == {"organ": 0.5, "tumor": 0.8}
    forced = TwoStepPredictor(organ, tumor, config=InferenceConfig.for_mode("fast", roi=False, step=1.0)).segment(image)
    assert forced.report.tiles["organ"] == forced.report.tiles["tumor"] == organ.count_tiles(shape, 1.0)
    assert forced.report.steps == {"organ": 1.0, "tumor": 1.0}
    np.testing.assert_array_equal(own.label.array, forced.label.array)  # exact blending: the step changes no label


@pytest.mark.parametrize(
    "overrides,field",
    [({"step": 0}, "step"), ({"step": "0.5"}, "step"), ({"step": 1.2}, "step"), ({"mirror": (0, 3)}, "mirror"), ({"precision": "fp8"}, "precision"),
     ({"paper_slices": 0}, "paper_slices"), ({"roi_downsample": 0.5}, "roi_downsample"), ({"bogus": 1}, "bogus")],
)
def test_invalid_inference_settings(overrides, field):
    with pytest.raises(ConfigError, match=field):
        InferenceConfig.for_mode("fast", **overrides)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="mode"):
        InferenceConfig.for_mode("turbo")


@pytest.mark.parametrize("code", ["LPS", "SLA"])
def test_paper_mode_leaves_everything_outside_the_middle_slices_background(tmp_path, code):
    # The body (40 HU) spans every slice; the organ model calls everything above 20 HU liver.
    organ = threshold_predictor("organ", {LIVER: 20.0})
    predictor = TwoStepPredictor(organ, tumor_thresholds(), config=InferenceConfig.for_mode("paper"))
    lps, _ = phantom_ct(shape=(40, 36, 60), spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0))
    label, report = _arrays(predictor.segment(reoriented(lps, code)))
    label = reoriented(Volume(label, *_geometry(reoriented(lps, code))), "LPS").array
    # Network grid: 180 mm at 4 mm = 45 slices; 50 mm = round(12.5) = 12 slices, starting at (45 - 12) // 2.
    assert report.network_shape[2] == 45
    assert report.organ_box[2] == (16, 28) and report.tumor_box[2] == (16, 28)
    assert report.organ_box[:2] == ((0, report.network_shape[0]), (0, report.network_shape[1]))
    labelled = np.flatnonzero(label.any(axis=(0, 1)))
    assert labelled.size > 0
    # Slice k of the input (3 mm) lies at 1.5 + 3k mm of the 180 mm extent; the slab is [64, 112) mm.
    centres = 1.5 + 3.0 * np.arange(60)
    assert np.all((centres[labelled] > 64 - 3) & (centres[labelled] < 112 + 3))
    assert np.all(label[..., (centres < 64 - 3) | (centres > 112 + 3)] == 0)
    assert labelled.size >= 14  # ~48 mm of 3 mm slices
    assert (label[..., labelled] == LIVER).any()


def _geometry(volume: Volume):
    return volume.spacing, volume.origin, volume.direction


def test_fast_mode_restricts_the_models_to_the_organs(tmp_path):
    predictor = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=InferenceConfig.for_mode("fast"))
    image, truth = phantom_ct(shape=(80, 72, 60), spacing=(2.0, 2.0, 2.0))
    label, report = _arrays(predictor.segment(image))
    net = report.network_shape
    organ_box, tumor_box = report.organ_box, report.tumor_box
    # the organs' box + 20 mm lies inside the grid and is smaller than it; it holds the whole liver
    assert any(b - a < n for (a, b), n in zip(organ_box, net))
    assert report.tiles["organ"] < predictor.organ.count_tiles(net, predictor.config.step)
    assert tumor_box is not None and all(a >= c and b <= d for (a, b), (c, d) in zip(tumor_box, ((0, n) for n in net)))
    accurate = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=InferenceConfig.for_mode("accurate"))
    ref, _ = _arrays(accurate.segment(image))
    for value in (LIVER, LESION):
        assert _dice(label == value, ref == value) > 0.99
    assert _dice(label == LIVER, np.isin(truth.array, [1, LESION])) > 0.8


def test_tumour_model_skipped_without_host_organs():
    image, _ = phantom_ct()
    image = image.with_array(np.minimum(image.array, 60))  # no organ brighter than the body
    predictor = TwoStepPredictor(organ_thresholds(), tumor_thresholds(), config=FAST)
    label, report = _arrays(predictor.segment(image))
    assert not label.any()
    assert report.tumor_box is None and "tumor" not in report.tiles
    assert any("no organ" in n for n in report.notes) or any("lesion-host" in n for n in report.notes)


def test_tumor_in_organs_only(tmp_path):
    """A 100 HU blob far from the organs: the tumour model (> 95 HU) calls it lesion, the organ model
    (> 110 HU) calls it nothing; only the restriction to lesion-host organs drops it."""
    image, _ = phantom_ct(shape=(64, 40, 40))  # organ 1: centre (22.4, 19.5, 19.5), radius 9.6 voxels
    array = image.array.copy()
    array[8:16, 15:25, 0:7] = 100
    image = image.with_array(array)
    organ = threshold_predictor("organ", {LIVER: 110.0})
    tumor = threshold_predictor("tumor", {1: 95.0})
    settings = dict(roi=False, step=1.0)
    loose, _ = _arrays(TwoStepPredictor(organ, tumor, config=InferenceConfig.for_mode("fast", **settings)).segment(image))
    strict, _ = _arrays(TwoStepPredictor(organ, tumor, config=InferenceConfig.for_mode("fast", tumor_in_organs_only=True, **settings)).segment(image))
    assert (loose[10:14, 18:22, 1:5] == LESION).all()
    assert not (strict[8:16, 15:25, 0:7] == LESION).any()
    assert (strict == LESION).sum() > 0  # the lesions inside the 'liver' stay


# ---------------------------------------------------------------------------------------------- batch
def _write_inputs(folder: Path, names=("a_0000.nii.gz", "b_0000.nii.gz", "c.nii.gz")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image, _ = phantom_ct(shape=(30, 28, 20), seed=i)
        write_volume(Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), folder / name)


def _corrupt(path: Path) -> None:
    image, _ = phantom_ct(shape=(30, 28, 20))
    write_volume(image, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_case_names():
    assert case_name(Path("FLARE23_0001_0000.nii.gz")) == "FLARE23_0001"
    assert case_name(Path("scan.nii")) == "scan"
    assert case_name(Path("x_0001.nrrd")) == "x_0001"
    assert case_name(Path("_0000.nii.gz")) == "_0000"


def test_folder_batch_skips_finished_cases_and_reports_bad_ones(thresholds, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    _corrupt(inputs / "d_0000.nii.gz")
    (inputs / "notes.txt").write_text("not an image")
    batch = run_folder(thresholds, inputs, outputs, progress=False)
    assert sorted(r.case for r in batch.predicted) == ["a", "b", "c"]
    assert list(batch.failed) == ["d"] and "d_0000.nii.gz" in batch.failed["d"]
    assert not batch.ok and "FAILED d" in batch.summary()
    assert _listing(outputs) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    for name in ("a", "b", "c"):
        src = next(inputs.glob(f"{name}*.nii.gz"))
        assert_same_geometry(outputs / f"{name}.nii.gz", read_image(src))

    mtime = (outputs / "a.nii.gz").stat().st_mtime_ns
    again = run_folder(thresholds, inputs, outputs, progress=False)
    assert again.skipped == ["a", "b", "c"] and not again.predicted and list(again.failed) == ["d"]
    assert (outputs / "a.nii.gz").stat().st_mtime_ns == mtime

    redo = run_folder(thresholds, inputs, outputs, overwrite=True, progress=False)
    assert sorted(r.case for r in redo.predicted) == ["a", "b", "c"] and not redo.skipped
    assert (outputs / "a.nii.gz").stat().st_mtime_ns != mtime


def test_failure_while_writing_leaves_no_partial_file(thresholds, tmp_path, monkeypatch):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    real_write = fio.sitk.WriteImage

    def flaky_write(image, path, *args, **kwargs):
        if Path(path).name.startswith(".b.nii.gz"):
            Path(path).write_bytes(b"\x1f\x8b half a file")
            raise RuntimeError("disk full (simulated)")
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(fio.sitk, "WriteImage", flaky_write)
    batch = run_folder(thresholds, inputs, outputs, progress=False)
    assert list(batch.failed) == ["b"] and "disk full" in batch.failed["b"]
    assert _listing(outputs) == ["a.nii.gz", "c.nii.gz"]  # no b.nii.gz, no temporary file


def _arrays(segmentation):
    """(label array, report) of a Segmentation."""
    return segmentation.label.array, segmentation.report


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_resume_after_interruption(thresholds, tmp_path, monkeypatch):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    real_predict = thresholds.predict

    def interrupted(image, output_path, **kwargs):
        if kwargs.get("case") == "b":
            raise KeyboardInterrupt
        return real_predict(image, output_path, **kwargs)

    monkeypatch.setattr(thresholds, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_folder(thresholds, inputs, outputs, progress=False)
    assert _listing(outputs) == ["a.nii.gz"]
    monkeypatch.undo()
    # a stale temporary file of a killed write is cleaned up when the case is redone
    dead = _dead_pid()
    (outputs / f".b.nii.gz.{dead}-abcdef12.tmp.nii.gz").write_bytes(b"partial")
    batch = run_folder(thresholds, inputs, outputs, progress=False)
    assert batch.skipped == ["a"] and sorted(r.case for r in batch.predicted) == ["b", "c"]
    assert _listing(outputs) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]


def test_clashing_output_names_are_reported(thresholds, tmp_path):
    inputs = tmp_path / "in"
    _write_inputs(inputs, ("a_0000.nii.gz", "a.nii.gz"))
    batch = run_folder(thresholds, inputs, tmp_path / "out", progress=False)
    assert len(batch.predicted) == 1 and len(batch.failed) == 1 and "clashes" in next(iter(batch.failed.values()))


def test_empty_or_missing_input_folder(thresholds, tmp_path):
    with pytest.raises(InputError, match="not found"):
        run_folder(thresholds, tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        find_cases(tmp_path / "empty")
    _write_inputs(tmp_path / "in", ("a_0000.nii.gz",))
    with pytest.raises(InputError, match="must differ"):
        run_folder(thresholds, tmp_path / "in", tmp_path / "in", progress=False)


def test_further_channels_are_skipped_and_dangling_links_fail_by_name(thresholds, tmp_path, caplog):
    _write_inputs(tmp_path / "in", ("a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz"))
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "in" / "c_0000.nii.gz")
    with caplog.at_level("WARNING", logger="flareseg.io.layout"):
        cases = find_cases(tmp_path / "in")
    # b_0001 has no b_0000: a case of its own name, as before
    assert [c.name for c in cases] == ["a", "b_0001", "c"]
    assert "skipped 1 further input channel(s)" in caplog.text and "a_0001.nii.gz" in caplog.text
    assert "1 link(s) to missing files" in caplog.text
    batch = run_folder(thresholds, tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(r.case for r in batch.predicted) == ["a", "b_0001"]
    assert list(batch.failed) == ["c"] and "c_0000.nii.gz" in batch.failed["c"]


@pytest.mark.real
def test_dicom_series_folder_is_one_case(real_data, thresholds, tmp_path):
    series = real_data / "totalsegmentator_dicom" / "dicom"
    cases = find_cases(series)
    assert [(c.name, c.path) for c in cases] == [("dicom", series)]
    batch = predict_folder(series, tmp_path / "out", organ_model=thresholds.organ, tumor_model=thresholds.tumor, config=FAST, progress=False)
    assert batch.ok and [r.case for r in batch.predicted] == ["dicom"]
    assert_same_geometry(tmp_path / "out" / "dicom.nii.gz", read_image(series))
    # a folder holding a series folder and a NIfTI: two cases
    mixed = tmp_path / "mixed"
    _write_inputs(mixed, ("p_0000.nii.gz",))
    os.symlink(series, mixed / "series1")
    assert [c.name for c in find_cases(mixed)] == ["p", "series1"]


def test_progress_bars_do_not_break_anything(thresholds, tmp_path, capsys):
    inputs = tmp_path / "in"
    _write_inputs(inputs, ("a_0000.nii.gz",))
    batch = run_folder(thresholds, inputs, tmp_path / "out", progress=True)
    assert batch.ok and len(batch.predicted) == 1


# ---------------------------------------------------------------------------------------------- regions
def test_bounding_boxes():
    mask = np.zeros((10, 12, 14), bool)
    assert bounding_box(mask) is None
    mask[2:5, 3, 7:9] = True
    assert bounding_box(mask) == ((2, 5), (3, 4), (7, 9))
    label = np.zeros((10, 12, 14), np.uint8)
    label[1, 1, 1] = 3
    label[8, 9, 10] = 5
    assert label_box(label, [5]) == ((8, 9), (9, 10), (10, 11))
    assert label_box(label) == ((1, 9), (1, 10), (1, 11))
    assert label_box(label, [7]) is None


def test_box_arithmetic():
    shape = (20, 20, 20)
    assert expand_box(((5, 10), (0, 3), (18, 20)), (2, 2, 2), shape) == ((3, 12), (0, 5), (16, 20))
    assert margin_voxels(10.0, (2.5, 3.0, 4.0)) == (4, 4, 3)
    assert ensure_min_size(((5, 10), (0, 3), (15, 20)), (8, 8, 30), shape) == ((4, 12), (0, 8), (0, 20))
    assert intersect(((0, 10), (0, 10), (0, 10)), ((5, 15), (10, 20), (2, 3))) == ((5, 10), (10, 10), (2, 3))
    assert is_empty(((5, 10), (10, 10), (2, 3)))
    assert scale_box(((1, 3), (0, 5), (2, 4)), (5, 5, 5), (10, 10, 9)) == ((2, 6), (0, 10), (3, 8))


def test_map_box_between_grids_covers_the_same_region():
    direction = tuple(np.eye(3).ravel())
    fine = Grid((100, 80, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    coarse = Grid((40, 32, 24), (2.5, 2.5, 2.5), (0.75, 0.75, 0.75), direction)
    box = ((10, 30), (0, 80), (25, 26))
    mapped = map_box(box, fine, coarse)
    # fine voxels 10..29 span [9.5, 29.5) mm; coarse voxel j spans [2.5 j - 0.5, 2.5 j + 2) mm
    assert mapped[0] == (4, 12) and mapped[1] == (0, 32) and mapped[2] == (10, 11)
    assert map_box(box, fine, fine) == box
    with pytest.raises(GeometryError):
        map_box(box, fine, Grid(fine.shape, fine.spacing, fine.origin, tuple(np.diag([-1.0, 1, 1]).ravel())))


def test_paper_slab():
    assert slices_for_extent(50, 1.0) == 50
    assert slices_for_extent(50, 2.5) == 20
    assert slices_for_extent(50, 400) == 1
    assert middle_slab((10, 10, 100), 50) == ((0, 10), (0, 10), (25, 75))
    assert middle_slab((10, 10, 51), 50) == ((0, 10), (0, 10), (0, 50))
    assert middle_slab((10, 10, 30), 50) == ((0, 10), (0, 10), (0, 30))
    with pytest.raises(ConfigError):
        middle_slab((10, 10, 30), 0)


def test_empty_or_truncated_outputs_are_redone(thresholds, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    first = run_folder(thresholds, inputs, outputs, progress=False)
    assert not first.failed
    whole = (outputs / "b.nii.gz").read_bytes()
    (outputs / "a.nii.gz").write_bytes(b"")
    (outputs / "b.nii.gz").write_bytes(whole[: len(whole) // 2])
    again = run_folder(thresholds, inputs, outputs, progress=False)
    assert sorted(r.case for r in again.predicted) == ["a", "b"] and again.skipped == ["c"]
    assert (outputs / "b.nii.gz").read_bytes() == whole


def test_a_case_locked_by_another_run_is_left_to_it(thresholds, tmp_path):
    import fcntl

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _write_inputs(inputs)
    outputs.mkdir()
    with open(outputs / ".b.lock", "w") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        batch = run_folder(thresholds, inputs, outputs, progress=False)
    assert sorted(r.case for r in batch.predicted) == ["a", "c"] and batch.skipped == ["b"]
    assert not (outputs / "b.nii.gz").exists()


def test_parts_split_the_cases_disjointly_by_name(thresholds, tmp_path):
    from flareseg.inference.folder import in_part, parse_part

    names = [f"case_{i:03d}" for i in range(200)]
    shards = [[n for n in names if in_part(n, (i, 4))] for i in range(4)]
    assert sorted(sum(shards, [])) == names and all(20 < len(s) < 80 for s in shards)
    assert [n for n in names[:50] if in_part(n, (1, 4))] == [n for n in shards[1] if n in names[:50]]  # adding cases moves none
    with pytest.raises(ConfigError):
        parse_part("4/4")
    inputs = tmp_path / "in"
    _write_inputs(inputs)
    done = set()
    for i in range(2):
        batch = run_folder(thresholds, inputs, tmp_path / "out", progress=False, part=(i, 2))
        done |= {r.case for r in batch.predicted}
    assert done == {"a", "b", "c"}


def test_fast_mode_widens_a_region_of_interest_that_cuts_an_organ(monkeypatch):
    """A coarse pass that finds only part of the liver must not cut the liver of the fine pass."""
    image, _ = phantom_ct(shape=(60, 56, 48))
    whole = TwoStepPredictor(organ_thresholds(), None, config=dataclasses.replace(FAST, roi=False))
    reference, _ = _arrays(whole.segment(image))
    fast = TwoStepPredictor(organ_thresholds(), None, config=dataclasses.replace(FAST, roi_margin_mm=8.0))

    def too_small(self, image, slab, flip, report, progress):
        (a, b), (c, d), (e, f) = label_box(reference_net, [LIVER])
        return ((a + 2, a + 6), (c + 2, c + 6), (e + 2, e + 6))  # a box inside the liver

    reference_net = fast.organ.predict_labels(fast._preprocess(image).organ_image, step=1.0)
    monkeypatch.setattr(TwoStepPredictor, "_locate_organs", too_small)
    label, report = _arrays(fast.segment(image))
    assert any("widened" in note for note in report.notes)
    assert (label == LIVER).sum() == (reference == LIVER).sum() > 0


def test_a_region_of_interest_that_costs_the_whole_grids_tiles_is_the_whole_grid(monkeypatch):
    """A box one voxel short of the grid needs as many tiles as the grid itself: the fine pass then runs
    the whole grid (tiled as `accurate` tiles it, the same labels) instead of a shifted tiling of the box."""
    image, _ = phantom_ct(shape=(80, 72, 60), spacing=(2.0, 2.0, 2.0))
    fast = TwoStepPredictor(organ_thresholds(), None, config=InferenceConfig.for_mode("fast"))
    shape = fast._preprocess(image).organ_image.shape
    monkeypatch.setattr(TwoStepPredictor, "_locate_organs", lambda self, image, slab, flip, report, progress: ((1, shape[0]), (0, shape[1]), (0, shape[2])))
    assert fast.organ.count_tiles((shape[0] - 1, shape[1], shape[2]), None) == fast.organ.count_tiles(shape, None) > 1
    label, report = _arrays(fast.segment(image))
    assert report.organ_box == ((0, shape[0]), (0, shape[1]), (0, shape[2]))
    assert report.tiles["organ"] == fast.organ.count_tiles(shape, None) and not any("widened" in note for note in report.notes)
    whole, _ = _arrays(TwoStepPredictor(organ_thresholds(), None, config=InferenceConfig.for_mode("fast", roi=False)).segment(image))
    np.testing.assert_array_equal(label, whole)


def test_grow_where_touching_moves_only_the_touched_faces_inside_the_limit():
    from flareseg.transforms.roi import grow_where_touching

    box, limit = ((10, 20), (10, 20), (0, 30)), ((0, 100), (0, 100), (0, 30))
    assert grow_where_touching(box, ((12, 18), (12, 18), (5, 25)), (3, 3, 3), limit) == box  # nothing touches
    assert grow_where_touching(box, None, (3, 3, 3), limit) == box
    grown = grow_where_touching(box, ((10, 18), (12, 20), (0, 30)), (3, 3, 3), limit)
    assert grown == ((0, 20), (10, 30), (0, 30))  # by the box's extent (10 > margin 3); K lies on the limit
    assert grow_where_touching(((0, 100), (5, 9), (0, 30)), ((0, 100), (5, 9), (0, 30)), (20, 20, 20), limit) == ((0, 100), (0, 29), (0, 30))


@pytest.mark.parametrize("step", [0.0, 0.01, float("nan"), 1.5])
def test_a_step_that_would_hang_or_make_no_sense_is_refused(step):
    with pytest.raises(ConfigError, match="inference.step"):
        InferenceConfig.for_mode("fast", step=step)


def test_a_silent_short_write_is_not_published(thresholds, tmp_path, monkeypatch):
    """SimpleITK does not raise on a short write (a full disk): the read-back must catch it."""
    image, _ = phantom_ct()
    real_write = fio.sitk.WriteImage

    def short_write(img, path, *args, **kwargs):
        real_write(img, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 3])  # what a full disk leaves, without an error

    monkeypatch.setattr(fio.sitk, "WriteImage", short_write)
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(OSError, match="disk full"):
        thresholds.predict(image, out)
    assert list(tmp_path.iterdir()) == []


def test_a_scan_of_a_few_slices_is_segmented_with_a_warning_and_a_whole_one_without(caplog):
    image, _ = phantom_ct(shape=(40, 36, 30))  # 30 slices of 3 mm: 90 mm
    thin = Volume(image.array[:, :, 14:16].copy(), image.spacing, image.origin, image.direction)  # 6 mm
    predictor = TwoStepPredictor(organ_thresholds(), None, config=FAST)
    result = predictor.segment(thin)
    assert result.label.array.shape == thin.shape
    assert any("covers only 6 mm along the axial axis (2 slice(s))" in note for note in result.report.notes)
    assert "covers only 6 mm" in caplog.text
    assert not any("covers only" in note for note in predictor.segment(image).report.notes)
