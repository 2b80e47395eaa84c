"""The network and the self-describing model folder.

A model folder holds ``config.json`` (:class:`ModelConfig`) and ``model.safetensors`` (the weights to
predict with). Loading needs only the folder path: no environment variables, no pickle.

Training writes what inference reads: the ``inference`` section of config.json
(:class:`~flareseg.config.InferenceDefaults`: tile size, test-time mirror axes, pad value) is derived
from the training protocol by :func:`inference_defaults`. A folder written before that section existed
gets the same derivation when it is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from flareseg.config import (
    FORMAT_VERSION,
    Fingerprint,
    InferenceDefaults,
    NetworkConfig,
    PreprocessConfig,
    TrainConfig,
    from_dict,
    task_labels,
    to_dict,
    trained_mirror_axes,
)
from flareseg.errors import ConfigError, ModelFolderError
from flareseg.labels import TASK_TABLE
from flareseg.io import atomic_write_bytes, read_json
from flareseg.model.network import build_network
from flareseg.transforms.preprocessing import pad_value_of

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild and run a trained model (stored as config.json).

    Attributes:
        task: 'organ' or 'tumor'.
        preset: name of the preset it was built from.
        network, preprocess, train: the configuration used.
        fingerprint: foreground intensity statistics used for normalisation.
        channel_labels: final label id of each output channel, e.g. (0, 1, ..., 13) or (0, 14).
        data: summary of the training data (cases, split).
        versions: library versions at training time.
        inference: how the model is run (patch size, mirror axes, pad value); None derives it from
            `train` and `fingerprint` (:func:`inference_defaults`), as for folders written before the
            section existed.
    """

    task: str
    preset: str
    network: NetworkConfig
    preprocess: PreprocessConfig
    fingerprint: Fingerprint
    train: TrainConfig
    channel_labels: tuple[int, ...]
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    inference: InferenceDefaults | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or self.task not in TASK_TABLE:
            raise ConfigError(f"task must be {' or '.join(repr(t) for t in TASK_TABLE)}, got {self.task!r}")
        if len(self.channel_labels) != self.network.out_channels:
            raise ConfigError(
                f"channel_labels has {len(self.channel_labels)} entries but the network has {self.network.out_channels} outputs"
            )
        expected = channel_labels_for(self.task)
        if tuple(self.channel_labels) != expected:
            raise ConfigError(f"channel_labels of the {self.task} model must be {list(expected)} (the task table), got {list(self.channel_labels)}")
        if self.inference is None:  # frozen: the derived default is set once, here
            object.__setattr__(self, "inference", inference_defaults(self.train, self.fingerprint))

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFolderError(f"config.json has format_version {version!r}; this flareseg reads {FORMAT_VERSION}")
        try:
            return cls(
                task=data["task"],
                preset=data["preset"],
                network=from_dict(NetworkConfig, data["network"]),
                preprocess=from_dict(PreprocessConfig, data["preprocess"]),
                fingerprint=from_dict(Fingerprint, data["fingerprint"]),
                train=from_dict(TrainConfig, data["train"]),
                channel_labels=tuple(data["channel_labels"]),
                data=data.get("data", {}),
                versions=data.get("versions", {}),
                format_version=version,
                inference=from_dict(InferenceDefaults, data["inference"]) if "inference" in data else None,
            )
        except KeyError as exc:
            raise ModelFolderError(f"config.json lacks the field {exc.args[0]!r}") from None


def channel_labels_for(task: str) -> tuple[int, ...]:
    """Final label id per output channel (the task table): organ -> (0..13), tumor -> (0, 14).

    Raises:
        ConfigError: an unknown task.
    """
    return task_labels(task).channel_labels


def inference_defaults(train: TrainConfig, fingerprint: Fingerprint) -> InferenceDefaults:
    """What a model trained under `train` with `fingerprint` is run with.

    The tile is the training patch; the mirror axes are those the augmentation flipped
    (:func:`~flareseg.config.trained_mirror_axes`: ``flip_x_prob > 0`` -> 0, ``flip_y_prob > 0`` -> 1);
    tiles are padded with the normalised value of air, as training pads patches.
    """
    return InferenceDefaults(
        patch_size=tuple(int(p) for p in train.patch_size),  # type: ignore[arg-type]
        mirror_axes=trained_mirror_axes(train.augment),
        pad_value=float(pad_value_of(fingerprint)),
    )


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically.

    Serialised in memory and written by :func:`~flareseg.io.atomic_write_bytes`: safetensors' own
    ``save_file`` goes through a ``.tmpXXXXXX`` file of its own beside the target, which a kill -9
    leaves behind under a name no stale-temporary sweep can attribute.
    """
    # clone(): a DynUNet state_dict holds aliases (skip_layers.* share storage with the blocks), which
    # safetensors refuses; each key gets its own copy so load_state_dict(strict=True) finds them all.
    atomic_write_bytes(path, save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, metadata=metadata))


def write_model_config(folder: Path, cfg: ModelConfig) -> None:
    atomic_write_bytes(Path(folder) / CONFIG_FILE, cfg.to_json().encode())


def require_folder(folder: str | os.PathLike) -> Path:
    """`folder` as a Path, or ModelFolderError when it does not exist or is a file."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ModelFolderError(f"{folder}: is a file, not a model folder (give the folder that holds {CONFIG_FILE})")
    raise ModelFolderError(f"{folder}: model folder not found")


def read_model_config(folder: str | os.PathLike) -> ModelConfig:
    """Read and validate ``config.json`` of a model folder.

    Raises:
        ModelFolderError: the folder or its config is missing or invalid.
    """
    folder = require_folder(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not a flareseg model folder (no {CONFIG_FILE})")
    data = read_json(path, ModelFolderError)
    try:
        return ModelConfig.from_json_dict(data)
    except ConfigError as exc:
        raise ModelFolderError(f"{path}: {exc}") from None


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu", *, weights: str = WEIGHTS_FILE) -> tuple[ModelConfig, torch.nn.Module]:
    """Load a model folder: its config and the network with weights, in eval mode on `device`.

    Raises:
        ModelFolderError: missing or mismatched weights.
    """
    cfg = read_model_config(folder)
    return cfg, load_network(folder, cfg, device, weights=weights)


def weights_path(folder: str | os.PathLike, *, weights: str = WEIGHTS_FILE) -> Path:
    """The weights file of a model folder.

    Raises:
        ModelFolderError: it is missing.
    """
    path = Path(folder) / weights
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no weights file {weights}")
    return path


def read_weights(folder: str | os.PathLike, *, weights: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """The tensors of a model folder's weights file, by name (CPU).

    Raises:
        ModelFolderError: the file is missing or not a safetensors file, or a floating-point tensor holds
            NaN or infinity (:func:`check_finite`: a run that diverged, or a damaged file; such a network
            predicts garbage silently, and differently on each engine).
    """
    path = weights_path(folder, weights=weights)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:  # the file itself, before any tensor meets the network
        raise ModelFolderError(f"{path}: not a readable safetensors weights file (truncated or corrupt?): {load_error_summary(exc)}") from None
    return check_finite(tensors, path)


def load_error_summary(exc: BaseException) -> str:
    """The first problem in a weights-loading error, in one line: torch's ``load_state_dict`` error
    opens with a bare header ("Error(s) in loading state_dict for DynUNet:") that names none; the
    first mismatch is on the next line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        return lines[1]
    return lines[0]


def check_finite(tensors: dict[str, Any], path: Path) -> dict[str, Any]:
    """`tensors` (name -> tensor, of weights file `path`) as they are, or ModelFolderError naming the
    first floating-point tensor that holds NaN or infinity."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFolderError(f"{path}: tensor {name} holds NaN or infinite values; the weights are unusable")
    return tensors


def load_weights(network: torch.nn.Module, folder: str | os.PathLike, *, weights: str = WEIGHTS_FILE) -> torch.nn.Module:
    """`network` holding the folder's weights (:func:`read_weights`, loaded strictly), returned.

    Raises:
        ModelFolderError: missing, non-finite or mismatched weights.
    """
    state = read_weights(folder, weights=weights)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFolderError(f"{Path(folder) / weights}: weights do not fit the network in config.json: {load_error_summary(exc)}") from None
    return network


def load_network(folder: str | os.PathLike, cfg: ModelConfig, device: str | torch.device = "cpu", *, weights: str = WEIGHTS_FILE) -> torch.nn.Module:
    """The network of `cfg` with the folder's weights, in eval mode on `device`.

    Raises:
        ModelFolderError: missing or mismatched weights.
    """
    return load_weights(build_network(cfg.network), folder, weights=weights).to(device).eval()


def network_structure(cfg: ModelConfig) -> str:
    """What decides the module tree :func:`build_network` makes for `cfg`, as text: the network
    configuration and the versions of flareseg and MONAI (read without importing MONAI)."""
    from importlib.metadata import version

    from flareseg import __version__

    return json.dumps({"network": to_dict(cfg.network), "flareseg": __version__, "monai": version("monai")}, sort_keys=True)
