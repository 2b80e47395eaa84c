"""The training loss: Dice + cross-entropy (paper, table 2), with nnU-Net's deep-supervision weighting."""

from __future__ import annotations

import torch


def build_loss() -> torch.nn.Module:
    """Dice (foreground channels, pooled over the batch, after softmax) + cross-entropy, MONAI's ``DiceCELoss``."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


def compute_loss(loss_fn: torch.nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`loss_fn` of (B, C, X, Y, Z) logits against (B, 1, X, Y, Z) class indices.

    With deep supervision the output is (B, heads, C, X, Y, Z), every head at full resolution; the
    loss is their weighted sum with weights ``0.5 ** i`` normalised to 1 (nnU-Net's weighting).
    """
    if output.dim() == target.dim() + 1:
        heads = output.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * loss_fn(output[:, i], target) for i, w in enumerate(weights.tolist()))  # type: ignore[return-value]
    return loss_fn(output, target)
