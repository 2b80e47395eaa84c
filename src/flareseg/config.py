"""Frozen configuration objects: hyperparameters are data, serialised to JSON in the model folder.

Presets (`paper`, `cpu`, `tiny`) are values of the same classes, not new classes. CLI flags map onto
fields with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from flareseg.errors import ConfigError
from flareseg.labels import NUM_ORGAN_CHANNELS, NUM_TUMOR_CHANNELS

Task = Literal["organ", "tumor"]
TASKS: tuple[str, ...] = ("organ", "tumor")
FORMAT_VERSION = 1
"""Version of the model-folder format written in config.json."""


@dataclass(frozen=True)
class NetworkConfig:
    """A MONAI DynUNet configured like nnU-Net's 3D U-Net.

    Attributes:
        in_channels: input channels (1: CT).
        out_channels: 14 for the organ model, 2 for the tumour model.
        filters: features per stage; its length is the number of stages.
        strides: per-stage downsampling stride (first is 1).
        kernel_size: convolution kernel size at every stage.
        res_block: residual blocks (the paper's 31.42M-parameter network) or plain ones.
        deep_supervision: extra supervised outputs from the decoder (training only).
    """

    in_channels: int = 1
    out_channels: int = NUM_ORGAN_CHANNELS
    filters: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    kernel_size: int = 3
    res_block: bool = True
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        if len(self.filters) != len(self.strides):
            raise ConfigError(f"network.filters has {len(self.filters)} stages but network.strides has {len(self.strides)}")
        if self.strides[0] != 1:
            raise ConfigError(f"network.strides[0] must be 1, got {self.strides[0]}")

    @property
    def divisor(self) -> int:
        """Patch sizes must be multiples of this (the product of strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT is brought to the network's grid (DESIGN section 3).

    Attributes:
        target_spacing: voxel size in mm along the axes of the canonical LPS orientation.
        body_threshold_hu: voxels above this HU count as body for the body crop.
        body_margin_mm: margin around the body bounding box.
    """

    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 5.0

    def __post_init__(self) -> None:
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ConfigError(f"preprocess.target_spacing must be 3 positive numbers, got {self.target_spacing}")


@dataclass(frozen=True)
class Fingerprint:
    """Foreground intensity statistics of the training set, in HU (DESIGN section 3)."""

    percentile_00_5: float
    percentile_99_5: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ConfigError(f"fingerprint.std must be positive, got {self.std}")
        if not self.percentile_00_5 <= self.percentile_99_5:
            raise ConfigError(f"fingerprint percentiles out of order: {self.percentile_00_5} > {self.percentile_99_5}")


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentations (table 3), each drawn per image with its probability."""

    flip_x_prob: float = 0.2
    flip_y_prob: float = 0.2
    smooth_prob: float = 0.1
    smooth_sigma: tuple[float, float] = (0.5, 1.15)
    noise_prob: float = 0.2
    noise_std: float = 0.1
    gamma_prob: float = 0.1
    gamma_range: tuple[float, float] = (0.5, 2.5)
    shift_prob: float = 0.1
    shift_offset: float = 0.3


@dataclass(frozen=True)
class TrainConfig:
    """The training protocol (paper, tables 2 and 3).

    Attributes:
        epochs: total epochs; `iterations_per_epoch` batches each.
        batch_size: patches per optimiser step.
        patch_size: patch size in voxels at the target spacing.
        samples_per_image: patches drawn per loaded image.
        pos_fraction: fraction of patches centred on foreground.
        learning_rate: Adam's initial learning rate.
        poly_horizon_epochs, poly_exponent, lr_floor: lr(e) = max(lr_floor, lr * (1 - e/horizon)^exponent),
            and lr_floor for e >= horizon (the paper's formula is undefined past the horizon).
        val_every: validate on the held-out split every this many epochs.
        val_overlap: overlap of the sliding windows that segment the validation cases (0.5: nnU-Net's step 0.5).
        max_minutes: stop after this wall time (None: no limit); the checkpoint stays resumable.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (128, 128, 128)
    samples_per_image: int = 2
    pos_fraction: float = 0.5
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    poly_horizon_epochs: int = 500
    poly_exponent: float = 0.9
    lr_floor: float = 0.0
    val_every: int = 10
    val_overlap: float = 0.5
    seed: int = 0
    max_minutes: float | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "batch_size", "samples_per_image", "val_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.pos_fraction <= 1:
            raise ConfigError(f"train.pos_fraction must lie in [0, 1], got {self.pos_fraction}")
        if not 0 <= self.val_overlap < 1:
            raise ConfigError(f"train.val_overlap must lie in [0, 1), got {self.val_overlap}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}")


FINE_TUNE_LR = 5e-5
FINE_TUNE_EPOCHS = 40


@dataclass(frozen=True)
class Preset:
    """A named set of network, preprocessing and training values."""

    name: str
    network: NetworkConfig
    preprocess: PreprocessConfig
    train: TrainConfig


def _presets() -> dict[str, Preset]:
    paper = Preset("paper", NetworkConfig(), PreprocessConfig(), TrainConfig())
    cpu = Preset(
        "cpu",
        # Measured on 2 cores (docs/training.md): 8-128 features train ~4x faster per step than 16-256
        # and reach higher Dice within a 10-15 minute budget; deep supervision speeds up early learning.
        NetworkConfig(filters=(8, 16, 32, 64, 128), strides=(1, 2, 2, 2, 2), res_block=True, deep_supervision=True),
        PreprocessConfig(target_spacing=(2.5, 2.5, 2.5)),
        TrainConfig(
            epochs=60, iterations_per_epoch=25, patch_size=(64, 64, 64), learning_rate=3e-3,
            poly_horizon_epochs=60, val_every=10, val_overlap=0.25,
        ),
    )
    tiny = Preset(
        "tiny",
        NetworkConfig(filters=(8, 16, 32, 64), strides=(1, 2, 2, 2), res_block=False),
        PreprocessConfig(target_spacing=(4.0, 4.0, 4.0)),
        # Measured (docs/training.md): 200 steps at lr 1e-2 reach mean Dice ~0.9 on the test suite's toy
        # phantoms in ~20 s on 2 cores; lr 3e-3 or 100 steps leave the small organs at 0.
        TrainConfig(epochs=40, iterations_per_epoch=5, patch_size=(32, 32, 32), learning_rate=1e-2, val_every=10),
    )
    return {p.name: p for p in (paper, cpu, tiny)}


PRESETS: dict[str, Preset] = _presets()


def get_preset(name: str, task: str = "organ") -> Preset:
    """Return preset `name` with the network's output channels set for `task`.

    Raises:
        ConfigError: unknown preset or task.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose 'organ' or 'tumor'")
    preset = PRESETS[name]
    channels = NUM_ORGAN_CHANNELS if task == "organ" else NUM_TUMOR_CHANNELS
    return dataclasses.replace(preset, network=dataclasses.replace(preset.network, out_channels=channels))


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build config dataclass `cls` from `data`, converting lists back to tuples and nested dicts.

    Raises:
        ConfigError: unknown or missing fields.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        nested = _NESTED.get((cls, key))
        if nested is not None:
            kwargs[key] = from_dict(nested, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


_NESTED: dict[tuple[type, str], type] = {(TrainConfig, "augment"): AugmentConfig}
