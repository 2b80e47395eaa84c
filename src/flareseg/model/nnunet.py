"""nnU-Net v2 interop: use an nnU-Net v2 trained model folder as the organ or the tumour model.

An nnU-Net v2 results folder ``<Trainer>__<Plans>__<configuration>/`` holds ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``. :func:`load_nnunet_model` turns it into what a
flareseg model folder gives (a :class:`~flareseg.model.folder.ModelConfig` and a network in eval mode)
without importing nnunetv2:

- the network is rebuilt from the plans with nnU-Net's network library
  (``dynamic_network_architectures``), from an allow-list of classes (nnU-Net itself imports
  whatever class names the plans hold);
- the checkpoint is read with torch's weights-only unpickler, which builds tensors and plain
  containers only; the numpy scalars nnU-Net stores in its training log are allowed by name,
  anything else (a pickled callable) is refused;
- preprocessing maps onto flareseg's: the configuration's spacing, ``CTNormalization`` with the
  plans' foreground intensity properties, the patch size, and nnU-Net's resampling of the image
  (``preprocess.resample = "spline"``: third-order spline without smoothing, nearest neighbour along
  the thick axis of an anisotropic scan);
- the network sees arrays in nnU-Net's axis order: a SimpleITK array (z, y, x) of the image
  reoriented to LPS (identity direction), transposed by the plans' ``transpose_forward``, each tile
  flipped along the axes the input stores in the opposite sense (``inference.orientation``
  ``"stored"``): nnU-Net trains and predicts on the arrays as stored, so a CT stored RAS (or any way
  that differs from LPS by flips only) is shown to the network in the voxel order nnU-Net shows it;
- test-time mirroring uses nnU-Net's own ``inference_allowed_mirroring_axes`` from the checkpoint
  (the axes its trainer mirrored in augmentation), mapped from nnU-Net's axis order to the LPS grid's;
  a checkpoint without it is not mirrored, as nnU-Net's predictor does.

- ``fast`` mode tiles at nnU-Net's step, 0.5 (``inference.step``), not at flareseg's 0.8: a model
  trained by nnU-Net changes its predictions at the sparser tiling;
- the CT is cropped as nnU-Net crops it, to its non-zero voxels (for a CT nearly always the whole
  volume: ``preprocess.crop = "nonzero"``), not to the body as flareseg's own models are: the tiles
  then start where nnU-Net's start and see the air its training patches saw.

Differences from nnU-Net's own predictor: an image whose stored axes are a permutation of L, P and S
(a sagittal or coronal series) is shown in LPS's axis order, not in its stored one; the resampled
grid keeps the target spacing exactly (nnU-Net's covers the input's extent at the rounded shape, a
spacing that differs by up to half a voxel over the volume); and the labels are taken at the network's
resolution and then resampled (nnU-Net resamples the logits and takes the arg-max on the input's grid). Only one fold is
used; the cascade configuration (which needs a low-resolution segmentation as input) is not supported.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flareseg.config import MAX_FEATURES, NNUNET_TILE_STEP, Fingerprint, InferenceDefaults, NetworkConfig, PreprocessConfig, TrainConfig
from flareseg.errors import ModelFolderError
from flareseg.io import read_json
from flareseg.labels import TASK_TABLE
from flareseg.model.folder import ModelConfig, check_finite, load_error_summary
from flareseg.transforms.preprocessing import pad_value_of

PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
CHECKPOINT_FILES = ("checkpoint_final.pth", "checkpoint_best.pth")
"""Checkpoints looked for in a fold folder, in order of preference."""

NETWORK_CLASSES: tuple[str, ...] = ("PlainConvUNet", "ResidualEncoderUNet")
"""The nnU-Net architectures flareseg rebuilds, by class name (with or without module path)."""


def network_class(name: str, source: Path) -> type[torch.nn.Module]:
    """nnU-Net's own class `name` from its network library (the ``nnunet`` extra), imported on first use.

    Raises:
        ModelFolderError: the library is not installed (the message says how to install it).
    """
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise ModelFolderError(
            f"{source}: an nnU-Net model folder needs nnU-Net's network library: pip install 'flareseg[nnunet]'"
        ) from None
    return getattr(unet, name)

LAYER_CLASSES: dict[str, type[torch.nn.Module] | None] = {
    "torch.nn.modules.conv.Conv3d": torch.nn.Conv3d,
    "torch.nn.Conv3d": torch.nn.Conv3d,
    "torch.nn.modules.instancenorm.InstanceNorm3d": torch.nn.InstanceNorm3d,
    "torch.nn.InstanceNorm3d": torch.nn.InstanceNorm3d,
    "torch.nn.modules.batchnorm.BatchNorm3d": torch.nn.BatchNorm3d,
    "torch.nn.BatchNorm3d": torch.nn.BatchNorm3d,
    "torch.nn.modules.dropout.Dropout3d": torch.nn.Dropout3d,
    "torch.nn.Dropout3d": torch.nn.Dropout3d,
    "torch.nn.LeakyReLU": torch.nn.LeakyReLU,
    "torch.nn.modules.activation.LeakyReLU": torch.nn.LeakyReLU,
    "torch.nn.ReLU": torch.nn.ReLU,
    "torch.nn.modules.activation.ReLU": torch.nn.ReLU,
}
"""Layer types the plans may name (``_kw_requires_import``); ``None`` in the plans stays ``None``."""

_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
NUMPY_DATA_GLOBALS = [
    np.dtype,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
]
"""Data-only numpy globals found in nnU-Net checkpoints (its log holds numpy floats): np.dtype, its
per-type classes (numpy >= 1.25) and numpy's scalar constructor, under the numpy 1 and 2 module names."""


def is_nnunet_folder(folder: str | os.PathLike) -> bool:
    """True for an nnU-Net v2 trained model folder, or one of its ``fold_*`` folders."""
    folder = Path(folder)
    return (folder / PLANS_FILE).is_file() or (folder.name.startswith("fold_") and (folder.parent / PLANS_FILE).is_file())


def find_checkpoint(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The model folder (holding plans.json) and the checkpoint to load.

    `folder` is the trained model folder or one of its ``fold_*`` folders. In the model folder,
    ``fold_all`` is used if present, else the only fold; several folds are an error (flareseg
    does not ensemble folds: name one).

    Raises:
        ModelFolderError: no fold, several folds, or no checkpoint in the fold.
    """
    folder = Path(folder)
    if folder.name.startswith("fold_") and not (folder / PLANS_FILE).is_file():
        root, fold = folder.parent, folder
    else:
        root = folder
        folds = sorted(p for p in root.glob("fold_*") if p.is_dir())
        if not folds:
            raise ModelFolderError(f"{root}: nnU-Net model folder without any fold_* folder")
        if (root / "fold_all").is_dir():
            fold = root / "fold_all"
        elif len(folds) == 1:
            fold = folds[0]
        else:
            names = ", ".join(p.name for p in folds)
            raise ModelFolderError(f"{root}: holds {names}; give one fold folder (flareseg does not ensemble folds)")
    for name in CHECKPOINT_FILES:
        if (fold / name).is_file():
            return root, fold / name
    raise ModelFolderError(f"{fold}: no {' or '.join(CHECKPOINT_FILES)}")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with torch's weights-only unpickler (tensors, containers, numpy scalars).

    Raises:
        ModelFolderError: unreadable, truncated, holding objects other than data, without weights, or with
            non-finite weights.
    """
    try:
        with torch.serialization.safe_globals(NUMPY_DATA_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ModelFolderError(f"{path}: refused to unpickle (it holds more than data): {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: not a readable PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ModelFolderError(f"{path}: no 'network_weights' in the checkpoint (not an nnU-Net v2 checkpoint?)")
    check_finite(checkpoint["network_weights"], path)
    return checkpoint


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(f"{path.parent}: nnU-Net model folder without {path.name}")
    return read_json(path, ModelFolderError)


def configuration(plans: dict[str, Any], name: str, *, source: Path) -> dict[str, Any]:
    """The plans' configuration `name` with ``inherits_from`` resolved (as nnU-Net's ConfigurationManager does).

    Raises:
        ModelFolderError: unknown configuration, or one that needs a previous stage (cascade).
    """
    configs = plans.get("configurations", {})
    chain: list[dict[str, Any]] = []
    current = name
    while current is not None:
        if current not in configs or len(chain) > len(configs):
            raise ModelFolderError(f"{source}: configuration {current!r} not in the plans (has {sorted(configs)})")
        chain.append(configs[current])
        current = configs[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for part in reversed(chain):
        merged.update(part)
    if merged.get("previous_stage"):
        raise ModelFolderError(f"{source}: configuration {name!r} is a cascade stage (needs {merged['previous_stage']!r} output); not supported")
    if merged.get("data_identifier", "").startswith("nnUNetPlans_2d") or len(merged.get("patch_size", ())) != 3:
        raise ModelFolderError(f"{source}: configuration {name!r} is not 3-D; flareseg runs 3-D models only")
    return merged


def network_arguments(config: dict[str, Any], *, source: Path) -> tuple[str, dict[str, Any]]:
    """The network class name and its keyword arguments from a plans configuration (nnU-Net >= 2.4 or older)."""
    if "architecture" in config:
        arch = config["architecture"]
        class_name = str(arch["network_class_name"]).rsplit(".", 1)[-1]
        kwargs = dict(arch["arch_kwargs"])
        for key in arch.get("_kw_requires_import", ()):
            kwargs[key] = _layer_class(kwargs.get(key), source)
    else:  # nnU-Net 2.0-2.3 plans
        class_name = config.get("UNet_class_name", "PlainConvUNet")
        stages = len(config["conv_kernel_sizes"])
        base, cap = config["UNet_base_num_features"], config["unet_max_num_features"]
        kwargs = {
            "n_stages": stages,
            "features_per_stage": [min(base * 2**i, cap) for i in range(stages)],
            "conv_op": torch.nn.Conv3d,
            "kernel_sizes": config["conv_kernel_sizes"],
            "strides": config["pool_op_kernel_sizes"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": torch.nn.InstanceNorm3d,
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": torch.nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True},
        }
        blocks_key = "n_blocks_per_stage" if class_name == "ResidualEncoderUNet" else "n_conv_per_stage"
        kwargs[blocks_key] = config["n_conv_per_stage_encoder"]
    if class_name not in NETWORK_CLASSES:
        raise ModelFolderError(f"{source}: network class {class_name!r} is not supported (supported: {', '.join(NETWORK_CLASSES)})")
    _check_sizes(source, "features_per_stage", kwargs.get("features_per_stage"), MAX_FEATURES)
    _check_sizes(source, "kernel_sizes", kwargs.get("kernel_sizes"), 7)
    return class_name, kwargs


def _check_sizes(source: Path, name: str, values: Any, high: int) -> None:
    """Refuse a plans list (of ints or of per-axis int lists) with an entry outside [1, high] before any weight is allocated."""
    flat = [v for item in values for v in (item if isinstance(item, (list, tuple)) else [item])] if isinstance(values, (list, tuple)) else None
    if not flat or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= high for v in flat):
        raise ModelFolderError(f"{source}: {name} must be integers in [1, {high}], got {values!r}")


def _layer_class(name: Any, source: Path) -> type[torch.nn.Module] | None:
    if name is None:
        return None
    if name not in LAYER_CLASSES:
        raise ModelFolderError(f"{source}: layer type {name!r} in the plans is not supported")
    return LAYER_CLASSES[name]


class NnUNetAxisOrder(torch.nn.Module):
    """Runs an nnU-Net network on flareseg's (B, C, X, Y, Z) tensors of the LPS grid.

    nnU-Net's network sees the SimpleITK array order (z, y, x) transposed by ``transpose_forward``;
    this wrapper permutes the input into that order and the logits back.
    """

    def __init__(self, network: torch.nn.Module, transpose_forward: tuple[int, int, int]):
        super().__init__()
        self.network = network
        # Tensor dim 2 + a holds flareseg axis a (x, y, z); nnU-Net axis i is SimpleITK axis t[i], i.e. flareseg axis 2 - t[i].
        self.forward_order = (0, 1) + tuple(2 + (2 - t) for t in transpose_forward)
        self.backward_order = tuple(int(i) for i in np.argsort(self.forward_order))

    def extra_repr(self) -> str:
        return f"forward_order={self.forward_order}"  # in the repr, so the ONNX graph's cache key covers the transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x.permute(*self.forward_order).contiguous())
        return logits.permute(*self.backward_order)


def to_flareseg_axes(values: list[float] | tuple[float, ...], transpose_forward: tuple[int, int, int]) -> tuple[float, ...]:
    """A per-axis quantity (spacing, patch size) from nnU-Net's transposed order to flareseg's (x, y, z)."""
    zyx = [0.0, 0.0, 0.0]
    for i, t in enumerate(transpose_forward):
        zyx[t] = values[i]
    return tuple(zyx[::-1])


def mirror_axes_from(checkpoint: dict[str, Any], transpose_forward: tuple[int, int, int], *, source: Path) -> tuple[int, ...]:
    """The checkpoint's ``inference_allowed_mirroring_axes`` as axes of flareseg's (x, y, z) grid, sorted.

    nnU-Net's spatial axis i is SimpleITK axis ``transpose_forward[i]``, i.e. flareseg axis
    ``2 - transpose_forward[i]``. Absent or None: no mirroring (nnU-Net's predictor does the same).

    Raises:
        ModelFolderError: axes that are not distinct values among 0, 1, 2.
    """
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if axes is None:
        return ()
    try:
        values = [int(a) for a in axes]
    except (TypeError, ValueError):
        raise ModelFolderError(f"{source}: inference_allowed_mirroring_axes {axes!r} is not a list of axes") from None
    if len(set(values)) != len(values) or any(a not in (0, 1, 2) for a in values):
        raise ModelFolderError(f"{source}: inference_allowed_mirroring_axes {axes!r} must be distinct axes among 0, 1, 2")
    return tuple(sorted(2 - transpose_forward[a] for a in values))


def channel_labels_from(dataset: dict[str, Any], *, source: Path) -> tuple[str, tuple[int, ...]]:
    """The task and flareseg label id per output channel from dataset.json's ``labels``.

    An organ model must have the FLARE23 ids 0-13 (channel k is label k); a tumour model has two
    labels, background and lesion (its channel 1 becomes id 14).

    Raises:
        ModelFolderError: region-based labels or labels that fit neither step.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFolderError(f"{source}: dataset.json has no 'labels'")
    if any(not isinstance(v, int) for v in labels.values()):
        raise ModelFolderError(f"{source}: region-based labels (lists of ids) are not supported")
    values = sorted(labels.values())
    for task in TASK_TABLE.values():  # nnU-Net's label k is output channel k
        if values == list(range(task.num_channels)):
            return task.name, task.channel_labels
    raise ModelFolderError(
        f"{source}: labels {labels} fit neither step: the organ model needs ids 0-13 (FLARE23), the tumour model background 0 and lesion 1"
    )


def load_nnunet_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, torch.nn.Module]:
    """Load an nnU-Net v2 trained model folder (or one of its fold folders) as a flareseg model.

    Returns:
        The :class:`ModelConfig` describing it (``preset`` ``'nnunet'``; ``network`` summarises the
        stages, the plans hold the exact architecture; ``data['nnunet']`` records the source) and
        the network, wrapped to take (B, 1, X, Y, Z) LPS-grid tensors, in eval mode on `device`.

    Raises:
        ModelFolderError: anything in the folder flareseg cannot use, named.
    """
    root, checkpoint_path = find_checkpoint(folder)
    try:
        return _load(root, checkpoint_path, device)
    except ModelFolderError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AssertionError) as exc:  # a field of the wrong type or shape
        detail = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise ModelFolderError(f"{root / PLANS_FILE} (or {DATASET_FILE}): unusable value: {detail}") from None


def _load(root: Path, checkpoint_path: Path, device: str | torch.device) -> tuple[ModelConfig, torch.nn.Module]:
    plans = _read_json(root / PLANS_FILE)
    dataset = _read_json(root / DATASET_FILE)
    checkpoint = read_checkpoint(checkpoint_path)
    channels = dataset.get("channel_names", dataset.get("modality", {"0": "CT"}))
    if len(channels) != 1:
        raise ModelFolderError(f"{root / DATASET_FILE}: {len(channels)} input channels ({channels}); flareseg feeds one CT channel")
    init_args = checkpoint.get("init_args") or {}
    config_name = init_args.get("configuration") or root.name.rsplit("__", 1)[-1]
    config = configuration(plans, config_name, source=root / PLANS_FILE)
    schemes = config.get("normalization_schemes", [])
    if list(schemes) != ["CTNormalization"]:
        raise ModelFolderError(f"{root / PLANS_FILE}: normalisation {schemes}; flareseg supports CTNormalization only")
    try:
        props = plans["foreground_intensity_properties_per_channel"]["0"]
        fingerprint = Fingerprint(float(props["percentile_00_5"]), float(props["percentile_99_5"]), float(props["mean"]), float(props["std"]))
    except KeyError as exc:
        raise ModelFolderError(f"{root / PLANS_FILE}: no foreground intensity property {exc.args[0]!r} for channel 0") from None
    task, channel_labels = channel_labels_from(dataset, source=root / DATASET_FILE)

    transpose = tuple(int(t) for t in plans.get("transpose_forward", (0, 1, 2)))
    class_name, kwargs = network_arguments(config, source=root / PLANS_FILE)
    try:
        network = network_class(class_name, root / PLANS_FILE)(input_channels=1, num_classes=len(channel_labels), deep_supervision=False, **kwargs)
        network.load_state_dict(checkpoint["network_weights"], strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{checkpoint_path}: weights do not fit the network in the plans: {load_error_summary(exc)}") from None

    strides = [max(s) if isinstance(s, (list, tuple)) else int(s) for s in kwargs["strides"]]
    patch_size = tuple(int(p) for p in to_flareseg_axes(config["patch_size"], transpose))
    model_config = ModelConfig(
        task=task,
        preset="nnunet",
        network=NetworkConfig(
            out_channels=len(channel_labels),
            filters=tuple(int(f) for f in kwargs["features_per_stage"]),
            strides=tuple(strides),
            res_block=class_name == "ResidualEncoderUNet",
        ),
        preprocess=PreprocessConfig(target_spacing=to_flareseg_axes(config["spacing"], transpose), crop="nonzero", resample="spline"),
        fingerprint=fingerprint,
        train=TrainConfig(patch_size=patch_size, batch_size=int(config.get("batch_size", 2))),
        channel_labels=channel_labels,
        inference=InferenceDefaults(
            patch_size=patch_size,  # type: ignore[arg-type]
            mirror_axes=mirror_axes_from(checkpoint, transpose, source=checkpoint_path),
            pad_value=float(pad_value_of(fingerprint)),
            step=NNUNET_TILE_STEP,
            orientation="stored",
        ),
        data={
            "nnunet": {
                "folder": str(root.resolve()),
                "checkpoint": str(checkpoint_path.resolve()),
                "configuration": config_name,
                "trainer": checkpoint.get("trainer_name"),
                "epoch": checkpoint.get("current_epoch"),
                "transpose_forward": list(transpose),
                "labels": dataset["labels"],
            }
        },
    )
    return model_config, NnUNetAxisOrder(network, transpose).to(device).eval()
