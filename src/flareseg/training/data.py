"""Training data: the prepared cohort's split, class-balanced patch centres, augmented patches, the epoch's stream.

A task's targets come from the task table (:data:`flareseg.labels.TASK_TABLE`): FLARE ids are mapped
to the task's channel indices by its lookup table, so lesion voxels are background for the organ
model and every organ is background for the tumour model.

The cases come from the manifest's split for ``TrainConfig.case_selection``: ``"paper"`` reads the
split named after the task (``organ``, ``tumor``), ``"partial"`` the one named ``<task>_partial``.
Each patch carries its case's labelled channels (``"labelled"``, (C,) bool) to the loss: all True
for the paper's selection (plain Dice + CE), the case's labelled classes (manifest ``labelled``,
human + pseudo-labels) for ``"partial"``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flareseg.config import Fingerprint, TrainConfig, from_dict, task_labels
from flareseg.data.cache import CachedCase, CaseCache, SourceCase, source_cases
from flareseg.data.cohort import MANIFEST_FILE
from flareseg.errors import ConfigError, InputError
from flareseg.io import read_json
from flareseg.labels import LESION_HOST_IDS
from flareseg.training.augment import BG_INDICES_KEY, FG_INDICES_KEY, IMAGE_KEY, LABEL_KEY, LABELLED_KEY, build_augmentation, build_patch_sampler, pad_widths

FG_CENTRES_PER_CLASS = 64
"""Foreground centre candidates drawn per present class for one image (class-balanced sampling)."""
BG_CENTRES = 256
"""Background centre candidates drawn for one image (uniform over background voxels)."""


@dataclass(frozen=True)
class TrainingData:
    """The part of a prepared cohort's manifest that training reads."""

    prepared_dir: Path
    source: str
    fingerprint: Fingerprint
    train: list[SourceCase]
    val: list[SourceCase]
    labelled: dict[str, tuple[bool, ...]]
    """Per training case, whether each output channel of the task is labelled (all True: plain Dice + CE)."""


def split_key(task: str, selection: str) -> str:
    """The manifest key of `task`'s split under case selection `selection` (``organ``, ``organ_partial``, ...)."""
    return task if selection == "paper" else f"{task}_{selection}"


def load_training_data(prepared_dir: str | os.PathLike, task: str, selection: str = "paper") -> TrainingData:
    """Read ``manifest.json`` of a prepared cohort (written by ``flareseg prepare``) for `task`.

    Args:
        selection: ``"paper"`` or ``"partial"`` (``TrainConfig.case_selection``).

    Raises:
        InputError: no manifest, invalid JSON, a malformed manifest (a field missing or of the wrong type),
            no fingerprint for `task`, no split for `selection` (a manifest from before partial-label
            training), or no training case for `task`.
        ConfigError: an unknown task.
    """
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST_FILE
    if not prepared_dir.is_dir():
        what = "is a file, not a prepared folder" if prepared_dir.exists() else "no such folder"
        raise InputError(f"{prepared_dir}: {what}; `flareseg prepare --out {prepared_dir.name}` makes one")
    if not path.is_file():
        raise InputError(f"{prepared_dir}: no {MANIFEST_FILE}; run `flareseg prepare` first")
    manifest = read_json(path)
    task_labels(task)
    try:
        return _training_data(prepared_dir, manifest, task, selection)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (ConfigError, KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
        detail = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InputError(f"{path}: malformed manifest ({detail}); run `flareseg prepare` again") from None


def _training_data(prepared_dir: Path, manifest: dict, task: str, selection: str) -> TrainingData:
    """:func:`load_training_data` of a parsed manifest; its InputErrors leave the manifest's path to the caller."""
    if "fingerprints" not in manifest:
        raise InputError("no per-model intensity fingerprints (prepared by an older flareseg); run `flareseg prepare` again")
    if not manifest["fingerprints"].get(task):
        raise InputError(f"no intensity fingerprint for the {task} model (no labelled training voxel of its classes)")
    fingerprint = from_dict(Fingerprint, manifest["fingerprints"][task])
    key = split_key(task, selection)
    if key not in manifest:
        raise InputError(f"no {key!r} split (case selection {selection!r}); run `flareseg prepare` again")
    split = manifest.get(key) or {}
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    if not train_names:
        if selection == "paper":
            what = "all 13 organs labelled" if task == "organ" else "lesion labels"
        else:
            what = "an organ labelled" if task == "organ" else "lesion labels"
        raise InputError(f"no training case for the {task} model (no case with {what})")
    entries = manifest.get("cases", [])
    train, val = source_cases(entries, train_names), source_cases(entries, val_names)
    for case in train + val:
        if case.label is None:
            raise InputError(f"case {case.name} is in the {task} split but has no label file")
    labels = task_labels(task)
    by_name = {e.get("case"): e for e in entries}
    labelled = {}
    for case in train:
        entry = by_name[case.name]
        ids = entry.get("labelled", entry.get("labels_present", []))
        labelled[case.name] = labels.labelled_channels(ids) if selection == "partial" else (True,) * labels.num_channels
    return TrainingData(prepared_dir, str(manifest.get("source", "")), fingerprint, train, val, labelled)


def default_workers(device: torch.device) -> int:
    """Data-loading processes: none on CPU, where drawing a batch costs ~1% of a training step
    (measured, docs/training.md) and a worker would only take a core from the network's threads;
    up to 4 beside a GPU, whose steps are fast enough for the augmentation to matter."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def centre_candidates(case: CachedCase, task: str, rng: np.random.Generator, *, hard_negative_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into the case's grid of patch-centre candidates: foreground and background.

    Foreground: ``FG_CENTRES_PER_CLASS`` per foreground class of `task` present in the case (so small
    organs are drawn as often as the liver, as nnU-Net does). Background: ``BG_CENTRES`` uniform over
    the background voxels (every id that is not the task's foreground), except that a fraction
    `hard_negative_fraction` of them lies in the lesion-host organs (:data:`flareseg.labels.LESION_HOST_IDS`)
    where the case has them, in equal shares per host organ: the tumour model's hard negatives (for the
    organ task those organs are foreground, so it changes nothing there).

    Returns:
        (fg, bg) int64 arrays; either may be empty.
    """
    ids, flat = case.locations[:, 0], case.locations[:, 1]
    fg_ids = [i for i in task_labels(task).foreground_ids if case.counts.get(i, 0) > 0]
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
        weights /= weights.sum()
        host_value = np.isin(values, LESION_HOST_IDS)
        host = host_value[inverse]
        if hard_negative_fraction > 0 and host.any() and not host.all():
            # each host organ present gets an equal share of the hard negatives, spread over its stored
            # locations (the gallbladder as often as the liver: where a young tumour model paints lesions)
            per_host_location = (hard_negative_fraction / (host_value.sum() * stored))[inverse]
            weights = np.where(host, per_host_location, (1 - hard_negative_fraction) * weights / weights[~host].sum())
        bg = rng.choice(bg_pool, size=BG_CENTRES, replace=True, p=weights / weights.sum())
    else:
        bg = np.zeros(0, dtype=np.int64)
    return fg.astype(np.int64), bg.astype(np.int64)


def jitter_centres(flat: np.ndarray, shape: Sequence[int], patch_size: Sequence[int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Flat indices `flat` into a grid of `shape`, each moved by a uniform random offset of up to
    ``fraction * (patch // 2 - 1)`` voxels along each axis and clipped to the grid: the drawn voxel
    stays inside the patch centred on the result, at a random place in it."""
    reach = [int(fraction * max(p // 2 - 1, 0)) for p in patch_size]
    if len(flat) == 0 or not any(reach):
        return flat
    coords = np.unravel_index(flat, tuple(shape))
    moved = tuple(np.clip(c + rng.integers(-r, r + 1, size=len(flat)), 0, n - 1) for c, r, n in zip(coords, reach, shape))
    return np.ravel_multi_index(moved, tuple(shape)).astype(np.int64)


def _shift_indices(flat: np.ndarray, shape: Sequence[int], widths: Sequence[tuple[int, int]], new_shape: Sequence[int]) -> np.ndarray:
    coords = np.unravel_index(flat, tuple(shape))
    return np.ravel_multi_index(tuple(c + w[0] for c, w in zip(coords, widths)), tuple(new_shape)).astype(np.int64)


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    """Silence MONAI's 'no foreground, using background only' warnings for one call."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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
    labelled: Sequence[bool] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Draw ``cfg.samples_per_image`` augmented patches from one cached case.

    Args:
        case: a cached case on the network grid (FLARE ids in its label).
        task: 'organ' or 'tumor'.
        cfg: patch size, samples per image, foreground fraction, centre jitter.
        rng: draws the centre candidates.
        sampler, augmentation: from :func:`~flareseg.training.augment.build_patch_sampler` and
            :func:`~flareseg.training.augment.build_augmentation`.
        pad_value: the normalised value of air, for cases smaller than the patch.
        lut: the task's FLARE-id -> channel lookup table (default: the task table's).
        labelled: per channel, whether the case labels its class (default: all).

    Returns:
        Dictionaries with ``"image"`` (1, *patch) float32, ``"label"`` (1, *patch) uint8 task
        class indices and ``"labelled"`` (C,) bool. A case smaller than the patch is padded (image with `pad_value`, label with
        background).

    Raises:
        InputError: the case has no label.
    """
    if case.label is None:
        raise InputError(f"case {case.name} has no label: it cannot be used for training")
    labels = task_labels(task)
    lut = labels.target_lut() if lut is None else lut
    mask = torch.tensor((True,) * labels.num_channels if labelled is None else tuple(labelled), dtype=torch.bool)
    image, label = case.image, case.label
    fg, bg = centre_candidates(case, task, rng, hard_negative_fraction=cfg.hard_negative_fraction)
    widths = pad_widths(image.shape, cfg.patch_size)
    if any(w != (0, 0) for w in widths):
        shape = image.shape
        image = np.pad(np.asarray(image), widths, mode="constant", constant_values=pad_value)
        label = np.pad(np.asarray(label), widths, mode="constant", constant_values=0)
        fg, bg = _shift_indices(fg, shape, widths, image.shape), _shift_indices(bg, shape, widths, image.shape)
    fg = jitter_centres(fg, image.shape, cfg.patch_size, cfg.centre_jitter, rng)
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
                LABELLED_KEY: mask.clone(),
            }
        )
    return out


class PatchStream(IterableDataset):
    """An endless stream of training patches for one epoch: random case, then its patches.

    `labelled` maps a case to its labelled channels (:attr:`TrainingData.labelled`; a case not in it:
    all labelled).

    The random state depends only on ``(seed, epoch, rank, worker id)``: the same epoch draws the same
    patches whether or not the run was interrupted before it.

    Raises:
        InputError: no training case.
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
        labelled: dict[str, tuple[bool, ...]] | None = None,
    ) -> None:
        if not names:
            raise InputError("no training case to draw patches from")
        self.cache, self.names, self.task, self.cfg = cache, list(names), task, cfg
        self.labelled = labelled or {}
        self.seed, self.epoch, self.rank, self.pad_value = seed, epoch, rank, pad_value

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        sampler = build_patch_sampler(self.cfg)
        sampler.set_random_state(seed=int(rng.integers(2**31 - 1)))
        augmentation = build_augmentation(self.cfg.augment)
        augmentation.set_random_state(seed=int(rng.integers(2**31 - 1)))
        lut = task_labels(self.task).target_lut()
        while True:
            name = self.names[int(rng.integers(len(self.names)))]
            case = self.cache.load(name, mmap_mode="c")
            yield from sample_patches(
                case, self.task, self.cfg, rng=rng, sampler=sampler, augmentation=augmentation, pad_value=self.pad_value, lut=lut,
                labelled=self.labelled.get(name),
            )
