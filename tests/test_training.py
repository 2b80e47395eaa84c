"""Training: schedule, augmentation wiring, patch sampling, the case cache, and short real training runs
on a tiny synthetic cohort written in the test (resume, kill -9, fine-tuning, time budget)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flareseg.cli import main
from flareseg.config import FINE_TUNE_LR, AugmentConfig, Fingerprint, PreprocessConfig, TrainConfig, apply_overrides, get_preset, task_labels
from flareseg.data.cache import CACHE_DIRNAME, CaseCache, SourceCase, sample_locations
from flareseg.errors import ConfigError, InputError, ModelFolderError, TrainingError
from flareseg.inference import InferenceConfig, TwoStepPredictor
from flareseg.io import Volume, write_volume
from flareseg.model.folder import WEIGHTS_FILE, load_model, read_model_config, save_tensors
from flareseg.model.predictor import ModelPredictor
from flareseg.model.sliding_window import mirror_combinations
from flareseg.training import train
from flareseg.training.augment import build_augmentation, build_patch_sampler, pad_widths
from flareseg.training.checkpoint import (
    CHECKPOINT_FILE,
    LAST_WEIGHTS_FILE,
    LOG_FILE,
    TrainingState,
    load_checkpoint,
    read_log,
    recover_best,
    safetensors_meta,
)
from flareseg.training.configure import training_overrides
from flareseg.training.curve import CURVE_FILE
from flareseg.training.data import sample_patches
from flareseg.training.loop import initial_network
from flareseg.training.schedule import SGD_MOMENTUM, build_optimizer, lr_for_epoch, lr_for_step, poly_lr
from flareseg.training.validation import case_dice, dice_per_class

TOY_ORGANS = (1, 2, 3, 5, 13)  # liver, right kidney, spleen, aorta, left kidney


# --------------------------------------------------------------------------- a tiny cohort


def toy_case(seed: int, shape=(64, 64, 48), spacing=(3.0, 3.0, 3.0)) -> tuple[Volume, Volume]:
    """A CT-like phantom: an elliptic body, five organs as jittered ellipsoids of distinct HU
    (the two kidneys share their HU and differ only by side), a lesion in the liver, noise."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape) - 1) / 2

    def ellipsoid(c, radii):
        return sum(((idx[a] - c[a]) / radii[a]) ** 2 for a in range(3)) <= 1

    body = ((idx[0] - centre[0]) / (shape[0] * 0.45)) ** 2 + ((idx[1] - centre[1]) / (shape[1] * 0.4)) ** 2 <= 1
    image = np.full(shape, -1000, np.float32)
    image[body] = 0
    label = np.zeros(shape, np.uint8)
    organs = [  # id, centre (fraction of the shape), radii (voxels), HU
        (1, (0.32, 0.45, 0.6), (11, 10, 9), 110),
        (3, (0.7, 0.6, 0.65), (6, 5, 6), 60),
        (2, (0.3, 0.7, 0.4), (5, 5, 7), 180),
        (13, (0.7, 0.7, 0.42), (5, 5, 7), 180),
        (5, (0.5, 0.6, 0.5), (3, 3, 30), 250),
    ]
    for oid, frac, radii, hu in organs:
        mask = ellipsoid(np.array(frac) * shape + rng.uniform(-2, 2, 3), np.array(radii) * rng.uniform(0.85, 1.15, 3)) & body
        image[mask], label[mask] = hu, oid
    lesion = ellipsoid(np.array(organs[0][1]) * shape + rng.uniform(-3, 3, 3), np.full(3, rng.uniform(2.5, 3.5))) & (label == 1)
    image[lesion], label[lesion] = 45, 14
    image += rng.normal(0, 15, shape).astype(np.float32)
    origin = (-shape[0] * spacing[0] / 2, -shape[1] * spacing[1] / 2, 0.0)
    return Volume(image, spacing, origin, np.eye(3)), Volume(label, spacing, origin, np.eye(3))


def write_toy_cohort(root: Path, *, n: int = 6, n_val: int = 2) -> Path:
    """Write `n` toy cases in FLARE layout and a prepared-cohort manifest.json; returns the prepared folder."""
    cases, samples = [], []
    for i in range(n):
        name = f"Toy_{i:04d}"
        image, label = toy_case(100 + i)
        image_path = write_volume(
            Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), root / "cohort" / "imagesTr" / f"{name}_0000.nii.gz"
        )
        label_path = write_volume(label, root / "cohort" / "labelsTr" / f"{name}.nii.gz")
        present = sorted(int(v) for v in np.unique(label.array) if v)
        cases.append(
            {"case": name, "image": str(image_path), "label": str(label_path), "labels_present": present, "regime": "partial",
             "shape": list(image.shape), "spacing": list(image.spacing), "orientation": "LPS", "problem": None}
        )
        samples.append(image.array[label.array > 0])
    fg = np.concatenate(samples)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    names = [c["case"] for c in cases]
    split = {"train": names[n_val:], "val": names[:n_val]}
    fingerprint = {"percentile_00_5": float(lo), "percentile_99_5": float(hi), "mean": float(fg.mean()), "std": float(fg.std())}
    manifest = {
        "source": str(root / "cohort"),
        "seed": 0,
        "fingerprints": {"organ": fingerprint, "tumor": fingerprint},
        "cases": cases,
        "organ": split,
        "tumor": split,
    }
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_cohort(tmp_path_factory.mktemp("toy"))


BASE_EPOCHS = 40


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    """The tiny organ model, trained for the tiny preset's 40 epochs x 5 iterations (200 steps)."""
    out = tmp_path_factory.mktemp("models") / "organ"
    return train(prepared, out, task="organ", preset="tiny", progress=False, num_workers=0)


# --------------------------------------------------------------------------- schedule


def test_poly_schedule_values_and_the_fixed_tail():
    lr = lambda e: poly_lr(e, base_lr=1e-4, horizon=500, exponent=0.9)  # noqa: E731
    assert lr(0) == 1e-4
    assert lr(250) == pytest.approx(1e-4 * 0.5**0.9)
    assert lr(499) == pytest.approx(1e-4 * (1 / 500) ** 0.9)
    assert lr(499) > 0
    assert lr(500) == 0.0
    assert lr(1000) == 0.0
    values = [lr(e) for e in range(0, 1001)]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases
    assert poly_lr(1000, base_lr=1e-4, horizon=500, floor=1e-6) == 1e-6
    assert poly_lr(499, base_lr=1e-4, horizon=500, floor=1e-6) == 1e-6  # the floor also bounds the decay
    with pytest.raises(ConfigError, match="epoch=-1"):
        poly_lr(-1, base_lr=1e-4, horizon=500)
    with pytest.raises(ConfigError, match="horizon=0"):
        poly_lr(0, base_lr=1e-4, horizon=0)
    with pytest.raises(ConfigError, match="base_lr=nan"):
        poly_lr(0, base_lr=float("nan"), horizon=500)


def test_epochs_are_one_based_in_the_schedule():
    cfg = TrainConfig()
    assert lr_for_epoch(cfg, 1) == cfg.learning_rate
    assert lr_for_epoch(cfg, 501) == 0.0


def test_warmup_raises_the_rate_linearly_then_hands_over_to_the_poly_schedule():
    cfg = TrainConfig(learning_rate=1e-2, warmup_steps=4, iterations_per_epoch=2, poly_horizon_epochs=10)
    assert [lr_for_step(cfg, 1 + step // 2, step) for step in range(4)] == pytest.approx([2.5e-3, 5e-3, 0.75e-2 * 0.9**0.9, 1e-2 * 0.9**0.9])
    assert lr_for_step(cfg, 3, 4) == lr_for_epoch(cfg, 3)  # past the warm-up: the poly rate of the epoch
    assert lr_for_step(dataclasses.replace(cfg, warmup_steps=0), 1, 0) == 1e-2
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        TrainConfig(warmup_steps=-1)


def test_the_optimiser_is_the_configured_one():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(TrainConfig(optimizer="sgd", learning_rate=1e-2, weight_decay=3e-5), params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == SGD_MOMENTUM and sgd.defaults["weight_decay"] == 3e-5
    assert type(build_optimizer(TrainConfig(), params)) is torch.optim.Adam
    assert type(build_optimizer(TrainConfig(optimizer="adamw"), params)) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="train.optimizer must be one of adam, adamw, sgd, got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")


# --------------------------------------------------------------------------- augmentation


def _patch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 16, 12, 10, generator=g)
    label = torch.randint(0, 3, (1, 16, 12, 10), generator=g, dtype=torch.uint8)
    return {"image": image, "label": label}


OFF = AugmentConfig(flip_x_prob=0, flip_y_prob=0, smooth_prob=0, noise_prob=0, gamma_prob=0, shift_prob=0, spatial_prob=0)
PROBS = ("flip_x_prob", "flip_y_prob", "smooth_prob", "noise_prob", "gamma_prob", "shift_prob", "spatial_prob")


def test_paper_probabilities_are_the_defaults():
    cfg = AugmentConfig()
    assert (cfg.flip_x_prob, cfg.flip_y_prob, cfg.smooth_prob, cfg.noise_prob, cfg.gamma_prob, cfg.shift_prob) == (0.2, 0.2, 0.1, 0.2, 0.1, 0.1)
    assert cfg.smooth_sigma == (0.5, 1.15) and cfg.gamma_range == (0.5, 2.5) and cfg.shift_offset == 0.3
    assert cfg.spatial_prob == 0  # not in the paper's table 3


def test_all_probabilities_zero_leaves_the_patch_unchanged():
    data = _patch()
    out = build_augmentation(OFF)({k: v.clone() for k, v in data.items()})
    torch.testing.assert_close(torch.as_tensor(out["image"]).as_subclass(torch.Tensor), data["image"])
    assert torch.equal(torch.as_tensor(out["label"]).as_subclass(torch.Tensor), data["label"])


@pytest.mark.parametrize("name", PROBS)
def test_each_probability_is_wired_to_its_transform(name):
    data = _patch()
    aug = build_augmentation(dataclasses.replace(OFF, **{name: 1.0}))
    aug.set_random_state(seed=1)
    out = aug({k: v.clone() for k, v in data.items()})
    image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor)
    label = torch.as_tensor(out["label"]).as_subclass(torch.Tensor)
    if name.startswith("flip"):
        axis = 1 if name == "flip_x_prob" else 2  # channel-first: spatial axis 0 is dim 1
        torch.testing.assert_close(image, data["image"].flip(axis))
        assert torch.equal(label, data["label"].flip(axis))
    elif name == "spatial_prob":
        assert not torch.allclose(image, data["image"]) and not torch.equal(label, data["label"])
        assert set(label.unique().tolist()) <= set(data["label"].unique().tolist())  # nearest: no new label values
    else:
        assert not torch.allclose(image, data["image"])
        assert torch.equal(label, data["label"])  # intensity transforms never touch the label


def test_the_spatial_transform_is_left_out_at_probability_zero():
    """So the paper's transforms get the seeds they got before it existed (Compose seeds its members in order)."""
    from monai.transforms import RandAffined

    assert not any(isinstance(t, RandAffined) for t in build_augmentation(AugmentConfig()).transforms)
    assert isinstance(build_augmentation(dataclasses.replace(OFF, spatial_prob=0.3)).transforms[0], RandAffined)


def test_a_spatial_transform_of_no_rotation_and_unit_scale_is_the_identity():
    data = _patch()
    aug = build_augmentation(dataclasses.replace(OFF, spatial_prob=1.0, rotate_degrees=0.0, scale_range=(1.0, 1.0)))
    out = aug({k: v.clone() for k, v in data.items()})
    torch.testing.assert_close(torch.as_tensor(out["image"]).as_subclass(torch.Tensor), data["image"], atol=1e-5, rtol=0)
    assert torch.equal(torch.as_tensor(out["label"]).as_subclass(torch.Tensor).to(torch.uint8), data["label"])


def test_a_spatial_transform_keeps_image_and_label_together():
    """A bright cube labelled 1 stays labelled where it lands after rotation and scaling."""
    image = torch.zeros(1, 24, 24, 24)
    image[:, 8:16, 8:16, 8:16] = 1.0
    label = (image > 0.5).to(torch.uint8)
    aug = build_augmentation(dataclasses.replace(OFF, spatial_prob=1.0, rotate_degrees=30.0, scale_range=(0.8, 1.2)))
    aug.set_random_state(seed=3)
    out = aug({"image": image, "label": label})
    moved_image = torch.as_tensor(out["image"]).as_subclass(torch.Tensor)
    moved_label = torch.as_tensor(out["label"]).as_subclass(torch.Tensor)
    assert not torch.equal(moved_label.to(torch.uint8), label)
    assert moved_image[moved_label > 0].mean() > 0.9 and moved_image[moved_label == 0].mean() < 0.1


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: dataclasses.replace(OFF, noise_prob=1.5), "augment.noise_prob"),
        (lambda: dataclasses.replace(OFF, flip_x_prob=float("nan")), "augment.flip_x_prob"),
        (lambda: dataclasses.replace(OFF, gamma_range=(2.0, 1.0)), "augment.gamma_range"),
        (lambda: dataclasses.replace(OFF, smooth_sigma=(0.0, 1.0)), "augment.smooth_sigma"),
        (lambda: dataclasses.replace(OFF, rotate_degrees=float("nan")), "augment.rotate_degrees"),
        (lambda: dataclasses.replace(OFF, rotate_degrees=181.0), "augment.rotate_degrees"),
        (lambda: dataclasses.replace(OFF, scale_range=(0.0, 1.2)), "augment.scale_range"),
        (lambda: dataclasses.replace(OFF, spatial_prob=-0.5), "augment.spatial_prob"),
        (lambda: TrainConfig(learning_rate=float("nan")), "train.learning_rate"),
        (lambda: TrainConfig(learning_rate=-1e-3), "train.learning_rate"),
        (lambda: TrainConfig(max_minutes=float("inf")), "train.max_minutes"),
        (lambda: TrainConfig(pos_fraction=-0.1), "train.pos_fraction"),
        (lambda: TrainConfig(epochs=2.5), "train.epochs"),
        (lambda: TrainConfig(patch_size=(32, 32)), "train.patch_size"),
    ],
)
def test_invalid_protocol_values_are_refused_when_built(build, field):
    with pytest.raises(ConfigError, match=field):
        build()


# --------------------------------------------------------------------------- patches and cache


def _cached_case(label: np.ndarray, image: np.ndarray | None = None):
    from flareseg.data.cache import CachedCase

    image = np.random.default_rng(0).normal(size=label.shape).astype(np.float16) if image is None else image
    locations, counts = sample_locations(label)
    return CachedCase("c", image, label, locations, counts)


def _sample(case, cfg, seed=0, task="organ"):
    sampler = build_patch_sampler(cfg)
    sampler.set_random_state(seed=seed)
    return sample_patches(case, task, cfg, rng=np.random.default_rng(seed), sampler=sampler, augmentation=build_augmentation(OFF), pad_value=-3.0)


def test_foreground_patches_are_centred_on_foreground_class_balanced():
    label = np.zeros((60, 60, 60), np.uint8)
    label[5:8, 5:8, 5:8] = 7  # a tiny 'adrenal'
    label[30:58, 30:58, 30:58] = 1  # a big 'liver'
    cfg = TrainConfig(patch_size=(8, 8, 8), samples_per_image=2, pos_fraction=1.0, augment=OFF)
    hits = {1: 0, 7: 0}
    for seed in range(30):
        for patch in _sample(_cached_case(label), cfg, seed):
            assert patch["image"].shape == (1, 8, 8, 8) and patch["image"].dtype == torch.float32
            centre = int(patch["label"][0, 4, 4, 4])
            assert centre in hits
            hits[centre] += 1
    assert min(hits.values()) >= 15  # each class about half of the 60 patches, not in proportion to volume


def test_centre_jitter_puts_the_foreground_anywhere_in_the_patch_and_never_outside():
    """Without jitter a one-voxel lesion is always at the patch centre (the shortcut a network learns
    first); with jitter 0.9 it lands at many places, each inside the patch."""
    label = np.zeros((60, 60, 60), np.uint8)
    label[30, 30, 30] = 14
    places = {0.0: set(), 0.9: set()}
    for jitter in places:
        cfg = TrainConfig(patch_size=(16, 16, 16), samples_per_image=2, pos_fraction=1.0, centre_jitter=jitter, augment=OFF)
        for seed in range(20):
            for patch in _sample(_cached_case(label), cfg, seed, task="tumor"):
                where = np.argwhere(patch["label"][0].numpy() == 1)
                assert len(where) == 1  # the lesion is in every foreground patch
                places[jitter].add(tuple(where[0]))
    assert places[0.0] == {(8, 8, 8)}
    assert len(places[0.9]) >= 30 and {c for p in places[0.9] for c in p} >= {2, 14}


def test_jitter_centres_stays_on_the_grid_within_its_reach():
    from flareseg.training.data import jitter_centres

    shape, flat = (10, 50, 50), np.ravel_multi_index(([0, 9, 5], [25, 25, 0], [25, 49, 25]), (10, 50, 50))
    moved = np.array(np.unravel_index(jitter_centres(np.repeat(flat, 200), shape, (20, 20, 20), 0.5, np.random.default_rng(0)), shape))
    start = np.array(np.unravel_index(np.repeat(flat, 200), shape))
    assert moved.min() >= 0 and all(moved[a].max() < shape[a] for a in range(3))
    assert np.abs(moved - start).max() == 4  # 0.5 * (20 // 2 - 1), rounded down
    assert np.array_equal(jitter_centres(flat, shape, (20, 20, 20), 0.0, np.random.default_rng(0)), flat)


def test_negative_patches_come_from_background():
    label = np.zeros((40, 40, 40), np.uint8)
    label[:20] = 3
    cfg = TrainConfig(patch_size=(4, 4, 4), pos_fraction=0.0, augment=OFF)
    for seed in range(10):
        for patch in _sample(_cached_case(label), cfg, seed):
            assert int(patch["label"][0, 2, 2, 2]) == 0


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_hard_negatives_put_that_fraction_of_tumour_background_centres_in_host_organs(fraction):
    """The liver (a host) is 1/16 of the background here: hard negatives move its share to `fraction`."""
    from flareseg.training.data import centre_candidates

    label = np.zeros((40, 40, 40), np.uint8)
    label[:20, :20, :10] = 1  # liver: 1/16 of the volume
    label[30:32, 30:32, 30:32] = 14  # a lesion
    case = _cached_case(label)
    _, bg = centre_candidates(case, "tumor", np.random.default_rng(0), hard_negative_fraction=fraction)
    in_host = np.mean(label.ravel()[bg] == 1)
    assert not np.any(label.ravel()[bg] == 14)
    expected = 4000 / (40**3 - 8) if fraction == 0 else fraction
    assert abs(in_host - expected) < 0.08


def test_hard_negatives_are_shared_equally_among_the_host_organs():
    """A gallbladder 1/20 the liver's size draws as many hard negatives as the liver."""
    from flareseg.training.data import centre_candidates

    label = np.zeros((40, 40, 40), np.uint8)
    label[:20, :20, :10] = 1  # liver: 4,000 voxels
    label[30:35, 30:35, 30:38] = 9  # gallbladder: 200 voxels
    label[2:4, 30:32, 30:32] = 14  # a lesion
    case = _cached_case(label)
    _, bg = centre_candidates(case, "tumor", np.random.default_rng(0), hard_negative_fraction=0.5)
    drawn = label.ravel()[bg]
    assert abs(np.mean(drawn == 1) - 0.25) < 0.08 and abs(np.mean(drawn == 9) - 0.25) < 0.08


def test_lesion_is_background_for_the_organ_task_and_the_only_class_for_the_tumour_task():
    lut_o, lut_t = task_labels("organ").target_lut(), task_labels("tumor").target_lut()
    assert lut_o[14] == 0 and lut_o[1] == 1 and lut_o[13] == 13
    assert lut_t[14] == 1 and lut_t[1] == 0 and lut_t.max() == 1
    assert task_labels("organ").foreground_ids == tuple(range(1, 14)) and task_labels("tumor").foreground_ids == (14,)
    assert get_preset("paper", "organ").network.out_channels == 14 and get_preset("paper", "tumor").network.out_channels == 2
    with pytest.raises(ConfigError, match="liver"):
        task_labels("liver")


def test_small_image_is_padded_to_the_patch():
    label = np.zeros((10, 20, 6), np.uint8)
    label[4:6, 8:12, 2:4] = 2
    image = np.zeros(label.shape, np.float16)
    cfg = TrainConfig(patch_size=(16, 16, 16), samples_per_image=2, augment=OFF)
    assert pad_widths(label.shape, cfg.patch_size) == [(3, 3), (0, 0), (5, 5)]
    for patch in _sample(_cached_case(label, image), cfg):
        assert patch["image"].shape == (1, 16, 16, 16)
        assert float(patch["image"].min()) == -3.0  # padded with the value of air
        assert int((patch["label"] == 2).sum()) == int((label == 2).sum())  # nothing lost


# --------------------------------------------------------------------------- the partial-label loss


def _logits_and_target(seed: int = 0, channels: int = 14):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 6, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, channels, (2, 1, 6, 6, 6), generator=gen)
    return logits, target


@pytest.mark.parametrize("channels", [14, 2])
def test_fully_labelled_cases_give_the_ordinary_dice_ce(channels):
    from monai.losses import DiceCELoss

    from flareseg.training.loss import build_loss

    logits, target = _logits_and_target(1, channels)
    ordinary = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    labelled = torch.ones(2, channels, dtype=torch.bool)
    assert abs(build_loss()(logits, target, labelled).item() - ordinary.item()) < 1e-6
    assert abs(build_loss()(logits, target).item() - ordinary.item()) < 1e-6


def test_one_labelled_organ_does_not_push_unlabelled_organs_towards_background():
    """Case 0 labels only the liver (1): the loss must not care how background and the unlabelled
    kidney (2) share the probability of its background voxels, so moving mass between them has a zero
    directional derivative, dL/dz_2 * p_0 - dL/dz_0 * p_2 = 0 at every voxel; the ordinary loss pushes."""
    from monai.losses import DiceCELoss

    from flareseg.training.loss import build_loss

    logits, target = _logits_and_target(2)
    target = torch.where(target == 1, target, torch.zeros_like(target))  # only liver voxels are marked
    labelled = torch.zeros(2, 14, dtype=torch.bool)
    labelled[:, 1] = True
    build_loss()(logits, target, labelled).backward()
    grad, p = logits.grad, torch.softmax(logits.detach(), dim=1)
    background = target[:, 0] == 0
    shift = grad[:, 2] * p[:, 0] - grad[:, 0] * p[:, 2]
    assert float(shift[background].abs().max()) < 1e-12
    assert float(grad[:, 2][background].abs().max()) > 1e-6  # the kidney logit still gets a gradient (the merged background's)

    logits.grad = None
    DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)(logits, target).backward()
    ordinary_shift = logits.grad[:, 2] * p[:, 0] - logits.grad[:, 0] * p[:, 2]
    assert float(ordinary_shift[background].min()) > 0  # plain Dice + CE teaches 'not kidney' on every background voxel


def test_unlabelled_classes_are_merged_into_background_per_case():
    from flareseg.training.loss import build_loss, marginal_logits

    logits, target = _logits_and_target(3)
    labelled = torch.ones(2, 14, dtype=torch.bool)
    labelled[1, 5:] = False  # case 1 labels organs 1-4 only
    merged = torch.softmax(marginal_logits(logits.detach(), labelled), dim=1)
    p = torch.softmax(logits.detach(), dim=1)
    torch.testing.assert_close(merged[0], p[0])
    torch.testing.assert_close(merged[1, 0], p[1, 0] + p[1, 5:].sum(0))
    assert float(merged[1, 5:].max()) == 0.0
    # a voxel marked with a class the case leaves unlabelled is background for that case: finite loss
    assert math.isfinite(build_loss()(logits, torch.full_like(target, 9), labelled).item())


def test_partial_selection_carries_each_case_labelled_classes_to_the_patches(tmp_path):
    from flareseg.training.data import load_training_data

    prepared = write_toy_cohort(tmp_path, n=4, n_val=1)
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["organ_partial"] = {"train": manifest["organ"]["train"], "val": manifest["organ"]["val"]}
    manifest["cases"][1]["labelled"] = [1, 14]
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    paper, partial = load_training_data(prepared, "organ"), load_training_data(prepared, "organ", "partial")
    assert all(all(mask) for mask in paper.labelled.values())
    assert partial.labelled["Toy_0001"] == (True, True) + (False,) * 12
    assert partial.labelled["Toy_0002"] == tuple(c in (0, *TOY_ORGANS) for c in range(14))  # labels_present when no 'labelled'
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1
    cfg = TrainConfig(patch_size=(8, 8, 8), augment=OFF)
    sampler = build_patch_sampler(cfg)
    patches = sample_patches(_cached_case(label), "organ", cfg, rng=np.random.default_rng(0), sampler=sampler,
                             augmentation=build_augmentation(OFF), pad_value=-3.0, labelled=partial.labelled["Toy_0001"])
    assert all(p["labelled"].tolist() == list(partial.labelled["Toy_0001"]) for p in patches)
    del manifest["organ_partial"]
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="organ_partial"):
        load_training_data(prepared, "organ", "partial")
    with pytest.raises(ConfigError, match="case_selection"):
        TrainConfig(case_selection="all")


def test_cache_is_built_once_and_rebuilt_when_the_source_changes(tmp_path):
    image, label = toy_case(0, shape=(32, 32, 24))
    ip = write_volume(Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), tmp_path / "a_0000.nii.gz")
    lp = write_volume(label, tmp_path / "a.nii.gz")
    cache = CaseCache(tmp_path / "cache", PreprocessConfig(target_spacing=(4.0, 4.0, 4.0)), Fingerprint(-50, 260, 120, 60))
    case = SourceCase("a", ip, lp)
    assert cache.build([case]) == 1
    assert cache.build([case]) == 0
    other = CaseCache(tmp_path / "cache", PreprocessConfig(target_spacing=(3.0, 3.0, 3.0)), Fingerprint(-50, 260, 120, 60))
    assert other.folder != cache.folder  # another spacing, another key
    loaded = cache.load("a")
    assert loaded.image.dtype == np.float16 and isinstance(loaded.image, np.memmap)
    assert loaded.label.shape == loaded.image.shape
    assert set(loaded.counts) == set(np.unique(loaded.label).tolist())
    flat = loaded.label.reshape(-1)
    assert np.all(flat[loaded.locations[:, 1]] == loaded.locations[:, 0])
    os.utime(ip, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not cache.is_current(case)
    assert cache.build([case]) == 1
    with pytest.raises(InputError, match="not in the cache"):
        cache.load("b")


def test_dice_per_class_follows_the_flare_empty_mask_convention():
    target = torch.tensor([0, 1, 1, 2, 2, 0])
    pred = torch.tensor([0, 1, 2, 2, 2, 0])
    np.testing.assert_allclose(dice_per_class(pred, target, 4), [2 / 3, 0.8, 1.0])
    np.testing.assert_allclose(dice_per_class(torch.tensor([0, 3]), torch.tensor([0, 0]), 4), [1.0, 1.0, 0.0])


def test_overrides_map_onto_config_fields():
    p = get_preset("tiny")
    overrides = {"train.learning_rate": 0.5, "network": {"filters": [4, 8, 16, 32]}, "augment.noise_prob": 0, "train": {"augment": {"gamma_prob": 0.5}}}
    q = apply_overrides(p, training_overrides(overrides))
    assert q.train.learning_rate == 0.5 and q.network.filters == (4, 8, 16, 32)
    assert q.train.augment.noise_prob == 0 and q.train.augment.gamma_prob == 0.5
    assert q.train.augment.flip_x_prob == p.train.augment.flip_x_prob  # untouched fields keep their values
    assert p.train.learning_rate != 0.5  # the preset itself is unchanged
    with pytest.raises(ConfigError, match="learning_rat"):
        apply_overrides(p, training_overrides({"train.learning_rat": 1}))
    with pytest.raises(ConfigError, match="train.epochs must be an integer >= 1, got 0"):
        apply_overrides(p, training_overrides({"train": {"epochs": 0}}))
    with pytest.raises(ConfigError, match="'learning_rate' is a value, not a section"):
        apply_overrides(p, training_overrides({"train.learning_rate.x": 1}))
    with pytest.raises(ConfigError, match="expected network"):
        training_overrides({"name": "other"})


def test_settings_that_must_agree_are_changed_together():
    """filters and strides (one length) are validated as a pair, not one after the other."""
    p = get_preset("cpu")
    q = apply_overrides(p, training_overrides({"network.filters": [8, 16, 32, 64], "network.strides": [1, 2, 2, 2]}))
    assert q.network.filters == (8, 16, 32, 64) and q.network.strides == (1, 2, 2, 2)
    with pytest.raises(ConfigError, match="network.filters has 4 stages but network.strides has 5"):
        apply_overrides(p, training_overrides({"network.filters": [8, 16, 32, 64]}))
    with pytest.raises(ConfigError, match="both as a value and as a section"):
        apply_overrides(p, {"train.augment": 1, "train.augment.noise_prob": 0.0})


# --------------------------------------------------------------------------- training runs


def test_tiny_organ_model_learns(trained):
    rows = read_log(trained / LOG_FILE)
    assert [r["epoch"] for r in rows] == list(range(1, BASE_EPOCHS + 1))
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    final = rows[-1]["val_dice"]
    from flareseg.labels import name_of

    present = [final[name_of(i)] for i in TOY_ORGANS]
    # Chance (a random label per voxel) gives ~0.01-0.1 for these organs; the tiny model reaches ~0.6-0.8.
    assert float(np.mean(present)) > 0.45, final
    assert final["liver"] > 0.8
    assert {"epoch", "train_loss", "lr", "seconds"} <= set(rows[0])
    assert "val_dice" in rows[9] and "val_dice" not in rows[10]  # validated every 10 epochs (and at the end)


def test_model_folder_is_complete_and_pickle_free(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", LAST_WEIGHTS_FILE, CHECKPOINT_FILE, LOG_FILE, CURVE_FILE} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    cfg = read_model_config(trained)
    assert cfg.task == "organ" and cfg.preset == "tiny" and cfg.channel_labels == tuple(range(14))
    assert cfg.data["n_train"] == 4 and cfg.data["val_cases"] == ["Toy_0000", "Toy_0001"]
    assert {"flareseg", "torch", "monai", "python"} <= set(cfg.versions)
    assert (trained / CURVE_FILE).read_bytes()[:4] == b"\x89PNG"
    _, network = load_model(trained)
    with torch.no_grad():
        assert network(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 14, 32, 32, 32)


def test_an_existing_run_needs_resume(trained, prepared):
    with pytest.raises(ConfigError, match="--resume"):
        train(prepared, trained, task="organ", preset="tiny", progress=False)


def test_a_file_as_the_model_folder_is_refused_before_any_work(prepared, tmp_path):
    out = tmp_path / "model"
    out.write_text("not a folder")
    with pytest.raises(InputError, match="is a file"):
        train(prepared, out, task="organ", preset="tiny", progress=False)
    assert out.read_text() == "not a folder"


def test_resume_continues_at_the_next_epoch_with_the_same_state(prepared, trained, tmp_path):
    out = tmp_path / "run"
    train(prepared, out, task="organ", preset="tiny", epochs=2, progress=False, num_workers=0)
    assert [r["epoch"] for r in read_log(out / LOG_FILE)] == [1, 2]
    with pytest.raises(ConfigError, match="only"):
        train(prepared, out, task="organ", resume=True, epochs=4, overrides={"train.learning_rate": 1.0}, progress=False)
    train(prepared, out, task="organ", resume=True, epochs=4, progress=False, num_workers=0)
    rows = read_log(out / LOG_FILE)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # Same seed, same data per epoch, restored optimiser: the losses follow the uninterrupted run.
    reference = read_log(trained / LOG_FILE)
    for got, want in zip(rows, reference):
        assert got["lr"] == want["lr"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-3)
    assert read_model_config(out).train.epochs == 4


def test_an_sgd_run_with_warmup_resumes_as_if_uninterrupted(prepared, tmp_path):
    # The warm-up spans the break (7 steps of 5 an epoch) and SGD's momentum buffers must survive the checkpoint.
    overrides = {"train.optimizer": "sgd", "train.warmup_steps": 7, "train.val_every": 1000}
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(prepared, whole, task="organ", preset="tiny", epochs=3, overrides=overrides, progress=False, num_workers=0)
    train(prepared, split, task="organ", preset="tiny", epochs=1, overrides=overrides, progress=False, num_workers=0)
    train(prepared, split, task="organ", resume=True, epochs=3, progress=False, num_workers=0)
    got, want = read_log(split / LOG_FILE), read_log(whole / LOG_FILE)
    assert [r["lr"] for r in got] == [r["lr"] for r in want] == pytest.approx([5 / 7 * 1e-2, 1e-2 * (1 - 1 / 500) ** 0.9, 1e-2 * (1 - 2 / 500) ** 0.9])
    for g, w in zip(got, want):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=2e-3)
    assert read_model_config(split).train.optimizer == "sgd"


def test_kill_9_mid_epoch_then_resume(prepared, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        from flareseg.training.loop import train
        train({str(prepared)!r}, {str(out)!r}, task="tumor", preset="tiny", epochs=500, progress=False, num_workers=0,
              overrides={{"train.iterations_per_epoch": 3, "train.val_every": 1000}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_log(out / LOG_FILE)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        time.sleep(0.1)  # somewhere inside an epoch (or writing one)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(read_log(out / LOG_FILE))
    assert done >= 3
    resume_to = done + 2
    train(prepared, out, task="tumor", resume=True, epochs=resume_to, progress=False, num_workers=0)
    rows = read_log(out / LOG_FILE)
    assert [r["epoch"] for r in rows] == list(range(1, resume_to + 1))
    assert "val_mean_dice" in rows[-1]  # the last epoch is always validated
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind except by the kill
    _, network = load_model(out)
    assert network(torch.zeros(1, 1, 32, 32, 32)).shape[1] == 2


def test_fine_tuning_starts_from_the_given_weights_with_the_fine_tune_rate(prepared, trained, tmp_path):
    cfg = read_model_config(trained)
    start = initial_network(cfg.network, trained, seed=123)
    _, reference = load_model(trained)
    for a, b in zip(start.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    out = tmp_path / "finetuned"
    train(prepared, out, task="organ", init_from=trained, epochs=1, progress=False, num_workers=0)
    rows = read_log(out / LOG_FILE)
    assert rows[0]["lr"] == FINE_TUNE_LR
    tuned = read_model_config(out)
    assert tuned.train.learning_rate == FINE_TUNE_LR and tuned.data["init_from"] == str(trained.resolve())
    # Starting from trained weights the first epoch's loss is near the end of the first run, far below a fresh start.
    first = read_log(trained / LOG_FILE)
    assert rows[0]["train_loss"] < 0.5 * (first[0]["train_loss"] + first[-1]["train_loss"])
    with pytest.raises(ConfigError, match="organ model"):
        train(prepared, tmp_path / "wrong", task="tumor", init_from=trained, epochs=1, progress=False)


def test_fine_tuning_refuses_weights_that_are_missing_or_not_finite(trained, tmp_path):
    cfg = read_model_config(trained)
    with pytest.raises(ModelFolderError, match=f"no weights file {WEIGHTS_FILE}"):
        initial_network(cfg.network, tmp_path, seed=0)
    state = dict(initial_network(cfg.network, trained, seed=0).state_dict())
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))  # a diverged run's weights
    save_tensors(state, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ModelFolderError, match=f"tensor {name} holds NaN"):
        initial_network(cfg.network, tmp_path, seed=0)


def test_cli_fine_tuning_with_its_own_rate_and_schedule(prepared, trained, tmp_path):
    out = tmp_path / "longer"
    args = ["--quiet", "train", "--task", "organ", "--prepared", str(prepared), "--out", str(out), "--init-from", str(trained),
            "--epochs", "2", "--lr", "2e-3", "--lr-horizon", "4", "--iterations", "2"]
    assert main(args) == 0
    cfg = read_model_config(out).train
    assert (cfg.epochs, cfg.learning_rate, cfg.poly_horizon_epochs, cfg.iterations_per_epoch) == (2, 2e-3, 4, 2)
    rows = read_log(out / LOG_FILE)
    assert [r["lr"] for r in rows] == pytest.approx([2e-3, 2e-3 * 0.75**0.9])


def test_time_budget_stops_gracefully_with_a_valid_folder(prepared, tmp_path):
    out = tmp_path / "budget"
    train(prepared, out, task="tumor", preset="tiny", progress=False, num_workers=0, overrides={"train.max_minutes": 0.001})
    rows = read_log(out / LOG_FILE)
    assert len(rows) == 1 and "val_mean_dice" in rows[0]
    network = initial_network(read_model_config(out).network, None, seed=0)
    state = load_checkpoint(out / CHECKPOINT_FILE, network, torch.optim.Adam(network.parameters()))
    assert isinstance(state, TrainingState) and state.epoch == 1
    assert state.best_epoch == 1 and isinstance(state.best_score, float) and state.best_score == pytest.approx(rows[0]["val_mean_dice"], abs=5e-5)
    load_model(out)


def test_missing_manifest_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="manifest.json"):
        train(tmp_path, tmp_path / "out", task="organ", preset="tiny", progress=False)
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(InputError, match="notes.txt: is a file, not a prepared folder"):
        train(tmp_path / "notes.txt", tmp_path / "out", task="organ", preset="tiny", progress=False)
    with pytest.raises(InputError, match="nowhere: no such folder"):
        train(tmp_path / "nowhere", tmp_path / "out", task="organ", preset="tiny", progress=False)


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.update(cases="x"),
        lambda m: m.update(organ={"train": 5}),
        lambda m: m["fingerprints"].update(organ={"percentile_00_5": 1}),
        lambda m: m["cases"][0].pop("image"),
    ],
)
def test_a_malformed_manifest_is_an_input_error_naming_it(prepared, tmp_path, damage):
    from flareseg.training.data import load_training_data

    copy = tmp_path / "prepared"
    copy.mkdir()
    manifest = json.loads((prepared / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"prepared/manifest.json: (malformed manifest|case)"):
        load_training_data(copy, "organ")


# --------------------------------------------------------------------------- training writes what inference reads


def _flare_dice(pred: np.ndarray, label: np.ndarray, ids) -> np.ndarray:
    """Dice per final label id, written out independently of the training code (both empty: 1)."""
    out = []
    for i in ids:
        p, g = pred == i, label == i
        total = int(p.sum() + g.sum())
        out.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
    return np.array(out)


def test_validation_dice_is_what_the_deployed_predictor_gives(prepared, trained):
    """The Dice logged for each held-out case is the shipped predictor's on that case's network grid."""
    cfg = read_model_config(trained)
    rows = read_log(trained / LOG_FILE)
    best = [r for r in rows if r.get("best")][-1]  # model.safetensors holds the weights of this epoch
    assert safetensors_meta(trained / WEIGHTS_FILE)["epoch"] == str(best["epoch"])
    predictor = ModelPredictor.from_folder(trained)
    cache = CaseCache(prepared / CACHE_DIRNAME, cfg.preprocess, cfg.fingerprint)
    means = []
    for name in cfg.data["val_cases"]:
        case = cache.load(name)
        labels = predictor.predict_labels(np.asarray(case.image, dtype=np.float32), step=1 - cfg.train.val_overlap, mirror=())
        dice = _flare_dice(labels, np.asarray(case.label), cfg.channel_labels[1:])
        assert float(dice.mean()) == pytest.approx(best["val_case_dice"][name], abs=1e-6)
        np.testing.assert_allclose(case_dice(predictor, case, step=1 - cfg.train.val_overlap), dice, atol=1e-12)
        means.append(dice)
    network = initial_network(cfg.network, None, seed=0)
    state = load_checkpoint(trained / CHECKPOINT_FILE, network, torch.optim.Adam(network.parameters()))
    assert state.best_epoch == best["epoch"]
    assert state.best_score == pytest.approx(float(np.mean(means)), abs=1e-9)


def test_flip_x_off_leaves_x_out_of_the_test_time_mirrors(prepared, tmp_path):
    out = tmp_path / "no_x_flip"
    train(prepared, out, task="organ", preset="tiny", epochs=1, progress=False, num_workers=0,
          overrides={"augment": {"flip_x_prob": 0.0}, "train": {"iterations_per_epoch": 1}})
    section = json.loads((out / "config.json").read_text())["inference"]
    assert section["mirror_axes"] == [1] and section["patch_size"] == [32, 32, 32]
    cfg, network = load_model(out)
    assert section["pad_value"] == pytest.approx((cfg.fingerprint.percentile_00_5 - cfg.fingerprint.mean) / cfg.fingerprint.std)

    calls: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.clone())
            return self.inner(x)

    image, _ = toy_case(7)
    for mirror, axes in ((None, (1,)), ((0, 1), (0, 1))):
        calls.clear()
        config = InferenceConfig.for_mode("accurate", mirror=mirror)
        predictor = TwoStepPredictor(ModelPredictor(cfg, Recording(network)), None, config=config)
        _, report = predictor.segment(image)
        tiles = predictor.organ.count_tiles(report.network_shape, config.step, ())
        assert report.tiles["organ"] == len(calls) == tiles * 2 ** len(axes)
        combos = mirror_combinations(axes)  # each tile's passes, in the sliding window's order
        for t in range(tiles):
            first = calls[t * len(combos)]
            for k, combo in enumerate(combos):
                flipped = torch.flip(first, [2 + a for a in combo]) if combo else first
                assert torch.equal(calls[t * len(combos) + k], flipped)


def test_a_non_finite_loss_is_a_training_error(prepared, tmp_path, monkeypatch):
    import flareseg.training.loop as loop

    monkeypatch.setattr(loop, "compute_loss", lambda fn, output, target, labelled=None: output.sum() * float("nan"))
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: the loss became nan"):
        train(prepared, tmp_path / "nan", task="tumor", preset="tiny", epochs=1, progress=False, num_workers=0)


def test_older_files_with_none_strings_still_read(tmp_path):
    state = TrainingState.from_meta({"epoch": 3, "best_score": "None", "best_epoch": "None", "train_seconds": 1.5}, source=tmp_path)
    assert state == TrainingState(epoch=3, best_score=None, best_epoch=None, train_seconds=1.5)
    assert TrainingState.from_meta({"epoch": 4, "best_score": 0.5, "best_epoch": 2}, source=tmp_path).best_score == 0.5
    with pytest.raises(ConfigError, match="training state"):
        TrainingState.from_meta({"best_score": 0.5}, source=tmp_path)
    weights = {"w": torch.zeros(2)}
    save_tensors(weights, tmp_path / WEIGHTS_FILE, metadata={"epoch": "5", "task": "organ", "score": "None"})
    assert recover_best(TrainingState(epoch=4), tmp_path).best_score is None  # an unscored later file changes nothing
    save_tensors(weights, tmp_path / WEIGHTS_FILE, metadata={"epoch": "5", "task": "organ", "score": "0.625"})
    recovered = recover_best(TrainingState(epoch=4, best_score=0.5, best_epoch=2), tmp_path)
    assert (recovered.best_score, recovered.best_epoch) == (0.625, 5)
    assert recover_best(TrainingState(epoch=5, best_score=0.5, best_epoch=2), tmp_path).best_epoch == 2  # not later: kept


def test_training_curve_labels_each_class_and_counts_whole_epochs(tmp_path, monkeypatch):
    import flareseg.training.curve as curve

    figures = []
    monkeypatch.setattr(curve, "save_figure", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3} for e in range(1, 8)]
    for row in rows[2::3]:
        row.update(val_dice={"liver": 0.5, "right kidney": 0.25}, val_mean_dice=0.375)
    curve.write_training_curve(rows, tmp_path / "curve.png", title="t")
    ax_loss, ax_dice = figures[0].axes[:2]  # then the learning-rate twin
    legend = [t.get_text() for t in ax_dice.get_legend().get_texts()]
    assert legend == ["Liver", "RK", "mean"]
    figures[0].canvas.draw()
    for ax in (ax_loss, ax_dice):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
