"""Patch sampling and the paper's augmentations (table 3) as MONAI transforms, built from config values.

Every transform works on a dictionary of channel-first arrays or tensors: ``"image"`` (1, X, Y, Z)
float, normalised intensities, and ``"label"`` (1, X, Y, Z) integer class indices of the task. The
paper's list maps one to one onto MONAI transforms of the same name and values:

| paper (table 3) | MONAI transform | probability |
|---|---|---|
| flip along x | ``RandFlipd(spatial_axis=0)`` (image and label) | ``flip_x_prob`` (0.2) |
| flip along y | ``RandFlipd(spatial_axis=1)`` (image and label) | ``flip_y_prob`` (0.2) |
| Gaussian smoothing, sigma in (0.5, 1.15) voxels | ``RandGaussianSmoothd`` | ``smooth_prob`` (0.1) |
| Gaussian noise, std 0.1 | ``RandGaussianNoised`` | ``noise_prob`` (0.2) |
| gamma in (0.5, 2.5) | ``RandAdjustContrastd`` | ``gamma_prob`` (0.1) |
| intensity shift by up to 0.3 | ``RandShiftIntensityd(offsets=0.3)`` | ``shift_prob`` (0.1) |
| (not in the paper) rotation and scaling, nnU-Net's spatial augmentation | ``RandAffined`` (image linear, label nearest) | ``spatial_prob`` (0) |

Each is drawn independently per patch; the spatial transform comes first, as in nnU-Net. Axes are those of the canonical LPS grid of
:mod:`flareseg.transforms.preprocessing`: x runs right to left, y anterior to posterior. A flip along x mirrors
the left and right organs without swapping their labels, exactly as the paper (and nnU-Net's
mirroring) does; set ``flip_x_prob`` to 0 to keep laterality strictly anatomical. The flipped axes are
the model's test-time mirror axes (:func:`flareseg.config.trained_mirror_axes`, written into the
model folder's ``inference`` section).
"""

from __future__ import annotations

import math
from typing import Sequence

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandShiftIntensityd,
)

from flareseg.config import AugmentConfig, TrainConfig

IMAGE_KEY = "image"
LABEL_KEY = "label"
FG_INDICES_KEY = "fg_indices"
BG_INDICES_KEY = "bg_indices"
LABELLED_KEY = "labelled"
"""A patch's (C,) bool labelled channels (not augmented; read by the loss)."""
KEYS = (IMAGE_KEY, LABEL_KEY)


def build_augmentation(cfg: AugmentConfig) -> Compose:
    """The paper's augmentations in its order, each drawn per patch with its probability.

    Args:
        cfg: probabilities and ranges (validated by :class:`~flareseg.config.AugmentConfig` itself);
            a probability of 0 disables that transform.

    Returns:
        A MONAI ``Compose`` acting on ``{"image": (1, X, Y, Z), "label": (1, X, Y, Z)}``; the label
        is only moved (flips, nearest-neighbour resampling; background where the rotation reaches
        outside the patch), never given a value it did not hold. Where the rotation reaches outside
        the patch the image takes its nearest border voxel.
    """
    sigma = (float(cfg.smooth_sigma[0]), float(cfg.smooth_sigma[1]))
    angle = math.radians(float(cfg.rotate_degrees))
    scale = tuple((float(cfg.scale_range[0]) - 1.0, float(cfg.scale_range[1]) - 1.0) for _ in range(3))  # MONAI: factor 1 + s
    # Left out at probability 0, so that the paper's transforms draw the random streams they drew before it.
    spatial = [] if cfg.spatial_prob == 0 else [
        RandAffined(
            keys=KEYS, prob=cfg.spatial_prob, rotate_range=(angle, angle, angle), scale_range=scale,
            mode=("bilinear", "nearest"), padding_mode=("border", "zeros"),
        )
    ]
    return Compose(
        [
            *spatial,
            RandFlipd(keys=KEYS, prob=cfg.flip_x_prob, spatial_axis=0),
            RandFlipd(keys=KEYS, prob=cfg.flip_y_prob, spatial_axis=1),
            RandGaussianSmoothd(keys=IMAGE_KEY, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=cfg.smooth_prob),
            RandGaussianNoised(keys=IMAGE_KEY, prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std),
            RandAdjustContrastd(keys=IMAGE_KEY, prob=cfg.gamma_prob, gamma=tuple(cfg.gamma_range)),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=cfg.shift_offset, prob=cfg.shift_prob),
        ]
    )


def build_patch_sampler(cfg: TrainConfig) -> RandCropByPosNegLabeld:
    """``cfg.samples_per_image`` patches of ``cfg.patch_size`` per image, a fraction ``cfg.pos_fraction``
    centred on foreground.

    The candidate centres are read from the dictionary's ``"fg_indices"`` and ``"bg_indices"`` (flat
    indices into the label's spatial shape, see :mod:`flareseg.data.cache`) instead of being searched in
    the label each time. The image must be at least the patch size along every axis (pad it first).
    """
    pos, neg = float(cfg.pos_fraction), 1.0 - float(cfg.pos_fraction)
    return RandCropByPosNegLabeld(
        keys=KEYS,
        label_key=LABEL_KEY,
        spatial_size=tuple(cfg.patch_size),
        pos=pos,
        neg=neg,
        num_samples=cfg.samples_per_image,
        fg_indices_key=FG_INDICES_KEY,
        bg_indices_key=BG_INDICES_KEY,
        allow_missing_keys=False,
    )


def pad_widths(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric (before, after) padding per axis that makes `shape` at least `patch` (MONAI's
    ``SpatialPad`` convention: the odd voxel goes after)."""
    widths = []
    for size, want in zip(shape, patch):
        total = max(0, int(want) - int(size))
        widths.append((total // 2, total - total // 2))
    return widths
