"""What a run keeps on disk between epochs: the typed training state, the checkpoint, the weights, the log.

The checkpoint is one safetensors file: ``model.*`` and ``optim.<param>.<state>`` tensors, and as JSON in
its metadata the :class:`TrainingState`, the optimiser's param groups and scalar state, and the gradient
scaler's state. No pickle is written or read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flareseg.errors import ConfigError
from flareseg.io import atomic_write_bytes
from flareseg.model.folder import WEIGHTS_FILE, load_error_summary, save_tensors

log = logging.getLogger(__name__)

LAST_WEIGHTS_FILE = "model_last.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_FORMAT = 1


@dataclass
class TrainingState:
    """Where a run stands after its last completed epoch (stored in the checkpoint).

    Attributes:
        epoch: last completed epoch, 1-based (0: none yet).
        best_score: best validation mean foreground Dice so far (None: not validated yet).
        best_epoch: the epoch that reached `best_score` (None with it).
        train_seconds: wall time of all completed epochs, validation included.
    """

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    train_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, source: Path) -> "TrainingState":
        """Read a checkpoint's ``meta``; the string ``"None"`` of older checkpoints reads as None.

        Raises:
            ConfigError: a missing epoch or a value that is not a number.
        """
        try:
            return cls(
                epoch=int(meta["epoch"]),
                best_score=_optional(meta.get("best_score"), float),
                best_epoch=_optional(meta.get("best_epoch"), int),
                train_seconds=float(meta.get("train_seconds") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid training state {dict(meta)!r} in the checkpoint ({exc})") from None

    def improves(self, score: float) -> bool:
        """True when `score` beats the best so far (any score beats none)."""
        return self.best_score is None or score > self.best_score


def _optional(value: Any, kind: type) -> Any:
    """None, the strings 'None' / 'null' / '' (older files) -> None; anything else converted by `kind`."""
    if value is None or (isinstance(value, str) and value in ("None", "null", "")):
        return None
    out = kind(value)
    if isinstance(out, float) and not math.isfinite(out):
        raise ValueError(f"non-finite value {value!r}")
    return out


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def save_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState, scaler: Any = None) -> None:
    """Model and optimiser tensors in one safetensors file; the rest (training state, optimiser
    hyperparameters, scaler state) as JSON in its metadata. Written atomically."""
    tensors = {f"model.{k}": v for k, v in unwrap(network).state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optim_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "format": str(CHECKPOINT_FORMAT),
        "meta": state.to_json(),
        "param_groups": json.dumps(optim_state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    save_tensors(tensors, path, metadata=metadata)


def load_checkpoint(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> TrainingState:
    """Restore `network` and `optimizer` (and `scaler`) from :func:`save_checkpoint`; returns its state.

    Raises:
        ConfigError: a missing, foreign or mismatched checkpoint.
    """
    path = Path(path)
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
        unwrap(network).load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: the checkpoint does not fit the network in config.json: {load_error_summary(exc)}") from None
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
    return TrainingState.from_meta(json.loads(metadata["meta"]), source=path)


def save_weights(network: torch.nn.Module, out_dir: Path, state: TrainingState, *, task: str, best: bool) -> None:
    """``model_last.safetensors`` after epoch ``state.epoch``, and ``model.safetensors`` too when `best`.

    Each file's metadata records the epoch and task; the best weights also their score (JSON: a
    number, or null before any validation).
    """
    weights = unwrap(network).state_dict()
    stamp = {"epoch": str(state.epoch), "task": task}
    save_tensors(weights, out_dir / LAST_WEIGHTS_FILE, metadata=stamp)
    if best:
        save_tensors(weights, out_dir / WEIGHTS_FILE, metadata={**stamp, "score": json.dumps(state.best_score)})


def recover_best(state: TrainingState, out_dir: Path) -> TrainingState:
    """`state`, updated from ``model.safetensors`` when that file is of a later epoch than the checkpoint.

    A run killed between writing the best weights and the checkpoint leaves the better model in the
    weights file; its metadata score (``"None"`` in older files: no score) is then the best so far.
    """
    meta = safetensors_meta(out_dir / WEIGHTS_FILE)
    try:
        epoch, score = _optional(meta.get("epoch"), int), _optional(meta.get("score"), float)
    except ValueError:
        log.warning("%s: unreadable epoch or score in its metadata %s; ignored", out_dir / WEIGHTS_FILE, meta)
        return state
    if epoch is not None and score is not None and epoch > state.epoch:
        state.best_score, state.best_epoch = score, epoch
    return state


def safetensors_meta(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file ({} for a missing or unreadable file)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:  # safetensors raises its own error types; a missing best file is normal
        return {}


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


def write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the log rows as JSON lines, atomically."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
