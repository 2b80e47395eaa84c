"""The configuration a training run uses: preset or fine-tuning source, then the user's overrides.

Overrides are dotted paths or nested mappings under ``network``, ``preprocess`` and ``train``
(``augment.*`` is short for ``train.augment.*``), applied by :func:`flareseg.config.apply_overrides`,
so the config classes validate every value. A resumed run keeps its stored configuration except
``RESUMABLE_OVERRIDES``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from flareseg import __version__
from flareseg.config import (
    FINE_TUNE_EPOCHS,
    FINE_TUNE_LR,
    NetworkConfig,
    Preset,
    TrainConfig,
    apply_overrides,
    get_preset,
    override_paths,
    task_labels,
)
from flareseg.errors import ConfigError, InputError
from flareseg.model.folder import ModelConfig, read_model_config
from flareseg.training.data import TrainingData, load_training_data

RESUMABLE_OVERRIDES = ("train.epochs", "train.max_minutes", "train.val_every")
"""The only settings a resumed run may change."""
OVERRIDE_SECTIONS = ("network", "preprocess", "train")
"""Top-level sections of training overrides (``augment`` is short for ``train.augment``)."""


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


def training_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`overrides` as dotted paths under ``network``, ``preprocess`` and ``train``.

    ``augment.*`` is short for ``train.augment.*``; keys may be dotted or nested mappings
    (``{"train": {"learning_rate": 1e-3}}`` is ``{"train.learning_rate": 1e-3}``).

    Raises:
        ConfigError: a key outside those sections.
    """
    out: dict[str, Any] = {}
    for key, value in override_paths(overrides).items():
        parts = key.split(".")
        if parts[0] == "augment":
            parts = ["train"] + parts
        if parts[0] not in OVERRIDE_SECTIONS or len(parts) < 2:
            raise ConfigError(f"unknown setting {key!r}: expected network.*, preprocess.*, train.* or augment.*")
        out[".".join(parts)] = value
    return out


def _check_patch(network: NetworkConfig, train: TrainConfig) -> None:
    bad = [p for p in train.patch_size if p % network.divisor]
    if bad:
        raise ConfigError(f"train.patch_size {train.patch_size} must be 3 multiples of {network.divisor} (the network's total stride)")


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
    `overrides`, then `epochs`. The config's inference section is derived from the result
    (:func:`flareseg.model.folder.inference_defaults`): the patch, the mirror axes of the flips, air.

    Raises:
        ConfigError: unknown preset, task or setting, or a fine-tuning source of another task.
        InputError: the prepared cohort cannot be read.
    """
    if init_from is not None:
        base_model = read_model_config(init_from)
        if base_model.task != task:
            raise ConfigError(f"{init_from} is a {base_model.task} model; cannot fine-tune it as a {task} model")
        train = dataclasses.replace(base_model.train, learning_rate=FINE_TUNE_LR, epochs=FINE_TUNE_EPOCHS, max_minutes=None)
        base = Preset(base_model.preset, base_model.network, base_model.preprocess, train)
        fingerprint = base_model.fingerprint
    else:
        base, fingerprint = get_preset(preset, task), None
    chosen = apply_overrides(base, training_overrides(overrides))
    if epochs is not None:
        chosen = apply_overrides(chosen, {"train.epochs": epochs})
    data = load_training_data(prepared_dir, task, chosen.train.case_selection)
    labels = task_labels(task)
    if chosen.network.out_channels != labels.num_channels:
        raise ConfigError(f"network.out_channels is {chosen.network.out_channels}; the {task} model needs {labels.num_channels}")
    _check_patch(chosen.network, chosen.train)
    summary = {
        "prepared": str(Path(prepared_dir).resolve()),
        "source": data.source,
        "case_selection": chosen.train.case_selection,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "train_cases": [c.name for c in data.train],
        "val_cases": [c.name for c in data.val],
        "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
    }
    cfg = ModelConfig(
        task=task,
        preset=chosen.name,
        network=chosen.network,
        preprocess=chosen.preprocess,
        fingerprint=fingerprint or data.fingerprint,
        train=chosen.train,
        channel_labels=labels.channel_labels,
        data=summary,
        versions=versions(),
    )
    return cfg, data


def resume_config(out_dir: Path, epochs: int | None, overrides: Mapping[str, Any] | None) -> ModelConfig:
    """The stored configuration of the run in `out_dir` with `epochs` and the resumable `overrides` applied.

    Raises:
        ConfigError: an override outside ``RESUMABLE_OVERRIDES``, or an invalid value.
        ModelFolderError: no readable config.json.
    """
    cfg = read_model_config(out_dir)
    paths = training_overrides(overrides)
    bad = [k for k in paths if k not in RESUMABLE_OVERRIDES]
    if bad:
        raise ConfigError(f"a resumed run keeps its configuration; only {', '.join(RESUMABLE_OVERRIDES)} may change, got {bad}")
    if epochs is not None:
        paths["train.epochs"] = epochs
    train = apply_overrides(cfg.train, {k.split(".", 1)[1]: v for k, v in paths.items()}, prefix="train")
    return dataclasses.replace(cfg, train=train)


def resume_data(prepared_dir: str | os.PathLike, cfg: ModelConfig) -> TrainingData:
    """The prepared cohort's data with the resumed run's own split (the stored case names)."""
    data = load_training_data(prepared_dir, cfg.task, cfg.train.case_selection)
    entries = {c.name: c for c in data.train + data.val}
    train_names, val_names = cfg.data.get("train_cases", []), cfg.data.get("val_cases", [])
    missing = [n for n in train_names + val_names if n not in entries]
    if missing:
        raise InputError(f"{prepared_dir}: the manifest lacks case(s) {missing[:5]} of the run being resumed")
    missing_labelled = [n for n in train_names if n not in data.labelled]
    if missing_labelled:
        raise InputError(f"{prepared_dir}: the manifest's split lacks training case(s) {missing_labelled[:5]} of the run being resumed")
    labelled = {n: data.labelled[n] for n in train_names}
    return dataclasses.replace(data, train=[entries[n] for n in train_names], val=[entries[n] for n in val_names], labelled=labelled)
