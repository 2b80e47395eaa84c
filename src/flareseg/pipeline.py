"""Two-step inference (DESIGN section 6): organ model, tumour model, merge, post-processing, inverse preprocessing.

The public API:

- :class:`InferenceConfig` with the mode presets ``fast`` (default), ``accurate`` and ``paper``
  (:meth:`InferenceConfig.for_mode`);
- :func:`predict_case` for one CT, :class:`TwoStepPredictor` to load both models once and predict many,
  :func:`predict_folder` for a folder in the FLARE layout;
- :class:`PredictionReport` (per-stage timings) and :class:`BatchReport`.

One case goes through these stages (names as in ``PredictionReport.timings``):

``read``        the CT (NIfTI/NRRD/MHA file or DICOM series folder), validated by :func:`io.read_image`;
``preprocess``  reorientation to LPS, body crop, resampling to each model's spacing (shared when the
                two models' preprocessing settings match), normalisation with each model's fingerprint;
``roi``         ``fast`` mode only: the organ model on the network image average-pooled by
                ``roi_downsample`` (at its own patch size, step ``roi_step``); the region of interest is
                the bounding box of the predicted organs plus ``roi_margin_mm``;
``organ``       sliding window of the organ model over the region of interest (or the whole grid, or
                the paper's middle slab); labels 0-13 on the network grid;
``tumor``       sliding window of the tumour model; in ``fast`` mode only over the bounding box of the
                organs that can hold a lesion (labels.LESION_HOST_IDS) plus ``tumor_margin_mm``;
``postprocess`` post-processing of the organ and lesion maps, then the merge (lesion id 14 wins);
``restore``     the label map back to the input's exact grid (labels only, nearest-label resampling);
``write``       atomic write (temporary file + rename) in the input's geometry.

Merge and post-processing run on the network grid when both models share it (same preprocessing
settings: the usual case), else on the input's grid after restoring each map.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .config import to_dict
from .errors import ConfigError, InputError
from .dataset import case_name
from .io import IMAGE_SUFFIXES, Volume, is_image_path, read_image, strip_image_suffix, write_label
from .labels import LESION_HOST_IDS, NUM_ORGAN_CHANNELS, NUM_TUMOR_CHANNELS, ORGAN_IDS
from .merge import merge_labels
from .postprocess import DEFAULT as DEFAULT_POSTPROCESS
from .postprocess import OFF as NO_POSTPROCESS
from .postprocess import PostprocessConfig, postprocess
from .predictor import ModelPredictor, downsample, resolve_device
from .preprocessing import Grid, PreprocessRecord, preprocess_case, restore_label
from .roi import (
    Box,
    box_shape,
    ensure_min_size,
    expand_box,
    full_box,
    intersect,
    is_empty,
    label_box,
    map_box,
    margin_voxels,
    middle_slab,
    scale_box,
    slices_for_extent,
)
from .sliding_window import PRECISIONS, mirror_combinations

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("fast", "accurate", "paper")
"""FLARE image names end in the channel index: ``<case>_0000.nii.gz`` -> output ``<case>.nii.gz``."""
OUTPUT_SUFFIX = ".nii.gz"


TRAINED_FLIP_AXES = (0, 1)
"""Axes (I, J of the canonical grid) that the paper's augmentation flips: the safe test-time mirrors."""


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the two-step prediction. Build presets with :meth:`for_mode`.

    Attributes:
        mode: name of the preset this came from (for reports; behaviour follows the fields).
        step: sliding-window step as a fraction of the patch, in (0, 1]; overlap = 1 - step.
        mirror: spatial axes (0, 1, 2 of the canonical LPS network grid) for test-time mirroring; the
            logits are averaged over every subset of flips (``(0, 1, 2)``: 8 passes, as nnU-Net).
        roi: locate the organs on a coarse grid first and run the fine models only inside.
        roi_downsample: average-pooling factor of the coarse grid (2: the network image at half
            resolution; 1: the network grid itself).
        roi_step: sliding-window step of the coarse pass.
        roi_margin_mm: margin around the organs' bounding box found by the coarse pass.
        tumor_margin_mm: in ``roi`` mode, margin around the lesion-host organs' box for the tumour model.
        tumor_in_organs_only: keep only lesion components that overlap or touch a lesion-host organ.
        paper_slices: the paper's procedure when set: keep only the middle ``paper_slices`` slices of
            ``paper_slice_mm`` (the paper: 50 slices after resampling to 1 mm, i.e. a 50 mm extent),
            converted to voxels at each model's axial spacing, along the axial axis K of the network
            grid; everything else is background. None: the whole volume.
        paper_slice_mm: slice thickness the paper's slice count refers to.
        precision: 'auto' (fp32 on CPU, fp16 autocast on CUDA), 'fp32', 'fp16' or 'bf16'.
        tile_batch_size: tiles per network call (raise on a GPU).
        postprocess: post-processing applied to the organ map and to the lesion map before the merge.
    """

    mode: str = "fast"
    step: float = 0.8
    mirror: tuple[int, ...] = ()
    roi: bool = True
    roi_downsample: float = 2.0
    roi_step: float = 1.0
    roi_margin_mm: float = 20.0
    tumor_margin_mm: float = 15.0
    tumor_in_organs_only: bool = False
    paper_slices: int | None = None
    paper_slice_mm: float = 1.0
    precision: str = "auto"
    tile_batch_size: int = 1
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS

    def __post_init__(self) -> None:
        for name in ("step", "roi_step"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"inference.{name} must lie in (0, 1], got {value}")
        try:
            mirror_combinations(self.mirror)
        except ConfigError:
            raise ConfigError(f"inference.mirror must be distinct axes among 0, 1, 2; got {self.mirror}") from None
        if not self.roi_downsample >= 1:
            raise ConfigError(f"inference.roi_downsample must be >= 1, got {self.roi_downsample}")
        for name in ("roi_margin_mm", "tumor_margin_mm"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"inference.{name} must be >= 0, got {getattr(self, name)}")
        if self.paper_slices is not None and self.paper_slices < 1:
            raise ConfigError(f"inference.paper_slices must be >= 1 or None, got {self.paper_slices}")
        if not self.paper_slice_mm > 0:
            raise ConfigError(f"inference.paper_slice_mm must be positive, got {self.paper_slice_mm}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"inference.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.tile_batch_size < 1:
            raise ConfigError(f"inference.tile_batch_size must be >= 1, got {self.tile_batch_size}")

    @classmethod
    def for_mode(cls, mode: str = "fast", **overrides: Any) -> "InferenceConfig":
        """The preset of `mode` with `overrides` applied to its fields.

        - ``fast``: coarse organ pass on a 2x pooled grid, fine models in the ROI, step 0.8, no mirroring,
          post-processing on.
        - ``accurate``: whole volume, step 0.5, mirroring along I and J (4 passes), post-processing on.
        - ``paper``: the paper's procedure: whole network grid but only its middle 50 mm along K,
          step 0.5, mirroring along I and J, no post-processing.

        Test-time mirroring uses only the axes the paper's augmentation flips (x and y): mirroring the
        axial axis too (nnU-Net's 8 passes) shows the network upside-down anatomy it never saw in
        training, which measurably hurt a trained `cpu` model (stomach DSC 0.87 -> 0.32).

        Raises:
            ConfigError: unknown mode or field, or an invalid value.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
        base = {
            "fast": cls(mode="fast"),
            "accurate": cls(mode="accurate", step=0.5, mirror=TRAINED_FLIP_AXES, roi=False),
            "paper": cls(mode="paper", step=0.5, mirror=TRAINED_FLIP_AXES, roi=False, paper_slices=50, postprocess=NO_POSTPROCESS),
        }[mode]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown inference field(s) {sorted(unknown)}")
        if isinstance(overrides.get("postprocess"), dict):
            overrides["postprocess"] = PostprocessConfig(**overrides["postprocess"])
        return dataclasses.replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class PredictionReport:
    """What happened to one case.

    Attributes:
        case: case name.
        input, output: paths (None for an in-memory volume / when nothing was written).
        mode: the inference mode.
        device: where the networks ran.
        input_shape, input_spacing: the input's grid.
        network_shape: the organ model's network grid (after body crop and resampling).
        organ_box, tumor_box: the boxes of the network grids the models saw (None: not run).
        tiles: network evaluations per stage (mirroring included).
        timings: seconds per stage (see the module docstring), plus 'load' when models were loaded
            for this case and 'total'.
        voxel_counts: voxels per label id in the written map.
        notes: anything unusual (no organ found, tumour model skipped, ...).
    """

    case: str
    input: str | None = None
    output: str | None = None
    mode: str = ""
    device: str = ""
    input_shape: tuple[int, int, int] | None = None
    input_spacing: tuple[float, float, float] | None = None
    network_shape: tuple[int, int, int] | None = None
    organ_box: Box | None = None
    tumor_box: Box | None = None
    tiles: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    voxel_counts: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.timings.get("total", sum(v for k, v in self.timings.items() if k != "total"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items() if k != "total")
        return f"{self.case}: {self.seconds:.1f} s ({stages})"


@dataclass
class BatchReport:
    """The result of :func:`predict_folder`.

    Attributes:
        predicted: reports of the cases predicted now.
        skipped: names of the cases whose output already existed.
        failed: case name -> error message.
        seconds: wall time of the whole batch.
    """

    input_dir: str
    output_dir: str
    predicted: list[PredictionReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"{len(self.predicted)} predicted, {len(self.skipped)} skipped (already done), {len(self.failed)} failed in {self.seconds:.1f} s"
        for name, message in self.failed.items():
            text += f"\n  FAILED {name}: {message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CaseInput:
    """One case of an input folder: its name, its image (file or DICOM folder) and the output file name."""

    name: str
    path: Path

    @property
    def output_name(self) -> str:
        return self.name + OUTPUT_SUFFIX


class _Timer:
    """Accumulates seconds per stage and announces each stage to a callback."""

    def __init__(self, timings: dict[str, float], on_stage: Callable[[str], None] | None):
        self.timings = timings
        self.on_stage = on_stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _as_predictor(model: str | os.PathLike | ModelPredictor, device: torch.device, task: str) -> ModelPredictor:
    predictor = model if isinstance(model, ModelPredictor) else ModelPredictor.from_folder(model, device)
    expected = NUM_ORGAN_CHANNELS if task == "organ" else NUM_TUMOR_CHANNELS
    if predictor.config.network.out_channels != expected:
        raise ConfigError(
            f"the {task} model must have {expected} output channels; {predictor!r} has {predictor.config.network.out_channels}"
        )
    return predictor


def _geometry_reference(grid: Grid) -> Volume:
    """A voxel-less volume on `grid` (a broadcast zero), to write a label map in that geometry."""
    return Volume(np.broadcast_to(np.zeros((), np.uint8), grid.shape), grid.spacing, grid.origin, np.array(grid.direction).reshape(3, 3))


def _same_network_grid(a: PreprocessRecord, b: PreprocessRecord) -> bool:
    return a.crop == b.crop and a.network.matches(b.network) and a.canonical.matches(b.canonical)


class TwoStepPredictor:
    """The organ and tumour models, loaded once, predicting any number of cases.

    Args:
        organ_model: a model folder (or a loaded :class:`ModelPredictor`) with 14 output channels.
        tumor_model: a model folder (or predictor) with 2 output channels, or None for organs only.
        config: the inference settings (default: the ``fast`` preset).
        device: 'cpu', 'cuda', 'cuda:1', 'auto' or a torch.device.

    Raises:
        ModelFolderError: a model folder is missing or invalid.
        ConfigError: a model has the wrong number of output channels.
    """

    def __init__(
        self,
        organ_model: str | os.PathLike | ModelPredictor,
        tumor_model: str | os.PathLike | ModelPredictor | None = None,
        *,
        config: InferenceConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        start = time.perf_counter()
        self.device = resolve_device(device)
        self.config = config if config is not None else InferenceConfig()
        self.organ = _as_predictor(organ_model, self.device, "organ")
        self.tumor = None if tumor_model is None else _as_predictor(tumor_model, self.device, "tumor")
        self.load_seconds = time.perf_counter() - start

    def __repr__(self) -> str:
        return f"TwoStepPredictor(organ={self.organ!r}, tumor={self.tumor!r}, mode={self.config.mode!r})"

    # ----------------------------------------------------------------------------------- one case
    def segment(self, image: Volume, *, case: str = "volume", progress: bool = False) -> tuple[np.ndarray, PredictionReport]:
        """Segment a CT volume in memory.

        Returns:
            (label, report): the (I, J, K) uint8 label map (ids 0-14) on `image`'s exact grid, and the report.
        """
        report = PredictionReport(case=case)
        label = self._run(image, report, progress=progress)
        return label, report

    def predict(
        self,
        image: str | os.PathLike | Volume,
        output_path: str | os.PathLike,
        *,
        case: str | None = None,
        progress: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> PredictionReport:
        """Segment `image` (a file, a DICOM series folder or a :class:`Volume`) and write the label map.

        The output has the input's exact shape, spacing, origin and direction and is written
        atomically: it either appears complete or not at all.

        Raises:
            InputError: the input cannot be read or is not a CT; the message names the file.
        """
        output_path = Path(output_path)
        if case is None:
            case = case_name(Path(image)) if not isinstance(image, Volume) else strip_image_suffix(output_path.name)
        report = PredictionReport(case=case, output=str(output_path))
        self._run(image, report, output_path=output_path, progress=progress, on_stage=on_stage)
        return report

    def _run(
        self,
        source: str | os.PathLike | Volume,
        report: PredictionReport,
        *,
        output_path: Path | None = None,
        progress: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> np.ndarray:
        cfg = self.config
        organ, tumor = self.organ, self.tumor
        timer = _Timer(report.timings, on_stage)
        report.mode, report.device = cfg.mode, str(self.device)
        start = time.perf_counter()

        with timer.stage("read"):
            if isinstance(source, Volume):
                volume = source
            else:
                report.input = str(source)
                volume = read_image(source)
        report.input_shape, report.input_spacing = volume.shape, tuple(volume.spacing)

        with timer.stage("preprocess"):
            pre_o = preprocess_case(volume, config=organ.preprocess_config, fingerprint=None)
            rec_o, img_o = pre_o.record, organ.normalize(pre_o.image)
            rec_t = img_t = None
            if tumor is not None:
                if tumor.preprocess_config == organ.preprocess_config:
                    rec_t = rec_o
                    img_t = img_o if tumor.fingerprint == organ.fingerprint else tumor.normalize(pre_o.image)
                else:
                    pre_t = preprocess_case(volume, config=tumor.preprocess_config, fingerprint=None)
                    rec_t, img_t = pre_t.record, tumor.normalize(pre_t.image)
                    del pre_t
            del pre_o, volume  # the input's voxels are no longer needed, only its grid (in the records)
        report.network_shape = tuple(img_o.shape)

        slab_o = self._slab(img_o.shape, organ)
        organ_box: Box = slab_o
        if cfg.roi:
            with timer.stage("roi"):
                organ_box = self._locate_organs(img_o, slab_o, report, progress)
        report.organ_box = organ_box

        with timer.stage("organ"):
            report.tiles["organ"] = organ.count_tiles(box_shape(organ_box), cfg.step, cfg.mirror)
            organ_label = organ.predict_labels(
                img_o, box=organ_box, step=cfg.step, mirror=cfg.mirror, precision=cfg.precision,
                tile_batch_size=cfg.tile_batch_size, progress=progress, desc=f"{report.case}: organ",
            )
        del img_o

        tumor_label = None
        if tumor is not None:
            with timer.stage("tumor"):
                tumor_box = self._tumor_box(organ_label, rec_o, rec_t, img_t.shape, tumor, report)
                report.tumor_box = tumor_box
                if tumor_box is None:
                    tumor_label = np.zeros(img_t.shape, dtype=np.uint8)
                else:
                    report.tiles["tumor"] = tumor.count_tiles(box_shape(tumor_box), cfg.step, cfg.mirror)
                    tumor_label = tumor.predict_labels(
                        img_t, box=tumor_box, step=cfg.step, mirror=cfg.mirror, precision=cfg.precision,
                        tile_batch_size=cfg.tile_batch_size, progress=progress, desc=f"{report.case}: tumor",
                    )
            del img_t

        if tumor_label is None or _same_network_grid(rec_o, rec_t):
            with timer.stage("postprocess"):
                merged = self._merge(organ_label, tumor_label, rec_o.network.spacing)
            with timer.stage("restore"):
                label = restore_label(merged, rec_o)
        else:
            with timer.stage("restore"):
                organ_full = restore_label(organ_label, rec_o)
                tumor_full = restore_label(tumor_label, rec_t)
            with timer.stage("postprocess"):
                label = self._merge(organ_full, tumor_full, rec_o.original.spacing)
        counts = np.bincount(label.ravel(), minlength=15)
        report.voxel_counts = {int(i): int(c) for i, c in enumerate(counts) if c and i}

        if output_path is not None:
            with timer.stage("write"):
                _remove_stale_temporaries(output_path)
                write_label(label, _geometry_reference(rec_o.original), output_path)
        report.timings["total"] = time.perf_counter() - start
        log.info("%s", report.summary())
        return label

    # ----------------------------------------------------------------------------------- stages
    def _slab(self, shape: tuple[int, ...], model: ModelPredictor) -> Box:
        """The whole network grid, or in paper mode its middle slab along K."""
        cfg = self.config
        if cfg.paper_slices is None:
            return full_box(shape)
        n = slices_for_extent(cfg.paper_slices * cfg.paper_slice_mm, model.spacing[2])
        return middle_slab(shape, n, axis=2)

    def _locate_organs(self, image: np.ndarray, slab: Box, report: PredictionReport, progress: bool) -> Box:
        """The coarse pass: organ model on the pooled image; organs' box + margin on the network grid."""
        cfg, organ = self.config, self.organ
        coarse = downsample(image, cfg.roi_downsample)
        report.tiles["roi"] = organ.count_tiles(coarse.shape, cfg.roi_step)
        coarse_label = organ.predict_labels(
            coarse, step=cfg.roi_step, precision=cfg.precision, tile_batch_size=cfg.tile_batch_size,
            progress=progress, desc=f"{report.case}: roi",
        )
        found = label_box(coarse_label, ORGAN_IDS)
        if found is None:
            report.notes.append("the coarse pass found no organ: the whole volume is predicted")
            log.warning("%s: the coarse pass found no organ; predicting the whole volume", report.case)
            return slab
        box = scale_box(found, coarse.shape, image.shape)
        box = expand_box(box, margin_voxels(cfg.roi_margin_mm, organ.spacing), image.shape)
        box = ensure_min_size(box, organ.patch_size, image.shape)
        return intersect(box, slab)

    def _tumor_box(
        self,
        organ_label: np.ndarray,
        rec_o: PreprocessRecord,
        rec_t: PreprocessRecord,
        shape_t: tuple[int, ...],
        tumor: ModelPredictor,
        report: PredictionReport,
    ) -> Box | None:
        """Where the tumour model runs on its grid; None when it is skipped."""
        cfg = self.config
        slab = self._slab(shape_t, tumor)
        if not cfg.roi:
            return slab
        hosts = label_box(organ_label, LESION_HOST_IDS)
        if hosts is None:
            report.notes.append("no lesion-host organ found: the tumour model was not run")
            log.info("%s: no lesion-host organ predicted; skipping the tumour model", report.case)
            return None
        box = expand_box(hosts, margin_voxels(cfg.tumor_margin_mm, rec_o.network.spacing), organ_label.shape)
        box = map_box(box, rec_o.network, rec_t.network)
        box = intersect(ensure_min_size(box, tumor.patch_size, shape_t), slab)
        return None if is_empty(box) else box

    def _merge(self, organ_label: np.ndarray, tumor_label: np.ndarray | None, spacing: tuple[float, ...]) -> np.ndarray:
        cfg = self.config
        organs = postprocess(organ_label, spacing, cfg.postprocess) if cfg.postprocess.enabled else organ_label
        if tumor_label is None:
            return organs.astype(np.uint8, copy=False)
        lesions = postprocess(tumor_label, spacing, cfg.postprocess) if cfg.postprocess.enabled else tumor_label
        return merge_labels(organs, lesions, host_ids=LESION_HOST_IDS if cfg.tumor_in_organs_only else None)

    # ----------------------------------------------------------------------------------- folders
    def predict_folder(
        self,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        overwrite: bool = False,
        progress: bool = True,
    ) -> BatchReport:
        """Predict every case of `input_dir` into `output_dir` (see :func:`predict_folder`)."""
        start = time.perf_counter()
        input_dir, output_dir = Path(input_dir), Path(output_dir)
        cases = find_cases(input_dir)
        if output_dir.resolve() == input_dir.resolve():
            raise InputError(f"{output_dir}: the output folder must differ from the input folder (outputs would be read as inputs)")
        batch = BatchReport(str(input_dir), str(output_dir))
        output_dir.mkdir(parents=True, exist_ok=True)
        todo: list[CaseInput] = []
        seen: dict[str, CaseInput] = {}
        for c in cases:
            if c.name in seen:
                batch.failed[c.path.name] = f"{c.path}: its output name {c.output_name} clashes with {seen[c.name].path.name}"
                log.error("%s", batch.failed[c.path.name])
                continue
            seen[c.name] = c
            if (output_dir / c.output_name).is_file() and not overwrite:
                batch.skipped.append(c.name)
            else:
                todo.append(c)
        if batch.skipped:
            log.info("%d case(s) already predicted in %s: skipped (use overwrite to redo them)", len(batch.skipped), output_dir)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="cases", unit="case")
        try:
            for c in todo:
                on_stage = None
                if bar is not None:
                    on_stage = lambda stage, name=c.name: bar.set_postfix_str(f"{name}: {stage}")  # noqa: E731
                try:
                    report = self.predict(c.path, output_dir / c.output_name, case=c.name, progress=progress, on_stage=on_stage)
                except Exception as exc:  # one bad case must not stop the others
                    message = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
                    batch.failed[c.name] = message
                    if isinstance(exc, InputError):
                        log.error("%s: %s", c.name, message)
                    else:
                        log.exception("%s: prediction failed", c.name)
                else:
                    batch.predicted.append(report)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        batch.seconds = time.perf_counter() - start
        log.info("%s", batch.summary())
        return batch


def _remove_stale_temporaries(output_path: Path) -> None:
    """Delete temporary files an interrupted write of `output_path` may have left (io.write_volume's naming)."""
    if output_path.parent.is_dir():
        for tmp in output_path.parent.glob(f".{output_path.name}.*"):
            log.debug("removing a stale temporary file %s", tmp)
            tmp.unlink(missing_ok=True)


def _is_dicom_folder(folder: Path) -> bool:
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return False


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_path(p) and not p.name.startswith("."))


def is_single_series(folder: Path) -> bool:
    """True when `folder` is itself one DICOM series (and holds no image file): one case, not a batch."""
    return not _image_files(folder) and _is_dicom_folder(folder)


def find_cases(input_dir: str | os.PathLike) -> list[CaseInput]:
    """The cases of an input folder, sorted by name.

    Every image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``) is a case, and so is every
    sub-folder holding a DICOM series. A folder that is itself a DICOM series (and holds no image
    file) is one case named after the folder. Other files are ignored.

    Raises:
        InputError: the folder does not exist or holds no case.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    if is_single_series(input_dir):
        return [CaseInput(input_dir.name, input_dir)]
    files = _image_files(input_dir)
    folders = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    cases = [CaseInput(case_name(p), p) for p in files]
    cases += [CaseInput(p.name, p) for p in folders if _is_dicom_folder(p)]
    if not cases:
        raise InputError(f"{input_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) or DICOM series found")
    return sorted(cases, key=lambda c: c.name)


# --------------------------------------------------------------------------------------- functions
def predict_case(
    image: str | os.PathLike | Volume,
    output_path: str | os.PathLike,
    *,
    organ_model: str | os.PathLike | ModelPredictor,
    tumor_model: str | os.PathLike | ModelPredictor | None,
    config: InferenceConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> PredictionReport:
    """Load both models, segment one CT and write its label map (ids 0-14) in the input's exact geometry.

    Args:
        image: a CT file, a DICOM series folder or a :class:`~flareseg.io.Volume`.
        output_path: the label file to write (atomically).
        organ_model, tumor_model: model folders (or loaded predictors); `tumor_model` None predicts organs only.
        config: inference settings (default: ``InferenceConfig.for_mode('fast')``).
        device: 'cpu', 'cuda', 'auto', ...

    Returns:
        The report; ``timings['load']`` is the model loading time and is included in 'total'.

    Raises:
        InputError: unreadable input (the message names the file).
        ModelFolderError: a model folder is missing or invalid.
    """
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    report = predictor.predict(image, output_path, progress=progress)
    report.timings["load"] = predictor.load_seconds
    report.timings["total"] += predictor.load_seconds
    return report


def predict_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    organ_model: str | os.PathLike | ModelPredictor,
    tumor_model: str | os.PathLike | ModelPredictor | None,
    config: InferenceConfig | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every case of a folder (FLARE naming: ``<case>_0000.nii.gz`` in -> ``<case>.nii.gz`` out).

    Cases whose output file exists are skipped unless `overwrite`, so an interrupted batch resumes
    where it stopped. Each output is written through a temporary file and a rename: a failure never
    leaves a partial file. A case that fails (unreadable input, ...) is logged and listed in
    ``BatchReport.failed`` and the others go on.

    Raises:
        InputError: the input folder does not exist, holds no case, or is the output folder.
        ModelFolderError: a model folder is missing or invalid.
    """
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    return predictor.predict_folder(input_dir, output_dir, overwrite=overwrite, progress=progress)
