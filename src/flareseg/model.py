"""The network and the self-describing model folder.

A model folder holds ``config.json`` (:class:`ModelConfig`) and ``model.safetensors`` (the weights to
predict with). Loading needs only the folder path: no environment variables, no pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DynUNet
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import (
    FORMAT_VERSION,
    Fingerprint,
    NetworkConfig,
    PreprocessConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from .errors import ConfigError, ModelFolderError
from .io import atomic_write_bytes, publish, read_json
from .labels import LESION, NUM_ORGAN_CHANNELS

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

    def __post_init__(self) -> None:
        if len(self.channel_labels) != self.network.out_channels:
            raise ConfigError(
                f"channel_labels has {len(self.channel_labels)} entries but the network has {self.network.out_channels} outputs"
            )

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
            )
        except KeyError as exc:
            raise ModelFolderError(f"config.json lacks the field {exc.args[0]!r}") from None


def channel_labels_for(task: str) -> tuple[int, ...]:
    """Final label id per output channel: organ -> (0..13), tumor -> (0, 14)."""
    return tuple(range(NUM_ORGAN_CHANNELS)) if task == "organ" else (0, LESION)


def build_network(cfg: NetworkConfig) -> DynUNet:
    """Build nnU-Net's 3-D U-Net as a MONAI DynUNet (instance norm, LeakyReLU 0.01, He-normal init).

    The network maps (B, in_channels, X, Y, Z) to (B, out_channels, X, Y, Z) logits; X, Y, Z must be
    multiples of ``cfg.divisor``.
    """
    stages = len(cfg.filters)
    return DynUNet(
        spatial_dims=3,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        kernel_size=[cfg.kernel_size] * stages,
        strides=list(cfg.strides),
        upsample_kernel_size=list(cfg.strides[1:]),
        filters=list(cfg.filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=max(1, min(2, stages - 2)),
        res_block=cfg.res_block,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        # clone(): a DynUNet state_dict holds aliases (skip_layers.* share storage with the blocks), which
        # safetensors refuses; each key gets its own copy so load_state_dict(strict=True) finds them all.
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model_config(folder: Path, cfg: ModelConfig) -> None:
    atomic_write_bytes(Path(folder) / CONFIG_FILE, cfg.to_json().encode())


def read_model_config(folder: str | os.PathLike) -> ModelConfig:
    """Read and validate ``config.json`` of a model folder.

    Raises:
        ModelFolderError: the folder or its config is missing or invalid.
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not a flareseg model folder (no {CONFIG_FILE})")
    data = read_json(path, ModelFolderError)
    try:
        return ModelConfig.from_json_dict(data)
    except ConfigError as exc:
        raise ModelFolderError(f"{path}: {exc}") from None


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu", *, weights: str = WEIGHTS_FILE) -> tuple[ModelConfig, DynUNet]:
    """Load a model folder: its config and the network with weights, in eval mode on `device`.

    Raises:
        ModelFolderError: missing or mismatched weights.
    """
    folder = Path(folder)
    cfg = read_model_config(folder)
    path = folder / weights
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no weights file {weights}")
    network = build_network(cfg.network)
    try:
        state = load_file(str(path))
        network.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise ModelFolderError(f"{path}: weights do not fit the network in config.json: {str(exc).splitlines()[0]}") from None
    return cfg, network.to(device).eval()
