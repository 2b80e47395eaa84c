"""Validation with the code path that ships: each held-out case segmented by :class:`ModelPredictor`.

The weights kept as best are chosen by the same sliding window that inference runs (flareseg's tiler,
tiles padded with the normalised value of air, Gaussian blending), at step ``1 - val_overlap`` and
without test-time mirroring, on the case's network grid (the cached, preprocessed case).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from flareseg.config import task_labels
from flareseg.data.cache import CachedCase
from flareseg.model.engine import resolve_engine
from flareseg.model.folder import ModelConfig
from flareseg.model.predictor import ModelPredictor


def dice_per_class(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..num_classes-1 between two label maps of class indices, same shape (any device).

    Follows the FLARE convention: both masks empty -> 1, exactly one empty -> 0.

    Returns:
        (num_classes - 1,) float64.
    """
    pred, target = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(target).reshape(-1).long()
    confusion = torch.bincount(pred * num_classes + target, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu().double()
    inter = confusion.diagonal()[1:]
    size_p, size_t = confusion.sum(1)[1:], confusion.sum(0)[1:]
    denom = size_p + size_t
    dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
    return dice.numpy()


def case_dice(predictor: ModelPredictor, case: CachedCase, *, step: float, precision: str = "auto", engine: str = "torch") -> np.ndarray:
    """Segment one cached case on its network grid with `predictor` (no mirroring) and score it.

    Args:
        predictor: the model to validate.
        case: a cached case (normalised image and FLARE-id label on the model's network grid).
        step: sliding-window step, ``1 - val_overlap``.
        precision, engine: as :meth:`ModelPredictor.predict_labels`.

    Returns:
        (n_classes - 1,) Dice per foreground class of the predictor's task.
    """
    task = task_labels(predictor.config.task)
    lut = task.target_lut()
    image = np.asarray(case.image, dtype=np.float32)
    labels = predictor.predict_labels(image, step=step, mirror=(), precision=precision, engine=engine)
    return dice_per_class(torch.from_numpy(lut[labels]), torch.from_numpy(lut[np.asarray(case.label)]), task.num_channels)


def validate(
    network: torch.nn.Module,
    cases: Sequence[CachedCase],
    config: ModelConfig,
    *,
    device: torch.device,
    precision: str = "auto",
) -> np.ndarray:
    """Segment each case whole with the deployed predictor and score it; `network` keeps its mode.

    Args:
        network: the network being trained (not wrapped in DistributedDataParallel).
        cases: held-out cached cases.
        config: the run's model configuration (its ``inference`` section: patch, pad value).
        device: where the network is.
        precision: 'fp32', 'bf16', 'fp16' or 'auto'.

    Returns:
        (n_cases, n_classes - 1) Dice per case and foreground class; (0, n_classes - 1) without cases.

    The networks run on the engine inference's default picks (:func:`~flareseg.model.engine.resolve_engine`
    'auto': OpenVINO on a CPU in float32 where installed, 12x faster than torch for the tumour model's
    tiles; torch on a GPU), from a graph exported for this validation only.
    """
    step = 1.0 - config.train.val_overlap
    engine = resolve_engine("auto", device, precision)
    was_training = network.training
    try:
        predictor = ModelPredictor(config, network, device, cache_graphs=False)  # puts the network in eval mode
        rows = [case_dice(predictor, case, step=step, precision=precision, engine=engine) for case in cases]
    finally:
        network.train(was_training)
    return np.stack(rows) if rows else np.zeros((0, len(config.channel_labels) - 1))
