"""Training of the organ and tumour models (DESIGN section 5), resumable, into a self-describing folder.

Protocol (each a value of :class:`~flareseg.config.TrainConfig`): patches of ``patch_size`` from the
preprocessed cases, ``samples_per_image`` per loaded image, a fraction ``pos_fraction`` centred on
foreground (class-balanced, :mod:`flareseg.training.data`); the paper's augmentations
(:mod:`flareseg.training.augment`); loss = soft Dice after softmax + cross-entropy
(:mod:`flareseg.training.loss`: MONAI's ``DiceCELoss`` for fully labelled cases, the marginal loss
over the classes a case leaves unlabelled with ``case_selection="partial"``) with the Dice over the foreground channels only and pooled over the batch (nnU-Net's
``do_bg=False``, ``batch_dice=True``: background Dice is near 1 and carries no signal, and a patch
without lesion would otherwise give a meaningless per-sample Dice); Adam; the poly schedule
(:mod:`flareseg.training.schedule`). An epoch is ``iterations_per_epoch`` optimiser steps of
``batch_size`` patches.

A run is setup, then per epoch: train, validate (every ``val_every`` epochs and at the last one, with
the deployed predictor, :mod:`flareseg.training.validation`), save (log row, weights, checkpoint,
curve), over a typed :class:`~flareseg.training.checkpoint.TrainingState`. The weights with the best
mean foreground Dice are ``model.safetensors``.

The output folder (a model folder, :mod:`flareseg.model.folder`)::

    config.json               ModelConfig: task, preset, network, preprocess, fingerprint, train, data,
                              versions, and the inference section (patch, mirror axes, pad value)
    model.safetensors         best weights (by validation mean foreground Dice; the last ones before any validation)
    model_last.safetensors    weights after the last completed epoch
    checkpoint.safetensors    model + optimiser tensors; the training state and schedule in its metadata
    train_log.jsonl           one JSON row per completed epoch
    training_curve.png        loss and validation Dice per epoch

Resuming (``resume=True``) reads the checkpoint, drops log rows after its epoch, and continues with
the next epoch: the data of epoch ``e`` depend only on ``(seed, e)``, so an interrupted and resumed
run draws the same patches as an uninterrupted one. No pickle is written or read anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from flareseg.config import NetworkConfig
from flareseg.data.cache import CACHE_DIRNAME, CachedCase, CaseCache
from flareseg.errors import ConfigError, TrainingError
from flareseg.io import remove_stale_temporaries
from flareseg.io.output import check_output_folder
from flareseg.labels import name_of
from flareseg.model.folder import CONFIG_FILE, ModelConfig, load_weights, write_model_config
from flareseg.model.network import build_network
from flareseg.training.augment import IMAGE_KEY, LABEL_KEY, LABELLED_KEY
from flareseg.training.checkpoint import (
    CHECKPOINT_FILE,
    LOG_FILE,
    TrainingState,
    load_checkpoint,
    read_log,
    recover_best,
    save_checkpoint,
    save_weights,
    unwrap,
    write_log,
)
from flareseg.training.configure import resolve_model_config, resume_config, resume_data
from flareseg.training.curve import CURVE_FILE, write_training_curve
from flareseg.training.data import PatchStream, TrainingData, default_workers
from flareseg.training.distributed import Runtime, barrier, broadcast, mean_across, resolve_runtime, wrap_network
from flareseg.training.loss import build_loss, compute_loss
from flareseg.training.schedule import build_optimizer, lr_for_step
from flareseg.training.validation import validate

log = logging.getLogger(__name__)


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
        overrides: settings such as ``{"train": {"learning_rate": 1e-3, "max_minutes": 6}}`` or
            ``{"augment.flip_x_prob": 0}`` (see :func:`~flareseg.training.configure.training_overrides`);
            a resumed run accepts only ``RESUMABLE_OVERRIDES``.
        progress: show a progress bar (loss, lr, it/s).
        num_workers: data-loading processes (None: :func:`~flareseg.training.data.default_workers`).
        cache_workers: processes that preprocess uncached cases.

    Returns:
        `out_dir`, a model folder ready for prediction.

    Raises:
        ConfigError: invalid settings, an existing run without ``resume``, a broken checkpoint.
        InputError: an unreadable prepared cohort or case; `out_dir` is a file or not writable.
        TrainingError: the loss became NaN or infinite.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    runtime = resolve_runtime(device)
    if resume and (out_dir / CHECKPOINT_FILE).is_file():
        cfg = resume_config(out_dir, epochs, overrides)
        if cfg.task != task:
            raise ConfigError(f"{out_dir} holds a {cfg.task} run; cannot resume it as {task}")
        data = resume_data(prepared_dir, cfg)
    else:
        if not resume and ((out_dir / CHECKPOINT_FILE).is_file() or (out_dir / CONFIG_FILE).is_file()):
            raise ConfigError(f"{out_dir} already holds a training run; resume it (--resume; resume=True in Python) or choose another folder")
        cfg, data = resolve_model_config(prepared_dir, task=task, preset=preset, epochs=epochs, init_from=init_from, overrides=overrides)
    barrier(runtime)  # every rank has looked at out_dir before rank 0 writes to it
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_model_config(out_dir, cfg)
    run = _setup(cfg, data, out_dir, runtime, init_from=None if resume else init_from, num_workers=num_workers, cache_workers=cache_workers, progress=progress)
    stopped_early = _run_epochs(run, progress=progress)
    if runtime.is_main and run.epochs_run:
        state = run.state
        log.info(
            "%s: %d epochs done%s; best mean Dice %s at epoch %s",
            out_dir,
            state.epoch,
            " (time budget reached)" if stopped_early else "",
            "n/a" if state.best_score is None else f"{state.best_score:.4f}",
            state.best_epoch,
        )
    return out_dir


# --------------------------------------------------------------------------- the run


def initial_network(network_cfg: NetworkConfig, init_from: str | os.PathLike | None, *, seed: int) -> torch.nn.Module:
    """A freshly initialised network (He-normal, seeded), or one holding the weights of model folder `init_from`.

    Raises:
        ModelFolderError: `init_from` has no readable weights file, its weights hold NaN or infinity,
            or they do not fit `network_cfg`.
    """
    torch.manual_seed(seed)
    network = build_network(network_cfg)
    return network if init_from is None else load_weights(network, init_from)


@dataclass
class _Run:
    """Everything one run holds from setup to its last epoch."""

    cfg: ModelConfig
    out_dir: Path
    runtime: Runtime
    cache: CaseCache
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    loss_fn: torch.nn.Module
    state: TrainingState
    rows: list[dict[str, Any]]
    train_names: list[str]
    labelled: dict[str, tuple[bool, ...]]
    val_cases: list[CachedCase]
    workers: int
    started: float
    epoch_seconds: list[float] = field(default_factory=list)
    val_seconds: list[float] = field(default_factory=list)
    epochs_run: int = 0


def _setup(
    cfg: ModelConfig,
    data: TrainingData,
    out_dir: Path,
    runtime: Runtime,
    *,
    init_from: str | os.PathLike | None,
    num_workers: int | None,
    cache_workers: int,
    progress: bool,
) -> _Run:
    """Cache the cases, build (or restore) network, optimiser and state, and trim the log to the state."""
    started = time.monotonic()  # the time budget counts from here: caching included
    tcfg = cfg.train
    cache = CaseCache(data.prepared_dir / CACHE_DIRNAME, cfg.preprocess, cfg.fingerprint)
    if runtime.is_main:
        cache.build(data.train + data.val, workers=cache_workers, progress=progress)
    barrier(runtime)
    network = initial_network(cfg.network, init_from, seed=tcfg.seed).to(runtime.device)
    optimizer = build_optimizer(tcfg, network.parameters())
    scaler = torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16 else None
    state = TrainingState()
    if (out_dir / CHECKPOINT_FILE).is_file():
        state = recover_best(load_checkpoint(out_dir / CHECKPOINT_FILE, network, optimizer, scaler), out_dir)
        log.info("resuming %s after epoch %d", out_dir, state.epoch)
    rows = [r for r in read_log(out_dir / LOG_FILE) if r.get("epoch", 0) <= state.epoch]
    if runtime.is_main:
        remove_stale_temporaries(out_dir)
        write_log(out_dir / LOG_FILE, rows)
    train_names = [c.name for c in data.train]
    if runtime.world_size > 1 and len(train_names) >= runtime.world_size:
        train_names = train_names[runtime.rank :: runtime.world_size]
    return _Run(
        cfg=cfg,
        out_dir=out_dir,
        runtime=runtime,
        cache=cache,
        network=wrap_network(network, runtime).train(),
        optimizer=optimizer,
        scaler=scaler,
        loss_fn=build_loss(),
        state=state,
        rows=rows,
        train_names=train_names,
        labelled=data.labelled,
        val_cases=[cache.load(c.name) for c in data.val] if runtime.is_main else [],
        workers=default_workers(runtime.device) if num_workers is None else int(num_workers),
        started=started,
    )


def _run_epochs(run: _Run, *, progress: bool) -> bool:
    """Epochs ``state.epoch + 1`` to ``train.epochs``: train, validate when due, save. True when the time budget stopped it."""
    from tqdm import tqdm

    tcfg, runtime = run.cfg.train, run.runtime
    first = run.state.epoch + 1
    # Under a time budget the epoch count is only an upper bound: show the count and rate, not a total.
    total = None if tcfg.max_minutes is not None else max(0, tcfg.epochs - first + 1) * tcfg.iterations_per_epoch
    with tqdm(total=total, desc=f"train {run.cfg.task}", unit="it", disable=not (progress and runtime.is_main), dynamic_ncols=True) as bar:
        for epoch in range(first, tcfg.epochs + 1):
            t0 = time.monotonic()
            row = _train_epoch(run, epoch, bar)
            run.epoch_seconds.append(time.monotonic() - t0)
            out_of_time = bool(broadcast(_out_of_time(run), runtime))  # rank 0 decides for all
            if runtime.is_main:
                improved = False
                if run.val_cases and (epoch % tcfg.val_every == 0 or epoch == tcfg.epochs or out_of_time):
                    improved = _validate_epoch(run, epoch, row)
                row["seconds"] = round(time.monotonic() - t0, 2)
                _save_epoch(run, epoch, row, improved)
            run.epochs_run += 1
            barrier(runtime)
            if out_of_time and epoch < tcfg.epochs:
                log.info("stopping after epoch %d: the %.1f-minute budget is spent", epoch, tcfg.max_minutes)
                return True
    return False


def _train_epoch(run: _Run, epoch: int, bar: Any) -> dict[str, Any]:
    """One epoch of ``iterations_per_epoch`` optimiser steps; returns its log row (loss, lr, iterations).

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    cfg, tcfg, runtime = run.cfg, run.cfg.train, run.runtime
    first_step = (epoch - 1) * tcfg.iterations_per_epoch
    stream = PatchStream(
        run.cache, run.train_names, cfg.task, tcfg, seed=tcfg.seed, epoch=epoch, rank=runtime.rank, pad_value=cfg.inference.pad_value,
        labelled=run.labelled,
    )
    loader = DataLoader(
        stream,
        batch_size=max(1, tcfg.batch_size // runtime.world_size),
        num_workers=run.workers,
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if run.workers > 0 else None,
    )
    losses = []
    for i, batch in zip(range(tcfg.iterations_per_epoch), loader):
        lr = lr_for_step(tcfg, epoch, first_step + i)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        image = batch[IMAGE_KEY].to(runtime.device, non_blocking=True)
        target = batch[LABEL_KEY].to(runtime.device, non_blocking=True).long()
        labelled = batch[LABELLED_KEY].to(runtime.device, non_blocking=True)
        run.optimizer.zero_grad(set_to_none=True)
        with _autocast(runtime):
            loss = compute_loss(run.loss_fn, run.network(image), target, labelled)
        value = float(loss.detach())  # the step's one device sync: checked, then logged
        if not math.isfinite(value):
            raise TrainingError(f"epoch {epoch}, step {len(losses) + 1}: the loss became {value} at lr {lr:.3g} (lower train.learning_rate?)")
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            loss.backward()
            run.optimizer.step()
        losses.append(value)
        bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", lr=f"{lr:.2e}", refresh=False)
    train_loss = mean_across(float(np.mean(losses)), runtime)
    last_lr = lr_for_step(tcfg, epoch, first_step + tcfg.iterations_per_epoch - 1)
    return {"epoch": epoch, "train_loss": round(train_loss, 5), "lr": last_lr, "iterations": tcfg.iterations_per_epoch}


def _autocast(runtime: Runtime) -> contextlib.AbstractContextManager:
    """Autocast to the runtime's mixed-precision dtype on CUDA; nothing on the CPU."""
    if runtime.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.amp_dtype)


def _out_of_time(run: _Run) -> bool:
    """True when another epoch (and a validation, if one has run) would end past ``max_minutes``."""
    minutes = run.cfg.train.max_minutes
    if minutes is None:
        return False
    expected = float(np.median(run.epoch_seconds[-3:])) + (float(np.median(run.val_seconds)) if run.val_seconds else 0.0)
    return time.monotonic() - run.started + expected > 60.0 * float(minutes)


def _validate_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> bool:
    """Validate with the deployed predictor, add the scores to `row`, update the state; True when improved.

    `row` gains ``val_dice`` {class name: mean Dice over cases}, ``val_mean_dice``, ``val_case_dice``
    {case: mean foreground Dice} and ``val_seconds``.
    """
    t0 = time.monotonic()
    network = unwrap(run.network)
    scores = validate(network, run.val_cases, run.cfg, device=run.runtime.device, precision=run.runtime.precision)
    run.val_seconds.append(time.monotonic() - t0)
    per_class = scores.mean(axis=0)
    mean = float(per_class.mean())
    names = [name_of(i) for i in run.cfg.channel_labels[1:]]
    row["val_dice"] = {n: round(float(v), 4) for n, v in zip(names, per_class)}
    row["val_mean_dice"] = round(mean, 4)
    row["val_case_dice"] = {case.name: round(float(s.mean()), 6) for case, s in zip(run.val_cases, scores)}
    row["val_seconds"] = round(run.val_seconds[-1], 2)
    if not run.state.improves(mean):
        return False
    run.state.best_score, run.state.best_epoch = mean, epoch
    row["best"] = True
    return True


def _save_epoch(run: _Run, epoch: int, row: dict[str, Any], improved: bool) -> None:
    """Log row, last (and best) weights, then the checkpoint, whose epoch is authoritative; then the curve."""
    state = run.state
    state.epoch = epoch
    state.train_seconds += row["seconds"]
    run.rows.append(row)
    write_log(run.out_dir / LOG_FILE, run.rows)
    save_weights(run.network, run.out_dir, state, task=run.cfg.task, best=improved or state.best_score is None)
    save_checkpoint(run.out_dir / CHECKPOINT_FILE, run.network, run.optimizer, state, run.scaler)
    try:
        write_training_curve(run.rows, run.out_dir / CURVE_FILE, title=f"{run.cfg.task} model ({run.cfg.preset} preset)")
    except Exception as exc:  # a plot must never stop training
        log.warning("could not draw the training curve: %s", exc)
