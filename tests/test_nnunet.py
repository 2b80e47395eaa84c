"""nnU-Net v2 interop: trained model folders written here the way nnU-Net writes them, loaded without nnunetv2."""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from flareseg.cli import main
from flareseg.errors import ModelFolderError
from flareseg.io import Volume, read_image, read_label, write_volume
from flareseg.model.nnunet import NnUNetAxisOrder, is_nnunet_folder, load_nnunet_model, to_flareseg_axes
from flareseg.model.predictor import ModelPredictor

from conftest import phantom_ct

ORGAN_LABELS = {"background": 0, **{f"organ_{i}": i for i in range(1, 14)}}
TUMOR_LABELS = {"background": 0, "lesion": 1}
FG_PROPS = {"max": 3000.0, "mean": 90.0, "median": 95.0, "min": -1000.0, "percentile_00_5": -960.0, "percentile_99_5": 310.0, "std": 140.0}
# What nnU-Net's planner writes for a small anisotropic 3-stage PlainConvUNet, in its transposed axis order.
ARCH = {
    "n_stages": 3,
    "features_per_stage": [4, 8, 16],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "n_conv_per_stage_decoder": [1, 1],
    "conv_bias": True,
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin_kwargs": {"inplace": True},
}


def nnunet_network(num_classes: int, residual: bool = False) -> torch.nn.Module:
    """The network nnU-Net's get_network_from_plans builds for ARCH (written out, as nnU-Net would)."""
    common = dict(
        input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d, kernel_sizes=ARCH["kernel_sizes"],
        strides=ARCH["strides"], num_classes=num_classes, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
    )
    torch.manual_seed(0)
    if residual:
        return ResidualEncoderUNet(n_blocks_per_stage=[1, 1, 2], **common)
    return PlainConvUNet(n_conv_per_stage=[1, 1, 2], **common)


def write_nnunet_folder(
    root: Path,
    *,
    labels=ORGAN_LABELS,
    transpose=(0, 1, 2),
    spacing=(3.0, 2.0, 1.5),
    patch_size=(16, 32, 24),
    legacy: bool = False,
    residual: bool = False,
    folds=("fold_0",),
    extra: dict | None = None,
    mirror_axes=(0, 1, 2),
) -> tuple[Path, torch.nn.Module]:
    """An nnU-Net v2 results folder as nnUNetTrainer leaves it: plans.json, dataset.json, fold_N/checkpoint_final.pth."""
    network = nnunet_network(len(labels), residual)
    class_name = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
    }
    if legacy:
        config.update({
            "UNet_class_name": class_name, "UNet_base_num_features": 4, "unet_max_num_features": 16,
            "n_conv_per_stage_encoder": [1, 1, 2], "n_conv_per_stage_decoder": [1, 1],
            "conv_kernel_sizes": ARCH["kernel_sizes"], "pool_op_kernel_sizes": ARCH["strides"],
        })
    else:
        kwargs = dict(ARCH, conv_op="torch.nn.modules.conv.Conv3d", norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", nonlin="torch.nn.LeakyReLU")
        kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"] = [1, 1, 2]
        config["architecture"] = {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{class_name}",
            "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    plans = {
        "dataset_name": "Dataset023_FLARE",
        "plans_name": "nnUNetPlans",
        "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "configurations": {"3d_fullres": config, "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}},
        "foreground_intensity_properties_per_channel": {"0": FG_PROPS},
    }
    plans.update(extra or {})
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    checkpoint = {
        "network_weights": OrderedDict(network.state_dict()),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True, "params": [0, 1]}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "train_losses": [np.mean(np.array([1.0, 2.0]))], "lrs": [0.01], "epoch_start_timestamps": [time.time()]},
        "_best_ema": np.float64(0.4),
        "current_epoch": 1000,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset, "unpack_dataset": True, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror_axes,
    }
    if mirror_axes is None:
        del checkpoint["inference_allowed_mirroring_axes"]
    for fold in folds:
        (root / fold).mkdir()
        torch.save(checkpoint, root / fold / "checkpoint_final.pth")
    return root, network.eval()


@pytest.fixture
def organ_folder(tmp_path):
    return write_nnunet_folder(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres")


def test_organ_model_maps_plans_onto_flareseg(organ_folder):
    root, _ = organ_folder
    assert is_nnunet_folder(root) and is_nnunet_folder(root / "fold_0")
    predictor = ModelPredictor.from_folder(root)
    cfg = predictor.config
    assert cfg.task == "organ" and cfg.channel_labels == tuple(range(14))
    # plans spacing/patch are in nnU-Net's (z, y, x) order; flareseg's are (x, y, z)
    assert predictor.spacing == (1.5, 2.0, 3.0)
    assert predictor.patch_size == (24, 32, 16)
    assert predictor.preprocess_config.crop == "nonzero"  # nnU-Net crops to the non-zero voxels, not to the body
    assert predictor.tile_step == 0.5  # nnU-Net's tile_step_size: fast mode runs it so
    assert cfg.inference.orientation == "stored"  # nnU-Net trained on the arrays as stored
    assert cfg.preprocess.resample == "spline"  # nnU-Net's resampling of the image
    fp = cfg.fingerprint
    assert (fp.percentile_00_5, fp.percentile_99_5, fp.mean, fp.std) == (-960.0, 310.0, 90.0, 140.0)
    assert cfg.data["nnunet"]["epoch"] == 1000 and cfg.data["nnunet"]["trainer"] == "nnUNetTrainer"


def test_network_sees_nnunet_axis_order_and_gives_its_logits(organ_folder):
    root, reference = organ_folder
    _, wrapped = load_nnunet_model(root)
    x = torch.randn(1, 1, 24, 32, 16)  # flareseg (x, y, z)
    with torch.no_grad():
        expected = reference(x.permute(0, 1, 4, 3, 2))[0].permute(0, 1, 4, 3, 2)  # nnU-Net sees (z, y, x)
        got = wrapped(x)
    assert got.shape == (1, 14, 24, 32, 16)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("transpose", list(itertools.permutations(range(3))))
def test_axis_order_for_every_transpose(transpose):
    seen = []

    class Record(torch.nn.Module):
        def forward(self, t):
            seen.append(tuple(t.shape))
            return t

    x = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 1, 5, 6, 7)
    out = NnUNetAxisOrder(Record(), transpose)(x)
    zyx = (7, 6, 5)
    assert seen == [(1, 1) + tuple(zyx[t] for t in transpose)]
    assert torch.equal(out, x)
    assert to_flareseg_axes([zyx[t] for t in transpose], transpose) == (5, 6, 7)


@pytest.mark.parametrize("legacy,residual", [(True, False), (False, True), (True, True)])
def test_legacy_plans_and_residual_encoder(tmp_path, legacy, residual):
    root, reference = write_nnunet_folder(tmp_path / "m", legacy=legacy, residual=residual)
    _, wrapped = load_nnunet_model(root)
    assert type(wrapped.network) is type(reference)
    x = torch.randn(1, 1, 24, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), reference(x.permute(0, 1, 4, 3, 2))[0].permute(0, 1, 4, 3, 2))


@pytest.mark.parametrize(
    ("transpose", "nnunet_axes", "expected"),
    [((0, 1, 2), (0, 1, 2), (0, 1, 2)), ((0, 1, 2), (1, 2), (0, 1)), ((0, 1, 2), (0,), (2,)), ((2, 0, 1), (0,), (0,)),
     ((1, 2, 0), (0, 2), (1, 2)), ((0, 1, 2), (), ()), ((0, 1, 2), None, ())],
)
def test_mirror_axes_are_nnunets_own_in_flareseg_order(tmp_path, transpose, nnunet_axes, expected):
    """nnU-Net axis i is SimpleITK axis transpose[i], flareseg axis 2 - transpose[i]; no entry: no mirroring."""
    root, _ = write_nnunet_folder(tmp_path / "m", transpose=transpose, mirror_axes=nnunet_axes)
    predictor = ModelPredictor.from_folder(root)
    assert predictor.mirror_axes == expected
    assert predictor.config.inference.patch_size == predictor.config.train.patch_size
    fp = predictor.fingerprint
    assert predictor.pad_value == pytest.approx((fp.percentile_00_5 - fp.mean) / fp.std)


def test_invalid_nnunet_mirror_axes_are_named(tmp_path):
    root, _ = write_nnunet_folder(tmp_path / "m", mirror_axes=(0, 3))
    with pytest.raises(ModelFolderError, match="inference_allowed_mirroring_axes"):
        load_nnunet_model(root)


def test_tumour_model_channel_becomes_lesion_id(tmp_path):
    root, _ = write_nnunet_folder(tmp_path / "t", labels=TUMOR_LABELS)
    cfg, _ = load_nnunet_model(root)
    assert cfg.task == "tumor" and cfg.channel_labels == (0, 14)


def test_fold_selection(tmp_path):
    root, _ = write_nnunet_folder(tmp_path / "m", folds=("fold_0", "fold_1"))
    with pytest.raises(ModelFolderError, match="fold_0, fold_1; give one fold"):
        load_nnunet_model(root)
    cfg, _ = load_nnunet_model(root / "fold_1")
    assert cfg.data["nnunet"]["checkpoint"].endswith("fold_1/checkpoint_final.pth")
    root_all, _ = write_nnunet_folder(tmp_path / "a", folds=("fold_0", "fold_all"))
    cfg, _ = load_nnunet_model(root_all)
    assert "fold_all" in cfg.data["nnunet"]["checkpoint"]


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    root, network = write_nnunet_folder(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"network_weights": network.state_dict(), "payload": Payload()}, root / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelFolderError, match="refused to unpickle.*open"):
        load_nnunet_model(root)
    assert not marker.exists()


def test_a_checkpoint_with_nan_weights_is_refused_by_tensor(tmp_path):
    root, network = write_nnunet_folder(tmp_path / "m")
    state = network.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save({"network_weights": state}, root / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelFolderError, match=f"checkpoint_final.pth: tensor {name} holds NaN"):
        load_nnunet_model(root)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda root: (root / "fold_0" / "checkpoint_final.pth").write_bytes((root / "fold_0" / "checkpoint_final.pth").read_bytes()[:5000]), "not a readable PyTorch checkpoint"),
        (lambda root: (root / "fold_0" / "checkpoint_final.pth").unlink(), "no checkpoint_final.pth or checkpoint_best.pth"),
        (lambda root: (root / "dataset.json").unlink(), "without dataset.json"),
        (lambda root: _edit(root, "dataset.json", lambda d: d.update(labels={"background": 0, "a": 1, "b": 2})), "fit neither step"),
        (lambda root: _edit(root, "dataset.json", lambda d: d.update(labels={"background": 0, "a": [1, 2]})), "region-based"),
        (lambda root: _edit(root, "dataset.json", lambda d: d.update(channel_names={"0": "CT", "1": "PET"})), "2 input channels"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["ZScoreNormalization"])), "CTNormalization only"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name="os.system")), "not supported"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(nonlin="builtins.eval")), "layer type 'builtins.eval'"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(features_per_stage=[8, 16, 32])), "weights do not fit"),
        (lambda root: (root / "plans.json").write_text("[1, 2]"), "expected an object"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(features_per_stage=[10**7] * 3)), "features_per_stage must be integers"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(kernel_sizes=[[999] * 3] * 3)), "kernel_sizes must be integers"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"].update(patch_size="big")), "unusable value"),
        (lambda root: _edit(root, "plans.json", lambda p: p["configurations"]["3d_fullres"].update(spacing=[0, 1, 1])), "target_spacing"),
        (lambda root: _edit(root, "plans.json", lambda p: p.update(foreground_intensity_properties_per_channel=[])), "unusable value"),
        (lambda root: _edit(root, "plans.json", lambda p: p["foreground_intensity_properties_per_channel"]["0"].update(std="wide")), "unusable value"),
    ],
)
def test_unusable_folders_are_named(organ_folder, change, message):
    root, _ = organ_folder
    change(root)
    with pytest.raises(ModelFolderError, match=message):
        load_nnunet_model(root)


def test_cascade_configuration_is_refused(tmp_path):
    root, _ = write_nnunet_folder(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")
    checkpoint = root / "fold_0" / "checkpoint_final.pth"
    data = torch.load(checkpoint, weights_only=False)
    data["init_args"]["configuration"] = "3d_cascade_fullres"
    torch.save(data, checkpoint)
    with pytest.raises(ModelFolderError, match="cascade stage"):
        load_nnunet_model(root)


def _edit(root: Path, name: str, change) -> None:
    data = json.loads((root / name).read_text())
    change(data)
    (root / name).write_text(json.dumps(data))


@pytest.mark.parametrize("mode", ["fast", "accurate"])
def test_cli_predicts_with_nnunet_models_in_the_input_geometry(tmp_path, capsys, mode):
    organ, _ = write_nnunet_folder(tmp_path / "organ")
    tumor, _ = write_nnunet_folder(tmp_path / "tumor", labels=TUMOR_LABELS)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image, _ = phantom_ct(direction=direction)
    source = write_volume(image, tmp_path / "case_0000.nii.gz")
    out = tmp_path / "case.nii.gz"
    code = main(["--quiet", "predict", "-i", str(source), "-o", str(out), "--organ-model", str(organ), "--tumor-model", str(tumor), "--mode", mode])
    assert code == 0, capsys.readouterr().err
    written, original = read_label(out), read_image(source)
    assert written.array.shape == original.array.shape
    assert written.spacing == original.spacing and np.allclose(written.origin, original.origin) and np.allclose(written.direction, original.direction)
    assert set(np.unique(written.array)) <= set(range(15))


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_nnunet_model_sees_the_voxels_as_stored(tmp_path, capsys, monkeypatch, mode):
    """nnU-Net predicts on the stored array whatever the direction says: the same voxels stored as RAS
    and as LPS get the same label array (the CT is on the model's grid and its tiles lie symmetrically,
    so nothing but the voxel order the network sees can differ)."""
    organ, _ = write_nnunet_folder(tmp_path / "organ", mirror_axes=None)
    image, _ = phantom_ct(shape=(40, 48, 30), spacing=(1.5, 2.0, 3.0))
    stored = {"LPS": image, "RAS": Volume(image.array, image.spacing, image.origin, np.diag([-1.0, -1.0, 1.0]))}

    def labels(name: str, run: str) -> np.ndarray:
        source = write_volume(stored[name], tmp_path / f"{name}_0000.nii.gz")
        out = tmp_path / f"{name}_{run}.nii.gz"
        code = main(["--quiet", "predict", "-i", str(source), "-o", str(out), "--organ-model", str(organ), "--mode", mode])
        assert code == 0, capsys.readouterr().err
        return read_label(out).array

    assert ModelPredictor.from_folder(organ).tile_flips(stored["RAS"].direction.ravel()) == (0, 1)
    as_lps, as_ras = labels("LPS", "stored"), labels("RAS", "stored")
    assert len(np.unique(as_lps)) > 2  # the random network's labels vary, so a different voxel order shows
    assert np.mean(as_lps == as_ras) > 0.999
    monkeypatch.setattr(ModelPredictor, "tile_flips", lambda self, direction: ())  # the network sees LPS tiles for both
    assert np.mean(labels("LPS", "canonical") == labels("RAS", "canonical")) < 0.99
