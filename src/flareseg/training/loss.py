"""The training loss: Dice + cross-entropy (paper, table 2), marginal over unlabelled classes, with
nnU-Net's deep-supervision weighting.

Partial labels (marginal loss, Shi et al. 2021, "Marginal loss and exclusion loss for partially
supervised multi-organ segmentation"): in a case where class k is not labelled, a voxel marked
background may be k, so background and k are one event for that case. The softmax probabilities of
the unlabelled classes are merged into the background channel, p'_0 = p_0 + sum_{k unlabelled} p_k,
and the case's cross-entropy and Dice are taken on p' (the unlabelled channels drop out). The
labelled organs keep their own channels, so they exclude each other (and every unlabelled class) on
their voxels: a liver voxel is -log p_liver whatever the case leaves unlabelled. Merging is done on
the logits (log-sum-exp of the merged channels), so a fully labelled case gives exactly MONAI's
``DiceCELoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5
"""Dice smoothing of numerator and denominator (MONAI's ``smooth_nr`` / ``smooth_dr``)."""


def marginal_logits(logits: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is the marginal distribution of each case.

    Args:
        logits: (B, C, X, Y, Z) network outputs.
        labelled: (B, C) bool, True where class c is labelled in case b (channel 0, background, is
            always treated as labelled).

    Returns:
        (B, C, X, Y, Z): channel 0 holds ``logsumexp`` over background and the unlabelled channels,
        unlabelled channels hold the dtype's lowest value (softmax probability 0), labelled ones are
        unchanged. With every class labelled the result equals `logits`.
    """
    labelled = labelled.to(device=logits.device, dtype=torch.bool).clone()
    labelled[:, 0] = True
    if bool(labelled.all()):
        return logits
    low = torch.finfo(logits.dtype).min
    shape = labelled.shape + (1,) * (logits.dim() - 2)
    merged_set = (~labelled).clone()
    merged_set[:, 0] = True
    background = torch.logsumexp(logits.masked_fill(~merged_set.view(shape), low), dim=1, keepdim=True)
    out = logits.masked_fill(~labelled.view(shape), low)
    return torch.cat([background, out[:, 1:]], dim=1)


class MarginalDiceCELoss(torch.nn.Module):
    """Dice (foreground channels, pooled over the batch, after softmax) + cross-entropy on marginal probabilities.

    ``forward(logits, target, labelled=None)``: (B, C, X, Y, Z) logits, (B, 1, X, Y, Z) class
    indices, (B, C) bool labelled classes (None: all). A target voxel of a class its case leaves
    unlabelled counts as background. The Dice is averaged over the foreground classes labelled in at
    least one case of the batch (a class no case labels has no term). With every class labelled this
    is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)``.
    """

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=SMOOTH, smooth_dr=SMOOTH, reduction="none"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels = logits.shape[:2]
        if labelled is None:
            labelled = torch.ones(batch, channels, dtype=torch.bool, device=logits.device)
        labelled = labelled.to(device=logits.device, dtype=torch.bool).clone()
        labelled[:, 0] = True
        target = target.long()
        known = torch.gather(labelled, 1, target.reshape(batch, -1)).reshape(target.shape)
        target = torch.where(known, target, torch.zeros_like(target))
        merged = marginal_logits(logits, labelled)
        ce = F.cross_entropy(merged, target[:, 0])
        per_class = self.dice(merged, target).reshape(-1)  # (C - 1,)
        present = labelled[:, 1:].any(dim=0)
        dice = per_class[present].mean() if bool(present.any()) else per_class.sum() * 0.0
        return dice + ce


def build_loss() -> torch.nn.Module:
    """The training loss, :class:`MarginalDiceCELoss` (plain Dice + CE for fully labelled cases)."""
    return MarginalDiceCELoss()


def compute_loss(loss_fn: torch.nn.Module, output: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """`loss_fn` of (B, C, X, Y, Z) logits against (B, 1, X, Y, Z) class indices, with (B, C) labelled classes.

    With deep supervision the output is (B, heads, C, X, Y, Z), every head at full resolution; the
    loss is their weighted sum with weights ``0.5 ** i`` normalised to 1 (nnU-Net's weighting).
    """
    if output.dim() == target.dim() + 1:
        heads = output.shape[1]
        weights = torch.tensor([0.5**i for i in range(heads)])
        weights = weights / weights.sum()
        return sum(w * loss_fn(output[:, i], target, labelled) for i, w in enumerate(weights.tolist()))  # type: ignore[return-value]
    return loss_fn(output, target, labelled)
