"""The network presets and the self-describing model folder (flareseg.model.folder)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flareseg.config import PRESETS, Fingerprint, InferenceDefaults, get_preset
from flareseg.errors import ModelFolderError
from flareseg.model.folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    channel_labels_for,
    load_model,
    read_model_config,
    save_tensors,
    write_model_config,
)
from flareseg.model.network import build_network, count_parameters
from flareseg.model.predictor import ModelPredictor

PAPER_PARAMS_ORGAN = 31_419_406
"""DESIGN section 4: the paper's '31.42M' network (MONAI DynUNet with residual blocks, 14 outputs)."""
PAPER_PARAMS_TUMOR = PAPER_PARAMS_ORGAN - 12 * (32 + 1)
"""Two outputs instead of 14: the final 1x1x1 convolution (32 inputs + bias) loses 12 output channels."""


def _model_config(task: str = "organ", preset: str = "tiny") -> ModelConfig:
    p = get_preset(preset, task)
    return ModelConfig(
        task=task,
        preset=preset,
        network=p.network,
        preprocess=p.preprocess,
        fingerprint=Fingerprint(-100.0, 300.0, 80.0, 60.0),
        train=p.train,
        channel_labels=channel_labels_for(task),
        data={"n_train": 3, "train_cases": ["a", "b", "c"]},
        versions={"torch": torch.__version__},
    )


@pytest.mark.parametrize(("task", "expected"), [("organ", PAPER_PARAMS_ORGAN), ("tumor", PAPER_PARAMS_TUMOR)])
def test_paper_network_has_the_papers_parameter_count(task, expected):
    network = build_network(get_preset("paper", task).network)
    assert count_parameters(network) == expected


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("task", ["organ", "tumor"])
def test_each_preset_maps_a_patch_to_logits_of_the_same_size(preset, task):
    cfg = get_preset(preset, task).network
    size = 2 * cfg.divisor  # the smallest input whose bottleneck has more than one voxel
    network = build_network(cfg).eval()
    with torch.no_grad():
        out = network(torch.zeros(1, 1, size, size, size))
    assert out.shape == (1, 14 if task == "organ" else 2, size, size, size)


def test_deep_supervision_stacks_heads_in_training_only():
    cfg = dataclasses.replace(get_preset("tiny").network, deep_supervision=True)
    network = build_network(cfg)
    x = torch.zeros(1, 1, 32, 32, 32)
    assert network.train()(x).shape[:3] == (1, 3, 14)
    with torch.no_grad():
        assert network.eval()(x).shape == (1, 14, 32, 32, 32)


def test_model_folder_round_trip(tmp_path):
    cfg = _model_config("tumor")
    network = build_network(cfg.network).eval()
    write_model_config(tmp_path, cfg)
    save_tensors(network.state_dict(), tmp_path / WEIGHTS_FILE)
    loaded_cfg, loaded = load_model(tmp_path)
    assert loaded_cfg == cfg
    assert not loaded.training
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x))


def test_config_json_is_plain_json_with_the_schema(tmp_path):
    cfg = _model_config()
    write_model_config(tmp_path, cfg)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert data["channel_labels"] == list(range(14))
    assert data["network"]["filters"] == list(cfg.network.filters)
    assert read_model_config(tmp_path) == cfg


def test_missing_folder_or_config_is_a_model_folder_error(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        read_model_config(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match="no config.json"):
        read_model_config(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="is a file, not a model folder"):
        read_model_config(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "{not json", "invalid JSON"),
        (lambda d: {**d, "format_version": 99}, "format_version"),
        (lambda d: {k: v for k, v in d.items() if k != "fingerprint"}, "fingerprint"),
        (lambda d: {**d, "network": {**d["network"], "filterz": [1]}}, "filterz"),
        (lambda d: {**d, "channel_labels": [0, 14]}, "channel_labels"),
        (lambda d: {**d, "fingerprint": {**d["fingerprint"], "std": 0}}, "std"),
        (lambda d: [d], "expected an object"),
        (lambda d: json.dumps(d).replace('"mean": ', '"mean": NaN, "unused": ', 1), "NaN"),
        (lambda d: {**d, "network": {**d["network"], "filters": [10**6] * len(d["network"]["filters"])}}, "network.filters"),
        (lambda d: {**d, "network": {**d["network"], "filters": "wide"}}, "network.filters"),
        (lambda d: {**d, "network": {**d["network"], "strides": [1] + [-2] * (len(d["network"]["strides"]) - 1)}}, "network.strides"),
        (lambda d: {**d, "network": {**d["network"], "kernel_size": 4}}, "kernel_size must be odd"),
        (lambda d: {**d, "network": {**d["network"], "res_block": "yes"}}, "network.res_block"),
        (lambda d: {**d, "preprocess": {**d["preprocess"], "target_spacing": [1e-9, 1e-9, 1e-9]}}, "target_spacing"),
        (lambda d: {**d, "task": 3}, "task must be"),
        (lambda d: {**d, "train": "fast"}, "TrainConfig"),
        (lambda d: {**d, "inference": {"patch_size": [10**5] * 3, "mirror_axes": [], "pad_value": 0}}, "inference.patch_size"),
        (lambda d: {**d, "inference": {**d["inference"], "pad_value": 1e308}}, "inference.pad_value"),
        (lambda d: {**d, "channel_labels": list(range(13)) + [99]}, r"channel_labels of the organ model must be \[0, 1,"),
        (lambda d: {**d, "fingerprint": {**d["fingerprint"], "std": 1e-300}}, "fingerprint.std"),
        (lambda d: {**d, "fingerprint": {**d["fingerprint"], "mean": 1e300}}, "fingerprint.mean"),
    ],
)
def test_corrupt_config_is_a_model_folder_error(tmp_path, mutate, message):
    """Each malformed config.json is one ModelFolderError naming the field, when the folder is read."""
    write_model_config(tmp_path, _model_config())
    data = mutate(json.loads((tmp_path / CONFIG_FILE).read_text()))
    (tmp_path / CONFIG_FILE).write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ModelFolderError, match=message):
        read_model_config(tmp_path)


def test_missing_or_mismatched_weights_are_model_folder_errors(tmp_path):
    cfg = _model_config()
    write_model_config(tmp_path, cfg)
    with pytest.raises(ModelFolderError, match="no weights"):
        load_model(tmp_path)
    other = build_network(dataclasses.replace(cfg.network, filters=(4, 8, 16, 32)))
    save_tensors(other.state_dict(), tmp_path / WEIGHTS_FILE)
    with pytest.raises(ModelFolderError, match=r"do not fit the network in config.json: size mismatch for \S+: copying a param with shape"):
        load_model(tmp_path)  # the first mismatch is named, not only torch's bare "Error(s) in loading state_dict" header
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFolderError):
        load_model(tmp_path)
    state = build_network(cfg.network).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("inf"))
    save_tensors(state, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ModelFolderError, match=f"tensor {name} holds NaN or infinite"):
        load_model(tmp_path)


def test_config_json_has_the_inference_section_training_derived(tmp_path):
    cfg = _model_config()
    write_model_config(tmp_path, cfg)
    section = json.loads((tmp_path / CONFIG_FILE).read_text())["inference"]
    # Patch of the training protocol, the paper's x and y flips, air = (-100 - 80) / 60 normalised, flareseg's tile step.
    assert section == {"patch_size": [32, 32, 32], "mirror_axes": [0, 1], "pad_value": -3.0, "step": 0.8, "orientation": "canonical"}


def test_a_folder_without_the_step_or_orientation_runs_as_flaresegs_and_bad_values_are_named(tmp_path):
    cfg = _model_config()
    save_tensors(build_network(cfg.network).state_dict(), tmp_path / WEIGHTS_FILE)
    write_model_config(tmp_path, cfg)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    del data["inference"]["step"]  # written before the field existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    predictor = ModelPredictor.from_folder(tmp_path)
    assert predictor.tile_step == 0.8 and predictor.resolve_step(None) == 0.8 and predictor.resolve_step(0.5) == 0.5
    assert predictor.count_tiles((64, 32, 32), None) == 3 and predictor.count_tiles((64, 32, 32), 0.5) == 3 and predictor.count_tiles((96, 32, 32), None) == 4
    for bad in (0.0, 1.5, "0.5"):  # (NaN is refused earlier, as invalid JSON)
        data["inference"]["step"] = bad
        (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
        with pytest.raises(ModelFolderError, match="config.json.*inference.step"):
            ModelPredictor.from_folder(tmp_path)
    del data["inference"]["step"], data["inference"]["orientation"]  # written before both fields existed: canonical tiles
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    assert ModelPredictor.from_folder(tmp_path).tile_flips((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)) == ()  # RAS
    data["inference"]["orientation"] = "RAS"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="config.json.*inference.orientation"):
        ModelPredictor.from_folder(tmp_path)


@pytest.mark.parametrize(("flips", "axes"), [((0.2, 0.2), (0, 1)), ((0.0, 0.2), (1,)), ((0.2, 0.0), (0,)), ((0.0, 0.0), ())])
def test_a_folder_without_the_inference_section_derives_it(tmp_path, flips, axes):
    """Folders written before the section existed: patch from train, mirrors from the augmentation's flips, air padding."""
    cfg = _model_config()
    augment = dataclasses.replace(cfg.train.augment, flip_x_prob=flips[0], flip_y_prob=flips[1])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, patch_size=(16, 32, 48), augment=augment), inference=None)
    save_tensors(build_network(cfg.network).state_dict(), tmp_path / WEIGHTS_FILE)
    write_model_config(tmp_path, cfg)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    del data["inference"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    predictor = ModelPredictor.from_folder(tmp_path)
    assert predictor.config.inference == InferenceDefaults(patch_size=(16, 32, 48), mirror_axes=axes, pad_value=-3.0)
    assert (predictor.patch_size, predictor.mirror_axes, predictor.pad_value) == ((16, 32, 48), axes, -3.0)
    assert predictor.resolve_mirror(None) == axes and predictor.resolve_mirror([2]) == (2,) and predictor.resolve_mirror(()) == ()
    assert predictor.count_tiles((16, 32, 48), 1.0, None) == 2 ** len(axes)


def test_the_predictor_reads_patch_pad_and_mirrors_from_the_section(tmp_path):
    cfg = dataclasses.replace(_model_config(), inference=InferenceDefaults(patch_size=(16, 16, 16), mirror_axes=(2,), pad_value=-7.5))
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros((x.shape[0], 14, *x.shape[2:]))

    predictor = ModelPredictor(cfg, Probe())
    image = torch.ones(10, 16, 16).numpy()  # shorter than the patch along I: padded
    predictor.predict_labels(image, step=1.0, mirror=None)
    assert len(seen) == 2 and seen[0].shape == (1, 1, 16, 16, 16)  # one tile, mirrored along K
    assert float(seen[0].min()) == -7.5 and torch.equal(seen[1], seen[0].flip(4))


@pytest.mark.parametrize(
    ("section", "message"),
    [({"patch_size": [32, 32], "mirror_axes": [], "pad_value": 0}, "inference.patch_size"),
     ({"patch_size": [32, 32, 32], "mirror_axes": [0, 3], "pad_value": 0}, "inference.mirror_axes"),
     ({"patch_size": [32, 32, 32], "mirror_axes": [], "pad_value": float("nan")}, "inference.pad_value|NaN is not a number")],
)
def test_invalid_inference_section_is_a_model_folder_error(tmp_path, section, message):
    write_model_config(tmp_path, _model_config())
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    data["inference"] = section
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=message):
        read_model_config(tmp_path)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"\xff" * 1000])
def test_a_damaged_weights_file_is_named_as_such_not_as_a_mismatch(tmp_path, damage):
    """A truncated, empty or foreign weights file had been reported as weights that "do not fit the network"."""
    cfg = _model_config()
    write_model_config(tmp_path, cfg)
    save_tensors(build_network(cfg.network).state_dict(), tmp_path / WEIGHTS_FILE)
    (tmp_path / WEIGHTS_FILE).write_bytes(damage((tmp_path / WEIGHTS_FILE).read_bytes()))
    with pytest.raises(ModelFolderError, match=rf"{WEIGHTS_FILE}: not a readable safetensors weights file \(truncated or corrupt\?\): \S"):
        load_model(tmp_path)
