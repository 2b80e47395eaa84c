"""Frozen configuration objects: hyperparameters are data, serialised to JSON in the model folder.

Presets (`paper`, `cpu`, `tiny`) are values of the same classes, not new classes. Every class checks
its values when built (a NaN or a negative learning rate is a :class:`~flareseg.errors.ConfigError`
naming the field); :func:`apply_overrides` maps user settings (CLI flags, keyword arguments) onto the
fields of nested configs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flareseg.errors import ConfigError
from flareseg.labels import TASK_TABLE, TaskLabels

FORMAT_VERSION = 1
"""Version of the model-folder format written in config.json."""
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
"""What can run a network on sliding-window tiles (:mod:`flareseg.model.engine`; ``flareseg predict --engine``);
``auto`` picks one of the other three (:func:`flareseg.model.engine.resolve_engine`)."""

C = TypeVar("C")


def task_labels(task: str) -> TaskLabels:
    """The task table's entry (:data:`flareseg.labels.TASK_TABLE`) for `task`.

    Raises:
        ConfigError: an unknown task.
    """
    if task not in TASK_TABLE:
        raise ConfigError(f"unknown task {task!r}; choose {' or '.join(repr(t) for t in TASK_TABLE)}")
    return TASK_TABLE[task]


def _check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False) -> None:
    """Raise ConfigError unless `value` is a finite real number within the given bounds (NaN never is)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if ok:
        return
    if low is not None and high is not None:
        bounds = f" in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    elif low is not None:
        bounds = f" {'>' if open_low else '>='} {low}"
    else:
        bounds = ""
    raise ConfigError(f"{name} must be a finite number{bounds}, got {value!r}")


def _check_range(name: str, value: Any, *, low: float) -> None:
    """Raise ConfigError unless `value` is a pair of finite numbers ``low < a <= b``."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (low, high), got {value!r}") from None
    _check_real(name, a, low=low, open_low=True)
    _check_real(name, b, low=low, open_low=True)
    if a > b:
        raise ConfigError(f"{name} must be a range low <= high, got {value!r}")


MAX_PATCH = 1024
"""Largest patch or tile edge in voxels (a 1024^3 float32 tile is 4 GiB; nnU-Net's are <= ~320)."""
MAX_FEATURES = 4096
"""Most features of one network stage (nnU-Net caps at 320; the paper's network has 320)."""
SPACING_RANGE_MM = (0.05, 100.0)
"""Target voxel sizes outside this range are refused (0.05 mm would turn a CT into ~10^12 voxels)."""


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    """Raise ConfigError unless `value` is an integer (not a bool) in [low, high]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def _check_patch(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) != 3:
        raise ConfigError(f"{name} must be 3 positive integers, got {value!r}")
    for v in value:
        _check_int(name, v, low=1, high=MAX_PATCH)


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
    out_channels: int = TASK_TABLE["organ"].num_channels
    filters: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    kernel_size: int = 3
    res_block: bool = True
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        _check_int("network.in_channels", self.in_channels, low=1, high=16)
        _check_int("network.out_channels", self.out_channels, low=2, high=256)
        for name in ("filters", "strides"):
            if not isinstance(getattr(self, name), tuple) or not getattr(self, name):
                raise ConfigError(f"network.{name} must be a non-empty list of integers, got {getattr(self, name)!r}")
        for value in self.filters:
            _check_int("network.filters", value, low=1, high=MAX_FEATURES)
        for value in self.strides:
            _check_int("network.strides", value, low=1, high=4)
        _check_int("network.kernel_size", self.kernel_size, low=1, high=7)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"network.kernel_size must be odd, got {self.kernel_size}")
        _check_bool("network.res_block", self.res_block)
        _check_bool("network.deep_supervision", self.deep_supervision)
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


CROPS: tuple[str, ...] = ("body", "nonzero")
"""What a CT may be cropped to before resampling (:attr:`PreprocessConfig.crop`)."""
RESAMPLINGS: tuple[str, ...] = ("linear", "spline")
"""How a CT is resampled to the network's grid (:attr:`PreprocessConfig.resample`)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT is brought to the network's grid (DESIGN section 3).

    Attributes:
        target_spacing: voxel size in mm along the axes of the canonical LPS orientation.
        crop: what the CT is cropped to before resampling: ``"body"``, the bounding box of the largest
            connected region above `body_threshold_hu` plus `body_margin_mm` (flareseg's models);
            ``"nonzero"``, the bounding box of the voxels that are not 0, as nnU-Net crops (for a CT
            nearly always the whole volume; models imported from nnU-Net, which were trained so).
        body_threshold_hu: voxels above this HU count as body for the body crop.
        body_margin_mm: margin around the body bounding box.
        resample: how the CT is interpolated onto the network grid: ``"linear"``, smoothed first where
            the grid is coarser (anti-aliasing; flareseg's models); ``"spline"``, as nnU-Net resamples
            (third-order spline without smoothing, nearest neighbour along the low-resolution axis of
            an anisotropic scan; models imported from nnU-Net). Label maps are resampled one way.
    """

    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: str = "body"
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 5.0
    resample: str = "linear"

    def __post_init__(self) -> None:
        if len(self.target_spacing) != 3:
            raise ConfigError(f"preprocess.target_spacing must be 3 positive numbers, got {self.target_spacing}")
        for value in self.target_spacing:
            _check_real("preprocess.target_spacing", value, low=SPACING_RANGE_MM[0], high=SPACING_RANGE_MM[1])
        if self.crop not in CROPS:
            raise ConfigError(f"preprocess.crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.resample not in RESAMPLINGS:
            raise ConfigError(f"preprocess.resample must be one of {', '.join(RESAMPLINGS)}, got {self.resample!r}")
        _check_real("preprocess.body_threshold_hu", self.body_threshold_hu)
        _check_real("preprocess.body_margin_mm", self.body_margin_mm, low=0)


FINGERPRINT_HU_LIMIT = 1e5
"""Largest magnitude (HU) a fingerprint statistic may have: stored CT values lie within int16 or uint16."""


@dataclass(frozen=True)
class Fingerprint:
    """Foreground intensity statistics of the training set, in HU (DESIGN section 3)."""

    percentile_00_5: float
    percentile_99_5: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        for name in ("percentile_00_5", "percentile_99_5", "mean"):
            _check_real(f"fingerprint.{name}", getattr(self, name), low=-FINGERPRINT_HU_LIMIT, high=FINGERPRINT_HU_LIMIT)
        _check_real("fingerprint.std", self.std, low=1e-3, high=FINGERPRINT_HU_LIMIT)
        if not self.percentile_00_5 <= self.percentile_99_5:
            raise ConfigError(f"fingerprint percentiles out of order: {self.percentile_00_5} > {self.percentile_99_5}")


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentations (table 3), each drawn per patch with its probability, and one it lacks.

    Attributes:
        flip_x_prob, flip_y_prob: flips along axis 0 (I) and 1 (J) of the canonical LPS grid; a model
            trained with a flip is mirrored along that axis at test time (:func:`trained_mirror_axes`).
        smooth_prob, smooth_sigma: Gaussian smoothing, sigma range in voxels.
        noise_prob, noise_std: additive Gaussian noise (normalised intensity units).
        gamma_prob, gamma_range: gamma contrast.
        shift_prob, shift_offset: intensity shift by up to the offset (normalised units).
        spatial_prob, rotate_degrees, scale_range: a random rotation about each axis by up to
            `rotate_degrees` and a scaling of each axis by a factor drawn from `scale_range`, in one
            resampling (nnU-Net's spatial augmentation; not in the paper's table 3, so off by default).

    Raises:
        ConfigError: a probability outside [0, 1], a NaN, an empty or non-positive range.
    """

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
    spatial_prob: float = 0.0
    rotate_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.25)

    def __post_init__(self) -> None:
        for name in ("flip_x_prob", "flip_y_prob", "smooth_prob", "noise_prob", "gamma_prob", "shift_prob", "spatial_prob"):
            _check_real(f"augment.{name}", getattr(self, name), low=0.0, high=1.0)
        _check_range("augment.smooth_sigma", self.smooth_sigma, low=0.0)
        _check_range("augment.gamma_range", self.gamma_range, low=0.0)
        _check_real("augment.noise_std", self.noise_std, low=0.0)
        _check_real("augment.shift_offset", self.shift_offset, low=0.0)
        _check_real("augment.rotate_degrees", self.rotate_degrees, low=0.0, high=180.0)
        _check_range("augment.scale_range", self.scale_range, low=0.0)


def trained_mirror_axes(augment: AugmentConfig) -> tuple[int, ...]:
    """The network-grid axes a model trained with `augment` has seen flipped: its safe test-time mirrors.

    ``flip_x_prob > 0`` -> axis 0 (I of the canonical LPS grid), ``flip_y_prob > 0`` -> axis 1 (J).
    The axial axis K is never flipped in training, so it is never mirrored.
    """
    return tuple(axis for axis, prob in ((0, augment.flip_x_prob), (1, augment.flip_y_prob)) if prob > 0)


CASE_SELECTIONS = ("paper", "partial")
"""Values of ``TrainConfig.case_selection``."""

OPTIMIZERS = ("adam", "adamw", "sgd")
"""Values of ``TrainConfig.optimizer`` (:func:`flareseg.training.schedule.build_optimizer`)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training protocol (paper, tables 2 and 3).

    Attributes:
        epochs: total epochs; `iterations_per_epoch` batches each.
        batch_size: patches per optimiser step.
        patch_size: patch size in voxels at the target spacing.
        samples_per_image: patches drawn per loaded image.
        pos_fraction: fraction of patches centred on foreground.
        hard_negative_fraction: fraction of the background-centred patches centred in a lesion-host
            organ (the tumour model's hard negatives; no effect on the organ model, for which they are foreground).
        centre_jitter: a foreground-centred patch is centred up to this fraction of half its size away
            from the drawn foreground voxel along each axis (uniform; 0: on the voxel, as nnU-Net). With
            lesions always at the patch centre a network learns "the centre is lesion" before anything else
            (measured: probability 0.70 at the centre of lesion-free patches, 0.00 at 8 voxels from it).
        optimizer: :data:`OPTIMIZERS`: ``"adam"`` (the paper's), ``"adamw"`` (decoupled weight decay) or
            ``"sgd"`` (nnU-Net's: momentum 0.99, Nesterov).
        learning_rate: the optimiser's initial learning rate.
        poly_horizon_epochs, poly_exponent, lr_floor: lr(e) = max(lr_floor, lr * (1 - e/horizon)^exponent),
            and lr_floor for e >= horizon (the paper's formula is undefined past the horizon).
        warmup_steps: the first this many optimiser steps scale the rate linearly from 1/warmup_steps
            to 1 (0: none, the paper's).
        val_every: validate on the held-out split every this many epochs.
        val_overlap: overlap of the sliding windows that segment the validation cases (0.5: nnU-Net's step 0.5).
        max_minutes: stop after this wall time (None: no limit); the checkpoint stays resumable.
        case_selection: which cases train the model (:data:`CASE_SELECTIONS`). ``"paper"``: the paper's
            sets (organ model: cases with all 13 organs; tumour model: cases with lesion labels), plain
            Dice + CE. ``"partial"``: every case with at least one class of the task labelled (human or
            pseudo-label), with the marginal loss over the classes a case leaves unlabelled
            (:mod:`flareseg.training.loss`). Validation uses the paper's held-out cases in both.

    Raises:
        ConfigError: a count below 1, a NaN or infinite number, a learning rate <= 0, a fraction
            outside its range; the message names the field and the value.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (128, 128, 128)
    samples_per_image: int = 2
    pos_fraction: float = 0.5
    hard_negative_fraction: float = 0.0
    centre_jitter: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    poly_horizon_epochs: int = 500
    poly_exponent: float = 0.9
    lr_floor: float = 0.0
    warmup_steps: int = 0
    val_every: int = 10
    val_overlap: float = 0.5
    seed: int = 0
    max_minutes: float | None = None
    case_selection: str = "paper"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "batch_size", "samples_per_image", "val_every", "poly_horizon_epochs"):
            _check_int(f"train.{name}", getattr(self, name), low=1)
        _check_int("train.seed", self.seed, low=0)
        _check_int("train.warmup_steps", self.warmup_steps, low=0)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_patch("train.patch_size", self.patch_size)
        _check_real("train.pos_fraction", self.pos_fraction, low=0.0, high=1.0)
        _check_real("train.hard_negative_fraction", self.hard_negative_fraction, low=0.0, high=1.0)
        _check_real("train.centre_jitter", self.centre_jitter, low=0.0, high=1.0)
        _check_real("train.val_overlap", self.val_overlap, low=0.0, high=1.0, open_high=True)
        _check_real("train.learning_rate", self.learning_rate, low=0.0, open_low=True)
        _check_real("train.weight_decay", self.weight_decay, low=0.0)
        _check_real("train.poly_exponent", self.poly_exponent, low=0.0, open_low=True)
        _check_real("train.lr_floor", self.lr_floor, low=0.0)
        if self.max_minutes is not None:
            _check_real("train.max_minutes", self.max_minutes, low=0.0, open_low=True)
        if self.case_selection not in CASE_SELECTIONS:
            raise ConfigError(f"train.case_selection must be one of {', '.join(CASE_SELECTIONS)}, got {self.case_selection!r}")
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"train.augment must be an AugmentConfig, got {type(self.augment).__name__}")


FINE_TUNE_LR = 5e-5
FINE_TUNE_EPOCHS = 40


MIN_STEP = 0.1
"""The smallest sliding-window step: the tile count grows as 1/step^3 (0.1: 1,000x the tiles of step 1)."""
FLARESEG_TILE_STEP = 0.8
"""The step flareseg's own models run at in ``fast`` mode: at 0.5 they agree with 0.8 within 0.03 Dice
(docs/inference.md, "Agreement of fast with accurate") for 2-4x fewer tiles."""
NNUNET_TILE_STEP = 0.5
"""The step models trained by nnU-Net run at (its predictor's ``tile_step_size``): at 0.8 the peer's
liver agreed with nnU-Net's own output 0.85 where 0.5 gives 0.98 (docs/efficiency.md, "The peer")."""
TILE_ORIENTATIONS: tuple[str, ...] = ("canonical", "stored")
"""How the network sees each tile (:attr:`InferenceDefaults.orientation`)."""


@dataclass(frozen=True)
class InferenceDefaults:
    """How a model is meant to be run, as its training left it (the ``inference`` section of config.json).

    Training writes it (:func:`flareseg.model.folder.inference_defaults`); the predictor reads it, so the
    tiles, their padding and the test-time mirrors are those the network was trained for.

    Attributes:
        patch_size: sliding-window tile in voxels (I, J, K) of the network grid: the training patch.
        mirror_axes: network-grid axes (0, 1, 2) the model may be mirrored along at test time: the
            axes its augmentation flipped (:func:`trained_mirror_axes`).
        pad_value: normalised intensity that tiles reaching past the image are padded with: the
            normalised value of air (the fingerprint's lower clip bound), as training pads patches.
        step: the sliding-window step (a fraction of the patch) the model runs at where the mode
            leaves the step to the model (``fast``): FLARESEG_TILE_STEP for flareseg's models (and
            folders written before the field), NNUNET_TILE_STEP for nnU-Net's.
        orientation: how each tile is shown to the network: ``"canonical"``, as it lies on the LPS
            grid (flareseg's models, trained on reoriented images); ``"stored"``, flipped along the
            LPS axes that the input's stored voxel order runs against (nnU-Net's models, trained
            on the arrays as stored; a permutation of the stored axes is not undone).
    """

    patch_size: tuple[int, int, int]
    mirror_axes: tuple[int, ...] = ()
    pad_value: float = 0.0
    step: float = FLARESEG_TILE_STEP
    orientation: str = "canonical"

    def __post_init__(self) -> None:
        _check_patch("inference.patch_size", self.patch_size)
        if self.orientation not in TILE_ORIENTATIONS:
            raise ConfigError(f"inference.orientation must be one of {', '.join(TILE_ORIENTATIONS)}, got {self.orientation!r}")
        axes = self.mirror_axes
        if not isinstance(axes, tuple) or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
            raise ConfigError(f"inference.mirror_axes must be distinct axes among 0, 1, 2; got {axes!r}")
        _check_real("inference.pad_value", self.pad_value, low=-1e6, high=1e6)  # a normalised intensity: float32-safe
        _check_real("inference.step", self.step, low=MIN_STEP, high=1.0)


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
        # The whole body crop in one 64x48x48 patch at 6 mm (scripts/bench_learning.py, docs/training.md):
        # every step sees every organ, which learns ~6x faster per step than 48^3-64^3 patches at 2.5-4 mm
        # (held-out mean Dice 0.63 after 1,000 steps against 0.04-0.11); plain blocks and no deep
        # supervision make a step ~1.2x cheaper. No flips: a flip mirrors left and right organs without
        # swapping their labels, and without them the same 750 steps reach validation mean Dice 0.60
        # after 500 steps instead of 0.48 (0.62 / 0.59 after 750). One image a step: 0.77 s instead of
        # 0.97 s for two, and in the same 13 minutes 1,000 steps of one image reached 0.64 where 750 of
        # two reached 0.61-0.62 (bench_learning recipe b1). A 50-step linear warm-up leaves the loss plateau
        # of the first few hundred steps sooner: 0.19 / 0.52 / 0.58 / 0.65 after 250 / 500 / 750 / 1,000 steps
        # where the same cohort without it had 0.12 / 0.49 / - / 0.56 (recipe warm50); it costs nothing.
        NetworkConfig(filters=(8, 16, 32, 64, 128), strides=(1, 2, 2, 2, 2), res_block=False, deep_supervision=False),
        PreprocessConfig(target_spacing=(6.0, 6.0, 6.0)),
        TrainConfig(
            epochs=40, iterations_per_epoch=25, batch_size=1, patch_size=(64, 48, 48), samples_per_image=1, learning_rate=1e-2,
            poly_horizon_epochs=40, warmup_steps=50, val_every=10, val_overlap=0.25,
            augment=AugmentConfig(flip_x_prob=0.0, flip_y_prob=0.0),
        ),
    )
    cpu_quick = Preset(
        "cpu-quick",
        # The cpu preset for a budget of 400 steps (the quick demo): with deep supervision it leaves the loss
        # plateau of the first few hundred steps early, validation mean Dice 0.34 after 200 steps where the cpu
        # preset has 0.09 (0.38 against 0.12 after 250 on the demo's cohort; by 1,000 steps both are at
        # 0.56-0.64, so the cpu preset keeps its 6% cheaper step), 0.57 after 300 and 0.59 after 400 on the
        # quick cohort (docs/training.md). Its rate follows the first 400 steps of the cpu preset's 1,000
        # (poly horizon 40 epochs), so a run the quick demo's time cap stops early on a slow machine has
        # learnt what the same steps of a planned shorter run would: annealed over its own 8 epochs it learnt
        # less (0.105 fast-mode organ DSC against 0.139). No warm-up: with deep supervision it adds nothing
        # (0.337 with a 50-step warm-up against 0.343 without after 200 steps; recipes dswarm50 and ds).
        dataclasses.replace(cpu.network, deep_supervision=True),
        cpu.preprocess,
        dataclasses.replace(cpu.train, epochs=16, warmup_steps=0),
    )
    cpu_lesion = Preset(
        "cpu-lesion",
        # The tumour model: 32^3 patches at 3 mm (lesions are a few voxels at 6 mm), 67% of them holding a
        # lesion at a random place (centre_jitter: centred lesions teach "the centre is lesion"), normalised
        # by the lesion voxels' fingerprint. Measured (docs/training.md): validation lesion Dice 0.07 after
        # 500 steps, 0.08 after 750, 0.09 after 1,000; it learns, but far too slowly for the demo's minutes,
        # and 600 steps keep the demo within its 20 minutes.
        NetworkConfig(filters=(8, 16, 32, 64, 128), strides=(1, 2, 2, 2, 2), res_block=False, deep_supervision=False),
        PreprocessConfig(target_spacing=(3.0, 3.0, 3.0)),
        TrainConfig(
            epochs=24, iterations_per_epoch=25, patch_size=(32, 32, 32), learning_rate=1e-2, pos_fraction=0.67, centre_jitter=0.9,
            poly_horizon_epochs=24, val_every=8, val_overlap=0.25,
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
    return {p.name: p for p in (paper, cpu, cpu_quick, cpu_lesion, tiny)}


PRESETS: dict[str, Preset] = _presets()


def get_preset(name: str, task: str = "organ") -> Preset:
    """Return preset `name` with the network's output channels set for `task`.

    Raises:
        ConfigError: unknown preset or task.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    channels = task_labels(task).num_channels
    preset = PRESETS[name]
    return dataclasses.replace(preset, network=dataclasses.replace(preset.network, out_channels=channels))


def override_paths(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides as ``{dotted path: value}``: ``{"train": {"lr": 1}, "a.b": 2}`` -> ``{"train.lr": 1, "a.b": 2}``.

    A mapping value always opens a section; any other value (lists included) is a leaf.
    """
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{inner}": v for inner, v in override_paths(value).items()})
        else:
            out[str(key)] = value
    return out


def apply_overrides(obj: C, overrides: Mapping[str, Any] | None, *, prefix: str = "") -> C:
    """A copy of the frozen (nested) config dataclass `obj` with `overrides` applied.

    Args:
        obj: a config dataclass, e.g. a :class:`Preset` or an ``InferenceConfig``.
        overrides: dotted paths or nested mappings, e.g. ``{"train.learning_rate": 1e-3, "network":
            {"filters": [8, 16, 32, 64]}}``; lists become tuples. Each changed object is rebuilt, so
            its class validates the new values.
        prefix: how error messages name `obj` (``"inference"``: ``inference.step``).

    Raises:
        ConfigError: an unknown field (the message lists the known ones), a path into a field that is
            not a section, or a value the class refuses (the message names the field).
    """
    tree: dict[str, Any] = {}
    for path, value in override_paths(overrides).items():
        *sections, leaf = path.split(".")
        node = tree
        for depth, part in enumerate(sections):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"conflicting settings: {'.'.join(sections[:depth + 1])!r} is given both as a value and as a section")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"conflicting settings: {path!r} is given both as a value and as a section")
        node[leaf] = value
    return _apply_tree(obj, tree, prefix)


def _apply_tree(obj: Any, tree: Mapping[str, Any], prefix: str) -> Any:
    """`obj` rebuilt once with every change of `tree` (field -> value, or field -> subtree of a section),
    so that settings that must agree (``network.filters`` and ``network.strides``) are validated together."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in tree.items():
        full = f"{prefix}.{name}" if prefix else name
        if name not in names:
            raise ConfigError(f"unknown setting {full!r}: {type(obj).__name__} has no field {name!r} (fields: {', '.join(sorted(names))})")
        if isinstance(value, dict):
            inner = getattr(obj, name)
            if not dataclasses.is_dataclass(inner):
                raise ConfigError(f"unknown setting {full + '.' + next(iter(value))!r}: {name!r} is a value, not a section")
            changes[name] = _apply_tree(inner, value, full)
        else:
            changes[name] = tuple(value) if isinstance(value, list) else value
    try:
        return dataclasses.replace(obj, **changes)
    except TypeError as exc:  # a comparison in a validator met a value of the wrong type
        given = ", ".join(f"{prefix + '.' if prefix else ''}{k}={v!r}" for k, v in changes.items() if not dataclasses.is_dataclass(v))
        raise ConfigError(f"invalid value among {given}: {exc}") from None


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
