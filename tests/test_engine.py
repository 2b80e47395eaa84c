"""CPU inference engines: the networks' ONNX export run by ONNX Runtime or OpenVINO, its cache, the fallback."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import flareseg.model.engine as engine_module
from flareseg.cli import main
from flareseg.config import get_preset
from flareseg.errors import ConfigError, ModelFolderError
from flareseg.inference import InferenceConfig, TwoStepPredictor
from flareseg.io import read_label, write_volume
from flareseg.model.engine import GRAPH_DIR, ONNX_ENGINES, check_engine, onnx_runner
from flareseg.model.folder import WEIGHTS_FILE, save_tensors
from flareseg.model.network import build_network
from flareseg.model.predictor import ModelPredictor
from flareseg.model.sliding_window import sliding_window_logits

from conftest import phantom_ct
from test_pipeline import write_random_model

PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """One torch thread (tiny networks on a busy machine), and a user cache inside the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=ONNX_ENGINES)
def engine(request):
    pytest.importorskip(PACKAGES[request.param])
    pytest.importorskip("onnx")  # torch's exporter needs it (the engines' extras install it)
    return request.param


@pytest.fixture
def models(tmp_path):
    return write_random_model(tmp_path / "organ", "organ", 0), write_random_model(tmp_path / "tumor", "tumor", 1)


@pytest.fixture(scope="module")
def ct():
    image, _ = phantom_ct(shape=(48, 44, 36))
    return image


def _assert_labels_agree(got: np.ndarray, reference: np.ndarray) -> None:
    """End to end on random-weight models: equal but for near-tied voxels (< 0.5%; a model that ran
    another network, or on another grid, disagrees on most of the volume)."""
    assert got.shape == reference.shape
    assert np.mean(got == reference) > 0.995


def _graphs(folder: Path) -> list[Path]:
    return sorted((folder / GRAPH_DIR).glob("*.onnx")) if (folder / GRAPH_DIR).is_dir() else []


# ------------------------------------------------------------------------------------------ agreement
def test_onnx_engine_tiles_match_torch_logits(models, engine):
    """Per tile, batch of 2 (the batch axis is dynamic), with mirroring: the engine's logits are torch's to float32 rounding."""
    model = ModelPredictor.from_folder(models[0])
    tiles = torch.randn((2, 1, *model.patch_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.tile_predictor(mirror=(0, 1))(tiles)
        got = model.tile_predictor(mirror=(0, 1), engine=engine)(tiles)
    assert got.shape == reference.shape and got.dtype == torch.float32
    assert torch.allclose(got, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))


def test_onnx_engine_labels_equal_the_torch_engines(models, engine):
    """Sliding window with overlapping tiles, Gaussian blending and mirroring: the engine's labels are torch's.

    The tiny model has random weights, so some voxels are near-ties between two channels (top-two
    logits closer than float32 noise of two convolution libraries); labels must be equal everywhere
    else, and such ties must be rare. (The demo's trained models agree with Dice >= 0.999 per organ:
    scripts/bench_engines.py, docs/efficiency.md.)
    """
    model = ModelPredictor.from_folder(models[0])
    # two overlapping tiles along I (48^3 patch, step 0.5), each mirrored along I: 4 network calls per engine
    image = model.normalize(phantom_ct(shape=(72, 48, 48), spacing=(1.0, 1.0, 1.0))[0].array.astype(np.float32))
    logits = {}
    for name in ("torch", engine):
        predict = model.tile_predictor(mirror=(0,), engine=name)
        logits[name] = sliding_window_logits(image, predict, patch_size=model.patch_size, step=0.5, pad_value=model.pad_value)
    reference, got = logits["torch"], logits[engine]
    scale = float(reference.abs().max())
    assert torch.allclose(got, reference, rtol=1e-3, atol=1e-3 * scale)  # OpenVINO differs more than ONNX Runtime (3e-3 absolute on a demo-model tile)
    top2 = reference.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 2e-3 * scale
    assert decided.float().mean() > 0.9
    assert torch.equal(got.argmax(0)[decided], reference.argmax(0)[decided])


def test_nnunet_folder_runs_on_an_onnx_engine(tmp_path, engine):
    """An nnU-Net v2 folder (axis permutation, anisotropic kernels) exports too, cached in its own folder."""
    pytest.importorskip("dynamic_network_architectures")
    from test_nnunet import write_nnunet_folder

    root, _ = write_nnunet_folder(tmp_path / "Dataset023_FLARE" / "nnUNetTrainer__nnUNetPlans__3d_fullres", transpose=(2, 0, 1))
    model = ModelPredictor.from_folder(root)
    tiles = torch.randn((1, 1, *model.patch_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.tile_predictor()(tiles)
        got = model.tile_predictor(engine=engine)(tiles)
    assert torch.allclose(got, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))
    assert len(_graphs(root)) == 1


# ------------------------------------------------------------------------------------------ the cache
def test_the_graph_is_cached_in_the_model_folder_and_reused(models, ct, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    config = InferenceConfig.for_mode("fast", engine="onnxruntime")
    first = TwoStepPredictor(*models, config=config).segment(ct).label.array
    for folder in models:
        (graph,) = _graphs(folder)
        manifest = json.loads(graph.with_suffix(".json").read_text())
        assert manifest["graph_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
        assert graph.stem == manifest["key"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cached graph is valid")

    monkeypatch.setattr(engine_module, "export_onnx", no_export)
    again = TwoStepPredictor(*models, config=config).segment(ct).label.array
    np.testing.assert_array_equal(again, first)


def test_changed_weights_are_exported_again(models):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    organ = models[0]
    ModelPredictor.from_folder(organ).engine_runner("onnxruntime")
    (old,) = _graphs(organ)
    torch.manual_seed(7)
    save_tensors(build_network(get_preset("tiny", "organ").network).state_dict(), organ / WEIGHTS_FILE)
    model = ModelPredictor.from_folder(organ)
    model.engine_runner("onnxruntime")
    (new,) = _graphs(organ)  # the graph of the old weights is gone
    assert new != old and new.stem == model.graph_key((1, *model.patch_size))
    assert not old.with_suffix(".json").exists()


def test_a_corrupt_cached_graph_is_exported_again(models, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    organ = models[0]
    ModelPredictor.from_folder(organ).engine_runner("onnxruntime")
    (graph,) = _graphs(organ)
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 2])  # truncated, e.g. a copy that was cut short
    with caplog.at_level(logging.WARNING, logger="flareseg"):
        runner = ModelPredictor.from_folder(organ).engine_runner("onnxruntime")
    assert "does not match its manifest" in caplog.text and str(graph) in caplog.text
    assert graph.read_bytes() == good  # the tracing exporter is deterministic
    assert runner(torch.zeros((1, 1, 48, 48, 48))).shape == (1, 14, 48, 48, 48)


def test_a_graph_the_engine_cannot_load_is_refused_naming_the_file(models, engine):
    organ = models[0]
    model = ModelPredictor.from_folder(organ)
    key = model.graph_key((1, *model.patch_size))
    junk = b"not an onnx graph"
    engine_module._write(organ / GRAPH_DIR, key, junk, (1, *model.patch_size), organ)  # a manifest that matches the junk
    with pytest.raises(ModelFolderError, match=f"{key}.onnx: {engine} cannot load it"):
        model.engine_runner(engine)


def _read_only(monkeypatch, *folders: Path) -> None:
    """Make `folders` unwritable: chmod, and, for root (whom chmod does not stop), a writer that fails as a read-only folder does."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
    real = engine_module.atomic_write_bytes

    def refuse(path, data):
        if any(Path(path).is_relative_to(f) for f in folders):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, data)

    monkeypatch.setattr(engine_module, "atomic_write_bytes", refuse)


def test_an_unwritable_model_folder_caches_in_the_user_cache(models, ct, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _read_only(monkeypatch, *models)
    try:
        reference = TwoStepPredictor(*models, config=InferenceConfig.for_mode("fast")).segment(ct).label.array
        got = TwoStepPredictor(*models, config=InferenceConfig.for_mode("fast", engine="onnxruntime")).segment(ct).label.array
    finally:
        for folder in models:
            folder.chmod(0o755)
    _assert_labels_agree(got, reference)
    assert not any(_graphs(folder) for folder in models)
    assert len(list((tmp_path / "user_cache" / "flareseg" / GRAPH_DIR).glob("*.onnx"))) == 2


def test_without_any_writable_cache_the_graph_stays_in_memory(models, tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _read_only(monkeypatch, models[0], tmp_path / "user_cache")
    try:
        with caplog.at_level(logging.WARNING, logger="flareseg"):
            runner = ModelPredictor.from_folder(models[0]).engine_runner("onnxruntime")
    finally:
        models[0].chmod(0o755)
        (tmp_path / "user_cache").chmod(0o755)
    assert "no writable cache for the ONNX graph" in caplog.text
    assert runner(torch.zeros((1, 1, 48, 48, 48))).shape == (1, 14, 48, 48, 48)


# ------------------------------------------------------------------------------------------ fallback, settings, CLI
@pytest.mark.parametrize("missing", ["openvino", "onnx"])
def test_a_missing_engine_falls_back_to_torch_with_one_warning(models, ct, monkeypatch, caplog, missing):
    """Without the engine's runtime, or without the exporter's package (onnx), the networks run on torch."""
    real_import = engine_module.importlib.import_module

    def without_openvino(name, *args):
        if name == missing:
            raise ImportError(f"No module named '{missing}'")
        return real_import(name, *args)

    monkeypatch.setattr(engine_module.importlib, "import_module", without_openvino)
    with caplog.at_level(logging.WARNING, logger="flareseg"):
        predictor = TwoStepPredictor(*models, config=InferenceConfig.for_mode("fast", engine="openvino"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "engine openvino is not available" in warnings[0].getMessage() and "flareseg[openvino]" in warnings[0].getMessage()
    label, report = predictor.segment(ct)
    assert predictor.engine == report.engine == "torch"
    reference = TwoStepPredictor(*models, config=InferenceConfig.for_mode("fast")).segment(ct).label.array
    np.testing.assert_array_equal(label.array, reference)
    assert not any(_graphs(folder) for folder in models)


def test_engine_settings_are_checked():
    with pytest.raises(ConfigError, match="inference.engine must be one of auto, torch, onnxruntime, openvino; got 'tensorrt'"):
        InferenceConfig.for_mode("fast", engine="tensorrt")
    with pytest.raises(ConfigError, match="'fp16' needs engine torch: onnxruntime runs float32 only"):
        InferenceConfig.for_mode("fast", engine="onnxruntime", precision="fp16")
    check_engine("openvino", "fp32")
    with pytest.raises(ConfigError, match="runs on the CPU; got device cuda"):
        onnx_runner("onnxruntime", torch.nn.Identity, key=None, tile_shape=(1, 8, 8, 8), folder=None, device=torch.device("cuda"))


def test_auto_runs_openvino_on_the_cpu_in_float32_and_torch_elsewhere(models, monkeypatch):
    """The default engine: OpenVINO where it can run (CPU, fp32, installed), torch otherwise; $FLARESEG_ENGINE names another."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(engine_module.ENGINE_ENV, raising=False)
    installed = engine_module._import_error("openvino") is None
    assert engine_module.resolve_engine("auto", cpu) == ("openvino" if installed else "torch")
    assert engine_module.resolve_engine("auto", cpu, "fp16") == "torch"
    assert engine_module.resolve_engine("auto", gpu) == "torch"
    assert engine_module.resolve_engine("torch", cpu) == "torch"
    monkeypatch.setattr(engine_module, "_import_error", lambda engine: ImportError("No module named 'openvino'"))
    assert engine_module.resolve_engine("auto", cpu) == "torch"
    monkeypatch.setenv(engine_module.ENGINE_ENV, "torch")
    assert engine_module.resolve_engine("auto", cpu) == "torch"
    for bad in ("auto", "tensorrt"):
        monkeypatch.setenv(engine_module.ENGINE_ENV, bad)
        with pytest.raises(ConfigError, match=f"FLARESEG_ENGINE must be one of torch, onnxruntime, openvino; got '{bad}'"):
            engine_module.resolve_engine("auto", cpu)


def test_the_default_engine_is_openvino_where_installed(models, ct, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    monkeypatch.delenv(engine_module.ENGINE_ENV, raising=False)
    predictor = TwoStepPredictor(*models)
    assert predictor.config.engine == "auto" and predictor.engine == "openvino"
    assert predictor.segment(ct).report.engine == "openvino"
    assert all(_graphs(folder) for folder in models)


def test_cli_predict_with_engine(models, ct, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    image = write_volume(ct, tmp_path / "ct_0000.nii.gz")
    outputs = {}
    for name in ("torch", "onnxruntime"):
        outputs[name] = tmp_path / f"seg_{name}.nii.gz"
        code = main(["-q", "predict", "-i", str(image), "-o", str(outputs[name]), "--organ-model", str(models[0]),
                     "--tumor-model", str(models[1]), "--engine", name])
        assert code == 0
    _assert_labels_agree(read_label(outputs["onnxruntime"]).array, read_label(outputs["torch"]).array)
    with pytest.raises(SystemExit) as exc:
        main(["predict", "-i", str(image), "-o", str(tmp_path / "x.nii.gz"), "--organ-model", str(models[0]), "--engine", "tensorrt"])
    assert exc.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_a_predictor_of_weights_in_training_exports_without_caching(models, tmp_path, engine):
    """Validation during training runs the network on an ONNX engine from a graph exported for it
    alone (cache_graphs=False): the tiles are torch's, and no graph file is left in any cache."""
    trained = ModelPredictor.from_folder(models[0])
    model = ModelPredictor(trained.config, trained.network, cache_graphs=False)
    tiles = torch.randn((1, 1, *model.patch_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, got = model.tile_predictor()(tiles), model.tile_predictor(engine=engine)(tiles)
    assert torch.allclose(got, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))
    assert not list((tmp_path / "user_cache").rglob("*.onnx")) and not _graphs(models[0])


def test_a_cached_graph_runs_without_building_the_network(models, ct, monkeypatch):
    """Once a folder's graph is cached, loading the model on an ONNX engine builds no torch network
    (so a prediction's process need not import MONAI), and the labels are the same."""
    pytest.importorskip("openvino")
    first = TwoStepPredictor(models[0], config=InferenceConfig.for_mode("fast", engine="openvino")).segment(ct).label.array
    import flareseg.model.folder as folder_module

    def no_network(*args, **kwargs):
        raise AssertionError("the network was built although its graph is cached")

    monkeypatch.setattr(folder_module, "build_network", no_network)
    predictor = TwoStepPredictor(models[0], config=InferenceConfig.for_mode("fast", engine="openvino"))
    np.testing.assert_array_equal(predictor.segment(ct).label.array, first)
    assert predictor.organ._network is None
