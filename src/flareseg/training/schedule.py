"""The optimiser and its learning-rate schedule: the paper's poly decay with its undefined tail fixed
(DESIGN section 5), after an optional linear warm-up."""

from __future__ import annotations

import math

import torch

from flareseg.config import TrainConfig
from flareseg.errors import ConfigError


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
        ConfigError: a non-positive `base_lr` or `horizon`, a negative `epoch` or `floor`, or a NaN;
            the message names the argument and its value.
    """
    for name, value, positive in (("base_lr", base_lr, True), ("horizon", horizon, True), ("epoch", epoch, False), ("floor", floor, False)):
        if not math.isfinite(value) or (value <= 0 if positive else value < 0):
            raise ConfigError(f"poly_lr needs a finite {name} {'> 0' if positive else '>= 0'}, got {name}={value}")
    factor = max(0.0, 1.0 - float(epoch) / float(horizon))
    return max(float(floor), float(base_lr) * factor**exponent)


SGD_MOMENTUM = 0.99
"""nnU-Net's SGD momentum (Nesterov)."""


def build_optimizer(cfg: TrainConfig, parameters) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over `parameters` at ``cfg.learning_rate`` with ``cfg.weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.learning_rate, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def lr_for_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 1-based `epoch` under `cfg` (epoch 1 uses ``cfg.learning_rate``), before warm-up."""
    return poly_lr(epoch - 1, base_lr=cfg.learning_rate, horizon=cfg.poly_horizon_epochs, exponent=cfg.poly_exponent, floor=cfg.lr_floor)


def lr_for_step(cfg: TrainConfig, epoch: int, step: int) -> float:
    """Learning rate of 0-based optimiser `step` (counted over the whole run) in 1-based `epoch`:
    :func:`lr_for_epoch` times the warm-up factor ``min(1, (step + 1) / cfg.warmup_steps)``."""
    lr = lr_for_epoch(cfg, epoch)
    return lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else lr
