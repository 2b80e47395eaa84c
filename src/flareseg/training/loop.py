"""Training of the organ and tumour models (DESIGN section 5), resumable, into a self-describing folder.

Protocol (each a value of :class:`~flareseg.config.TrainConfig`): patches of ``patch_size`` from the
preprocessed cases, ``samples_per_image`` per loaded image, a fraction ``pos_fraction`` centred on
foreground (class-balanced: a random class present, then a random voxel of it, as nnU-Net does);
the paper's augmentations (:mod:`flareseg.training.augment`); loss = soft Dice after softmax + cross-entropy
(MONAI ``DiceCELoss``) with the Dice over the foreground channels only and pooled over the batch
(nnU-Net's ``do_bg=False``, ``batch_dice=True``: background Dice is near 1 and carries no signal, and
a patch without lesion would otherwise give a meaningless per-sample Dice); Adam; the poly schedule
:func:`poly_lr`. An epoch is ``iterations_per_epoch`` optimiser steps of ``batch_size`` patches.

Every ``val_every`` epochs, and at the last epoch, the held-out cases are segmented whole on the
network grid (sliding window, ``val_overlap``, Gaussian blending) and the Dice of every foreground
class is logged; the weights with the best mean foreground Dice are ``model.safetensors``.

The output folder (a model folder, :mod:`flareseg.model.folder`)::

    config.json               ModelConfig: task, preset, network, preprocess, fingerprint, train, data, versions
    model.safetensors         best weights (by validation mean foreground Dice; the last ones before any validation)
    model_last.safetensors    weights after the last completed epoch
    checkpoint.safetensors    model + optimiser tensors; epoch, best score, schedule in its metadata
    train_log.jsonl           one JSON row per completed epoch
    training_curve.png        loss and validation Dice per epoch

Resuming (``resume=True``) reads the checkpoint, drops log rows after its epoch, and continues with
the next epoch: the data of epoch ``e`` depend only on ``(seed, e)``, so an interrupted and resumed
run draws the same patches as an uninterrupted one. No pickle is written or read anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flareseg import __version__
from flareseg.training.augment import BG_INDICES_KEY, FG_INDICES_KEY, IMAGE_KEY, LABEL_KEY, build_augmentation, build_patch_sampler, pad_widths
from flareseg.data.cache import CACHE_DIRNAME, CachedCase, CaseCache, SourceCase, source_cases
from flareseg.config import (
    FINE_TUNE_EPOCHS,
    FINE_TUNE_LR,
    TASKS,
    Fingerprint,
    NetworkConfig,
    PreprocessConfig,
    TrainConfig,
    from_dict,
    get_preset,
)
from flareseg.data.cohort import MANIFEST_FILE
from flareseg.errors import ConfigError, InputError, ModelFolderError
from flareseg.io import atomic_write_bytes, read_json, remove_stale_temporaries, save_figure
from flareseg.labels import LESION, ORGAN_IDS, name_of
from flareseg.transforms.preprocessing import pad_value_of
from flareseg.model.network import build_network
from flareseg.model.folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    channel_labels_for,
    read_model_config,
    save_tensors,
    write_model_config,
)

log = logging.getLogger(__name__)

LAST_WEIGHTS_FILE = "model_last.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "training_curve.png"
CHECKPOINT_FORMAT = 1
FG_CENTRES_PER_CLASS = 64
"""Foreground centre candidates drawn per present class for one image (class-balanced sampling)."""
BG_CENTRES = 256
"""Background centre candidates drawn for one image (uniform over background voxels)."""
RESUMABLE_OVERRIDES = ("train.epochs", "train.max_minutes", "train.val_every")
"""The only settings a resumed run may change."""


# --------------------------------------------------------------------------- schedule


def poly_lr(epoch: float, *, base_lr: float, horizon: float, exponent: float = 0.9, floor: float = 0.0) -> float:
    """The paper's poly schedule with its undefined tail fixed: ``max(floor, base_lr * (1 - epoch/horizon)^exponent)``.

    The paper's ``lr * (1 - epoch/500)^0.9`` raises a negative number to a fractional power past
    epoch 500 (NaN or complex); here the factor is clamped at 0, so the rate is ``floor`` from
    ``horizon`` on (``floor`` = 0 by default: training past the horizon leaves the weights unchanged
    unless a floor is set).

    Args:
        epoch: 0-based epoch index (0 gives ``base_lr``).
        base_lr: initial learning rate (> 0).
        horizon: epochs over which the rate decays (> 0).
        exponent: poly exponent.
        floor: lower bound of the rate (>= 0).

    Raises:
        ValueError: a non-positive `base_lr` or `horizon`, a negative `epoch` or `floor`.
    """
    if base_lr <= 0 or horizon <= 0:
        raise ValueError(f"poly_lr needs base_lr > 0 and horizon > 0, got base_lr={base_lr}, horizon={horizon}")
    if epoch < 0 or floor < 0:
        raise ValueError(f"poly_lr needs epoch >= 0 and floor >= 0, got epoch={epoch}, floor={floor}")
    factor = max(0.0, 1.0 - float(epoch) / float(horizon))
    return max(float(floor), float(base_lr) * factor**exponent)


def lr_for_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 1-based `epoch` under `cfg` (epoch 1 uses ``cfg.learning_rate``)."""
    return poly_lr(epoch - 1, base_lr=cfg.learning_rate, horizon=cfg.poly_horizon_epochs, exponent=cfg.poly_exponent, floor=cfg.lr_floor)


# --------------------------------------------------------------------------- labels per task


def target_lut(task: str) -> np.ndarray:
    """(256,) uint8 lookup table from FLARE ids to the task's class indices.

    organ: ids 1-13 keep their value, the lesion (14) and anything else become 0;
    tumor: 14 -> 1, everything else 0.
    """
    lut = np.zeros(256, dtype=np.uint8)
    if task == "organ":
        lut[list(ORGAN_IDS)] = list(ORGAN_IDS)
    elif task == "tumor":
        lut[LESION] = 1
    else:
        raise ConfigError(f"unknown task {task!r}; choose 'organ' or 'tumor'")
    return lut


def foreground_ids(task: str) -> tuple[int, ...]:
    """FLARE ids that are foreground for `task`."""
    return tuple(ORGAN_IDS) if task == "organ" else (LESION,)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class TrainingData:
    """The part of a prepared cohort's manifest that training reads."""

    prepared_dir: Path
    source: str
    fingerprint: Fingerprint
    train: list[SourceCase]
    val: list[SourceCase]


def load_training_data(prepared_dir: str | os.PathLike, task: str) -> TrainingData:
    """Read ``manifest.json`` of a prepared cohort (written by ``flareseg prepare``) for `task`.

    Raises:
        InputError: no manifest, invalid JSON, no fingerprint, or no training case for `task`.
    """
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST_FILE
    if not path.is_file():
        raise InputError(f"{prepared_dir}: no {MANIFEST_FILE}; run `flareseg prepare` first")
    manifest = read_json(path)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose 'organ' or 'tumor'")
    if not manifest.get("fingerprint"):
        raise InputError(f"{path}: no intensity fingerprint (no labelled training case?)")
    fingerprint = from_dict(Fingerprint, manifest["fingerprint"])
    split = manifest.get(task) or {}
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    if not train_names:
        what = "all 13 organs labelled" if task == "organ" else "lesion labels"
        raise InputError(f"{path}: no training case for the {task} model (no case with {what})")
    entries = manifest.get("cases", [])
    train, val = source_cases(entries, train_names), source_cases(entries, val_names)
    for case in train + val:
        if case.label is None:
            raise InputError(f"{path}: case {case.name} is in the {task} split but has no label file")
    return TrainingData(prepared_dir, str(manifest.get("source", "")), fingerprint, train, val)


# --------------------------------------------------------------------------- configuration


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _replace_path(obj: Any, parts: list[str], value: Any, full: str) -> Any:
    fields = {f.name for f in dataclasses.fields(obj)}
    if parts[0] not in fields:
        raise ConfigError(f"unknown setting {full!r}: {type(obj).__name__} has no field {parts[0]!r} (fields: {', '.join(sorted(fields))})")
    if len(parts) > 1:
        inner = getattr(obj, parts[0])
        if not dataclasses.is_dataclass(inner):
            raise ConfigError(f"unknown setting {full!r}: {parts[0]!r} is not a section")
        value = _replace_path(inner, parts[1:], value, full)
    elif isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(obj, **{parts[0]: value})


def apply_overrides(
    network: NetworkConfig, preprocess: PreprocessConfig, train: TrainConfig, overrides: Mapping[str, Any] | None
) -> tuple[NetworkConfig, PreprocessConfig, TrainConfig]:
    """Apply overrides such as ``{"train.learning_rate": 1e-3, "network": {"filters": [8, 16, 32]}}``.

    Keys are dotted paths under ``network``, ``preprocess``, ``train`` (``augment.*`` is short for
    ``train.augment.*``); values are validated by the config classes.

    Raises:
        ConfigError: an unknown key or an invalid value.
    """
    sections = {"network": network, "preprocess": preprocess, "train": train}
    for key, value in _flatten(overrides or {}).items():
        parts = key.split(".")
        if parts[0] == "augment":
            parts = ["train"] + parts
        if parts[0] not in sections or len(parts) < 2:
            raise ConfigError(f"unknown setting {key!r}: expected network.*, preprocess.*, train.* or augment.*")
        sections[parts[0]] = _replace_path(sections[parts[0]], parts[1:], value, key)
    return sections["network"], sections["preprocess"], sections["train"]  # type: ignore[return-value]


def _check_patch(network: NetworkConfig, train: TrainConfig) -> None:
    bad = [p for p in train.patch_size if p % network.divisor]
    if len(train.patch_size) != 3 or bad:
        raise ConfigError(f"train.patch_size {train.patch_size} must be 3 multiples of {network.divisor} (the network's total stride)")


def versions() -> dict[str, str]:
    """Versions of the libraries a model was trained with."""
    import monai

    return {
        "flareseg": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- patches


def _centre_candidates(case: CachedCase, task: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of foreground (class-balanced) and background (uniform) patch-centre candidates."""
    ids, flat = case.locations[:, 0], case.locations[:, 1]
    fg_ids = [i for i in foreground_ids(task) if case.counts.get(i, 0) > 0]
    fg_parts = []
    for value in fg_ids:
        pool = flat[ids == value]
        if len(pool):
            fg_parts.append(rng.choice(pool, size=FG_CENTRES_PER_CLASS, replace=True))
    fg = np.concatenate(fg_parts) if fg_parts else np.zeros(0, dtype=np.int64)
    bg_mask = ~np.isin(ids, fg_ids)
    bg_pool, bg_values = flat[bg_mask], ids[bg_mask]
    if len(bg_pool):
        # Each stored location stands for count/stored voxels of its label: weight by that to be uniform.
        values, inverse, stored = np.unique(bg_values, return_inverse=True, return_counts=True)
        weights = (np.array([case.counts.get(int(v), 1) for v in values], dtype=float) / stored)[inverse]
        bg = rng.choice(bg_pool, size=BG_CENTRES, replace=True, p=weights / weights.sum())
    else:
        bg = np.zeros(0, dtype=np.int64)
    return fg.astype(np.int64), bg.astype(np.int64)


def _shift_indices(flat: np.ndarray, shape: Sequence[int], widths: Sequence[tuple[int, int]], new_shape: Sequence[int]) -> np.ndarray:
    coords = np.unravel_index(flat, tuple(shape))
    return np.ravel_multi_index(tuple(c + w[0] for c, w in zip(coords, widths)), tuple(new_shape)).astype(np.int64)


def sample_patches(
    case: CachedCase,
    task: str,
    cfg: TrainConfig,
    *,
    rng: np.random.Generator,
    sampler: Any,
    augmentation: Any,
    pad_value: float,
    lut: np.ndarray | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Draw ``cfg.samples_per_image`` augmented patches from one cached case.

    Returns:
        Dictionaries with ``"image"`` (1, *patch) float32 and ``"label"`` (1, *patch) uint8 task
        class indices. A case smaller than the patch is padded (image with `pad_value`, the
        normalised value of air; label with background).
    """
    if case.label is None:
        raise InputError(f"case {case.name} has no label: it cannot be used for training")
    lut = target_lut(task) if lut is None else lut
    image, label = case.image, case.label
    fg, bg = _centre_candidates(case, task, rng)
    widths = pad_widths(image.shape, cfg.patch_size)
    if any(w != (0, 0) for w in widths):
        shape = image.shape
        image = np.pad(np.asarray(image), widths, mode="constant", constant_values=pad_value)
        label = np.pad(np.asarray(label), widths, mode="constant", constant_values=0)
        fg, bg = _shift_indices(fg, shape, widths, image.shape), _shift_indices(bg, shape, widths, image.shape)
    if len(fg) == 0 and len(bg) == 0:
        bg = rng.integers(0, int(np.prod(image.shape)), size=BG_CENTRES)
    data = {
        IMAGE_KEY: torch.from_numpy(image)[None],
        LABEL_KEY: torch.from_numpy(label)[None],
        FG_INDICES_KEY: fg,
        BG_INDICES_KEY: bg,
    }
    with warnings_silenced():
        patches = sampler(data)
    out = []
    for patch in patches:
        img = torch.as_tensor(patch[IMAGE_KEY]).as_subclass(torch.Tensor).float().contiguous()
        lab = torch.from_numpy(lut[np.asarray(patch[LABEL_KEY])])
        item = augmentation({IMAGE_KEY: img, LABEL_KEY: lab})
        out.append(
            {
                IMAGE_KEY: torch.as_tensor(item[IMAGE_KEY]).as_subclass(torch.Tensor).float().contiguous(),
                LABEL_KEY: torch.as_tensor(item[LABEL_KEY]).as_subclass(torch.Tensor).to(torch.uint8).contiguous(),
            }
        )
    return out


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    """Silence MONAI's 'no foreground, using background only' warnings for one call."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class PatchStream(IterableDataset):
    """An endless stream of training patches for one epoch: random case, then its patches.

    The random state depends only on ``(seed, epoch, rank, worker id)``: the same epoch draws the same
    patches whether or not the run was interrupted before it.
    """

    def __init__(
        self,
        cache: CaseCache,
        names: Sequence[str],
        task: str,
        cfg: TrainConfig,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        pad_value: float,
    ) -> None:
        if not names:
            raise InputError("no training case to draw patches from")
        self.cache, self.names, self.task, self.cfg = cache, list(names), task, cfg
        self.seed, self.epoch, self.rank, self.pad_value = seed, epoch, rank, pad_value

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        sampler = build_patch_sampler(self.cfg)
        sampler.set_random_state(seed=int(rng.integers(2**31 - 1)))
        augmentation = build_augmentation(self.cfg.augment)
        augmentation.set_random_state(seed=int(rng.integers(2**31 - 1)))
        lut = target_lut(self.task)
        while True:
            name = self.names[int(rng.integers(len(self.names)))]
            case = self.cache.load(name, mmap_mode="c")
            yield from sample_patches(
                case, self.task, self.cfg, rng=rng, sampler=sampler, augmentation=augmentation, pad_value=self.pad_value, lut=lut
            )


# --------------------------------------------------------------------------- validation


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """Dice of classes 1..num_classes-1 between two label maps of the same shape (any device).

    Follows the FLARE convention: both masks empty -> 1, exactly one empty -> 0.

    Returns:
        (num_classes - 1,) float64.
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    confusion = torch.bincount(pred * num_classes + target, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu().double()
    inter = confusion.diagonal()[1:]
    size_p, size_t = confusion.sum(1)[1:], confusion.sum(0)[1:]
    denom = size_p + size_t
    dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
    return dice.numpy()


def validate(
    network: torch.nn.Module,
    cases: Sequence[CachedCase],
    task: str,
    cfg: TrainConfig,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Segment each case whole on its network grid and score it.

    Sliding window of ``cfg.patch_size`` with ``cfg.val_overlap`` overlap and Gaussian blending.

    Returns:
        (n_cases, n_classes - 1) Dice per case and foreground class.
    """
    from monai.inferers import sliding_window_inference

    lut = target_lut(task)
    num_classes = len(channel_labels_for(task))
    rows = []
    was_training = network.training
    network.eval()
    try:
        for case in cases:
            image = torch.from_numpy(np.asarray(case.image, dtype=np.float32))[None, None].to(device)
            target = torch.from_numpy(lut[np.asarray(case.label)]).to(device)
            autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                logits = sliding_window_inference(
                    image, tuple(cfg.patch_size), 1, network, overlap=cfg.val_overlap, mode="gaussian", padding_mode="replicate"
                )
                pred = torch.as_tensor(logits).argmax(1)[0]
            rows.append(dice_per_class(pred, target, num_classes))
    finally:
        network.train(was_training)
    return np.stack(rows) if rows else np.zeros((0, num_classes - 1))


# --------------------------------------------------------------------------- checkpoints


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


def save_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any], scaler: Any = None) -> None:
    """Model and optimiser tensors in one safetensors file; the rest (epoch, scores, optimiser
    hyperparameters, scaler state) as JSON in its metadata. Written atomically."""
    tensors = {f"model.{k}": v for k, v in _unwrap(network).state_dict().items()}
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "format": str(CHECKPOINT_FORMAT),
        "meta": json.dumps(meta),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    save_tensors(tensors, path, metadata=metadata)


def load_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> dict[str, Any]:
    """Restore `network` and `optimizer` (and `scaler`) from :func:`save_checkpoint`; returns its meta.

    Raises:
        ConfigError: a missing, foreign or mismatched checkpoint.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ConfigError(f"{path}: unreadable checkpoint: {exc}") from None
    if metadata.get("format") != str(CHECKPOINT_FORMAT):
        raise ConfigError(f"{path}: not a flareseg checkpoint of format {CHECKPOINT_FORMAT}")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        _unwrap(network).load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: the checkpoint does not fit the network in config.json: {str(exc).splitlines()[0]}") from None
    states: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            states.setdefault(int(index), {})[name] = value
    for index, entry in json.loads(metadata["optim_scalars"]).items():
        states.setdefault(int(index), {}).update(entry)
    groups = json.loads(metadata["param_groups"])
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": states, "param_groups": groups})
    scaler_state = json.loads(metadata.get("scaler", "null"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    return json.loads(metadata["meta"])


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``train_log.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping a torn line", path)
    return rows


def _write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def write_training_curve(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str = "") -> None:
    """Plot training loss and validation Dice (mean and per class) against epoch into a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], color="tab:blue", label="train loss (Dice + CE)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(epochs, [r["lr"] for r in rows], color="tab:gray", linestyle=":", label="lr")
    ax_lr.set_ylabel("learning rate", color="tab:gray")
    validated = [r for r in rows if "val_mean_dice" in r]
    if validated:
        ve = [r["epoch"] for r in validated]
        for name in validated[-1]["val_dice"]:
            ax_dice.plot(ve, [r["val_dice"].get(name, np.nan) for r in validated], linewidth=0.7, alpha=0.5)
        ax_dice.plot(ve, [r["val_mean_dice"] for r in validated], color="black", linewidth=2, marker="o", label="mean foreground")
        ax_dice.legend(loc="lower right")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _safetensors_meta(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:
        return {}


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs: device, mixed precision, distributed rank."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_runtime(device: str | torch.device = "cpu") -> Runtime:
    """Pick the device and precision, and join a torchrun process group when ``WORLD_SIZE`` > 1.

    ``"auto"`` takes CUDA when present. On CUDA, autocast with bfloat16 where supported, else float16
    (with a gradient scaler); on CPU, float32 (bfloat16 is very slow on CPUs without native support).

    Raises:
        ConfigError: CUDA asked for but not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available")
        if world > 1:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dev.type == "cpu":
        amp = None
    else:
        raise ConfigError(f"unsupported device {name!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    return Runtime(dev, amp, rank, world, local_rank)


def _broadcast(value: Any, runtime: Runtime) -> Any:
    if runtime.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _mean_across(value: float, runtime: Runtime) -> float:
    if runtime.world_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / runtime.world_size


# --------------------------------------------------------------------------- training


def _loss_fn() -> torch.nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


def _compute_loss(loss_fn: torch.nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.dim() == target.dim() + 1:  # deep supervision: (B, heads, C, X, Y, Z), full resolution each
        heads = output.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * loss_fn(output[:, i], target) for i, w in enumerate(weights.tolist()))  # type: ignore[return-value]
    return loss_fn(output, target)


def default_workers(device: torch.device) -> int:
    """Data-loading processes: none on CPU, where drawing a batch costs ~1% of a training step
    (measured, docs/training.md) and a worker would only take a core from the network's threads;
    up to 4 beside a GPU, whose steps are fast enough for the augmentation to matter."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def initial_network(network_cfg: NetworkConfig, init_from: str | os.PathLike | None, *, seed: int) -> torch.nn.Module:
    """A freshly initialised network (He-normal, seeded), or one holding the weights of model folder `init_from`.

    Raises:
        ModelFolderError: `init_from` is not a model folder or its weights do not fit `network_cfg`.
    """
    torch.manual_seed(seed)
    network = build_network(network_cfg)
    if init_from is not None:
        path = Path(init_from) / WEIGHTS_FILE
        if not path.is_file():
            raise ModelFolderError(f"{init_from}: no weights file {WEIGHTS_FILE} to fine-tune from")
        try:
            network.load_state_dict(load_file(str(path)), strict=True)
        except (RuntimeError, OSError, SafetensorError) as exc:
            raise ModelFolderError(f"{path}: weights do not fit the network: {str(exc).splitlines()[0]}") from None
    return network


def resolve_model_config(
    prepared_dir: str | os.PathLike,
    *,
    task: str,
    preset: str = "cpu",
    epochs: int | None = None,
    init_from: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, TrainingData]:
    """The configuration a new training run will use, and its data (nothing is trained or written).

    From scratch: the preset's network, preprocessing and protocol, then `overrides`, then `epochs`.
    Fine-tuning (`init_from` a model folder of the same task): that model's network, preprocessing,
    fingerprint and protocol with lr ``FINE_TUNE_LR`` and ``FINE_TUNE_EPOCHS`` epochs, then
    `overrides`, then `epochs`.

    Raises:
        ConfigError: unknown preset, task or setting, or a fine-tuning source of another task.
        InputError: the prepared cohort cannot be read.
    """
    data = load_training_data(prepared_dir, task)
    if init_from is not None:
        base = read_model_config(init_from)
        if base.task != task:
            raise ConfigError(f"{init_from} is a {base.task} model; cannot fine-tune it as a {task} model")
        network, preprocess, fingerprint = base.network, base.preprocess, base.fingerprint
        train = dataclasses.replace(base.train, learning_rate=FINE_TUNE_LR, epochs=FINE_TUNE_EPOCHS, max_minutes=None)
        preset_name = base.preset
    else:
        p = get_preset(preset, task)
        network, preprocess, train, fingerprint, preset_name = p.network, p.preprocess, p.train, data.fingerprint, p.name
    network, preprocess, train = apply_overrides(network, preprocess, train, overrides)
    if epochs is not None:
        train = dataclasses.replace(train, epochs=int(epochs))
    if network.out_channels != len(channel_labels_for(task)):
        raise ConfigError(f"network.out_channels is {network.out_channels}; the {task} model needs {len(channel_labels_for(task))}")
    _check_patch(network, train)
    summary = {
        "prepared": str(Path(prepared_dir).resolve()),
        "source": data.source,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "train_cases": [c.name for c in data.train],
        "val_cases": [c.name for c in data.val],
        "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
    }
    cfg = ModelConfig(
        task=task,
        preset=preset_name,
        network=network,
        preprocess=preprocess,
        fingerprint=fingerprint,
        train=train,
        channel_labels=channel_labels_for(task),
        data=summary,
        versions=versions(),
    )
    return cfg, data


def _resume_config(out_dir: Path, epochs: int | None, overrides: Mapping[str, Any] | None) -> ModelConfig:
    cfg = read_model_config(out_dir)
    flat = _flatten(overrides or {})
    bad = [k for k in flat if k not in RESUMABLE_OVERRIDES]
    if bad:
        raise ConfigError(f"a resumed run keeps its configuration; only {', '.join(RESUMABLE_OVERRIDES)} may change, got {bad}")
    _, _, train = apply_overrides(cfg.network, cfg.preprocess, cfg.train, flat)
    if epochs is not None:
        train = dataclasses.replace(train, epochs=int(epochs))
    return dataclasses.replace(cfg, train=train)


def train(
    prepared_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: str,
    preset: str = "cpu",
    epochs: int | None = None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    num_workers: int | None = None,
    cache_workers: int = 1,
) -> Path:
    """Train the organ or tumour model on a prepared cohort into the model folder `out_dir`.

    Args:
        prepared_dir: folder with ``manifest.json`` from ``flareseg prepare``; the preprocessed cases are
            cached under ``prepared_dir/cache`` and reused by later runs and by the other task.
        out_dir: the model folder to write (created). A folder that already holds a run needs ``resume``.
        task: ``"organ"`` (14 channels: background + 13 organs; lesion voxels count as background) or
            ``"tumor"`` (2 channels: background, lesion).
        preset: ``"paper"``, ``"cpu"`` or ``"tiny"`` (see :mod:`flareseg.config`).
        epochs: total epochs, overriding the preset (or the stored config when resuming).
        resume: continue the run in `out_dir` after its last completed epoch (a missing checkpoint
            starts afresh).
        init_from: model folder to fine-tune from (lr ``FINE_TUNE_LR``, ``FINE_TUNE_EPOCHS`` epochs
            unless overridden).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        overrides: settings such as ``{"train.learning_rate": 1e-3, "train.max_minutes": 6}``
            (see :func:`apply_overrides`); a resumed run accepts only ``RESUMABLE_OVERRIDES``.
        progress: show a progress bar (loss, lr, it/s).
        num_workers: data-loading processes (None: :func:`default_workers`).
        cache_workers: processes that preprocess uncached cases.

    Returns:
        `out_dir`, a model folder ready for prediction.

    Raises:
        ConfigError: invalid settings, an existing run without ``resume``, a broken checkpoint.
        InputError: an unreadable prepared cohort or case.
    """
    out_dir = Path(out_dir)
    runtime = resolve_runtime(device)
    has_run = (out_dir / CHECKPOINT_FILE).is_file() or (out_dir / CONFIG_FILE).is_file()
    if resume and (out_dir / CHECKPOINT_FILE).is_file():
        cfg = _resume_config(out_dir, epochs, overrides)
        if cfg.task != task:
            raise ConfigError(f"{out_dir} holds a {cfg.task} run; cannot resume it as {task}")
        data = load_training_data(prepared_dir, task)
        # The stored split decides which cases are trained on.
        entries = {c.name: c for c in data.train + data.val}
        missing = [n for n in cfg.data.get("train_cases", []) + cfg.data.get("val_cases", []) if n not in entries]
        if missing:
            raise InputError(f"{prepared_dir}: the manifest lacks case(s) {missing[:5]} of the run being resumed")
        data = dataclasses.replace(
            data, train=[entries[n] for n in cfg.data["train_cases"]], val=[entries[n] for n in cfg.data["val_cases"]]
        )
    else:
        if has_run and not resume:
            raise ConfigError(f"{out_dir} already holds a training run; pass resume=True to continue it, or choose another folder")
        cfg, data = resolve_model_config(prepared_dir, task=task, preset=preset, epochs=epochs, init_from=init_from, overrides=overrides)
    _barrier(runtime)  # every rank has looked at out_dir before rank 0 writes to it
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_model_config(out_dir, cfg)
    return _run(cfg, data, out_dir, runtime, init_from=None if resume else init_from, progress=progress, num_workers=num_workers, cache_workers=cache_workers)


def _run(
    cfg: ModelConfig,
    data: TrainingData,
    out_dir: Path,
    runtime: Runtime,
    *,
    init_from: str | os.PathLike | None,
    progress: bool,
    num_workers: int | None,
    cache_workers: int,
) -> Path:
    tcfg = cfg.train
    started = time.monotonic()
    cache = CaseCache(data.prepared_dir / CACHE_DIRNAME, cfg.preprocess, cfg.fingerprint)
    if runtime.is_main:
        cache.build(data.train + data.val, workers=cache_workers, progress=progress)
    _barrier(runtime)

    network = initial_network(cfg.network, init_from, seed=tcfg.seed).to(runtime.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=tcfg.learning_rate, weight_decay=tcfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16 else None
    log_path, ckpt_path = out_dir / LOG_FILE, out_dir / CHECKPOINT_FILE

    meta: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": None, "train_seconds": 0.0}
    if ckpt_path.is_file():
        meta = load_checkpoint(ckpt_path, network, optimizer, scaler)
        best_meta = _safetensors_meta(out_dir / WEIGHTS_FILE)
        if best_meta.get("epoch") and int(best_meta["epoch"]) > meta["epoch"] and best_meta.get("score") not in (None, "None"):
            # Killed between writing the best weights and the checkpoint: the file holds the better model.
            meta["best_score"], meta["best_epoch"] = float(best_meta["score"]), int(best_meta["epoch"])
        log.info("resuming %s after epoch %d", out_dir, meta["epoch"])
    rows = [r for r in read_log(log_path) if r.get("epoch", 0) <= meta["epoch"]]
    if runtime.is_main:
        remove_stale_temporaries(out_dir)
        _write_log(log_path, rows)

    if runtime.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(network, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    network.train()
    loss_fn = _loss_fn()
    val_cases = [cache.load(c.name) for c in data.val] if runtime.is_main else []
    train_names = [c.name for c in data.train]
    if runtime.world_size > 1 and len(train_names) >= runtime.world_size:
        train_names = train_names[runtime.rank :: runtime.world_size]
    per_rank_batch = max(1, tcfg.batch_size // runtime.world_size)
    workers = default_workers(runtime.device) if num_workers is None else int(num_workers)
    pad_value = pad_value_of(cfg.fingerprint)
    names = [name_of(i) for i in cfg.channel_labels[1:]]
    first_epoch = int(meta["epoch"]) + 1
    budget_s = None if tcfg.max_minutes is None else 60.0 * float(tcfg.max_minutes)
    epoch_seconds: list[float] = []
    val_seconds: list[float] = []

    from tqdm import tqdm

    # Under a time budget the epoch count is only an upper bound: show the count and rate, not a total.
    total_its = None if budget_s is not None else max(0, tcfg.epochs - first_epoch + 1) * tcfg.iterations_per_epoch
    bar = tqdm(total=total_its, desc=f"train {cfg.task}", unit="it", disable=not (progress and runtime.is_main), dynamic_ncols=True)
    stopped_early = False
    last_row: dict[str, Any] | None = None
    try:
        for epoch in range(first_epoch, tcfg.epochs + 1):
            t0 = time.monotonic()
            lr = lr_for_epoch(tcfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            stream = PatchStream(cache, train_names, cfg.task, tcfg, seed=tcfg.seed, epoch=epoch, rank=runtime.rank, pad_value=pad_value)
            loader = DataLoader(
                stream,
                batch_size=per_rank_batch,
                num_workers=workers,
                pin_memory=runtime.device.type == "cuda",
                persistent_workers=False,
                prefetch_factor=2 if workers > 0 else None,
            )
            losses = []
            iterator = iter(loader)
            for _ in range(tcfg.iterations_per_epoch):
                batch = next(iterator)
                image = batch[IMAGE_KEY].to(runtime.device, non_blocking=True)
                target = batch[LABEL_KEY].to(runtime.device, non_blocking=True).long()
                optimizer.zero_grad(set_to_none=True)
                autocast = torch.autocast(device_type="cuda", dtype=runtime.amp_dtype) if runtime.amp_dtype else contextlib.nullcontext()
                with autocast:
                    loss = _compute_loss(loss_fn, network(image), target)
                value = float(loss.detach())  # the step's one device sync: checked, then logged
                if not math.isfinite(value):
                    raise FloatingPointError(f"epoch {epoch}: the loss became {value} (lower the learning rate?)")
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                losses.append(value)
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
            del iterator, loader
            train_loss = _mean_across(float(np.mean(losses)), runtime)
            epoch_seconds.append(time.monotonic() - t0)

            # Stop after this epoch if the next one would overrun the time budget (rank 0 decides).
            elapsed = time.monotonic() - started
            expected_val = float(np.median(val_seconds)) if val_seconds else 0.0
            out_of_time = budget_s is not None and elapsed + float(np.median(epoch_seconds[-3:])) + expected_val > budget_s
            out_of_time = bool(_broadcast(out_of_time, runtime))
            last = epoch == tcfg.epochs or out_of_time
            row: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 5), "lr": lr, "iterations": tcfg.iterations_per_epoch}
            improved = False
            if runtime.is_main:
                if val_cases and (epoch % tcfg.val_every == 0 or last):
                    tv = time.monotonic()
                    scores = validate(network, val_cases, cfg.task, tcfg, device=runtime.device, amp_dtype=runtime.amp_dtype)
                    val_seconds.append(time.monotonic() - tv)
                    per_class = scores.mean(axis=0)
                    mean = float(per_class.mean())
                    row["val_dice"] = {n: round(float(v), 4) for n, v in zip(names, per_class)}
                    row["val_mean_dice"] = round(mean, 4)
                    row["val_seconds"] = round(val_seconds[-1], 2)
                    improved = meta["best_score"] is None or mean > meta["best_score"]
                    if improved:
                        meta["best_score"], meta["best_epoch"] = mean, epoch
                        row["best"] = True
                row["seconds"] = round(time.monotonic() - t0, 2)
                meta["epoch"] = epoch
                meta["train_seconds"] = float(meta.get("train_seconds", 0.0)) + row["seconds"]
                rows.append(row)
                _write_log(log_path, rows)
                state = _unwrap(network).state_dict()
                stamp = {"epoch": str(epoch), "task": cfg.task}
                save_tensors(state, out_dir / LAST_WEIGHTS_FILE, metadata=stamp)
                if improved or meta["best_score"] is None:
                    save_tensors(state, out_dir / WEIGHTS_FILE, metadata={**stamp, "score": str(meta["best_score"])})
                save_checkpoint(ckpt_path, network, optimizer, meta, scaler)
                try:
                    write_training_curve(rows, out_dir / CURVE_FILE, title=f"{cfg.task} model ({cfg.preset} preset)")
                except Exception as exc:  # a plot must never stop training
                    log.warning("could not draw the training curve: %s", exc)
                last_row = row
            _barrier(runtime)
            if out_of_time and epoch < tcfg.epochs:
                stopped_early = True
                log.info("stopping after epoch %d: the %.1f-minute budget is spent", epoch, tcfg.max_minutes)
                break
    finally:
        bar.close()
    if runtime.is_main and last_row is not None:
        score = meta["best_score"]
        log.info(
            "%s: %d epochs done%s; best mean Dice %s at epoch %s",
            out_dir,
            meta["epoch"],
            " (time budget reached)" if stopped_early else "",
            "n/a" if score is None else f"{score:.4f}",
            meta["best_epoch"],
        )
    return out_dir
