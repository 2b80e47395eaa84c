"""Two-step inference (DESIGN section 6): organ model, tumour model, merge, post-processing, inverse preprocessing.

:func:`predict_case` segments one CT; :class:`TwoStepPredictor` loads both models once and predicts
many (:mod:`flareseg.inference.folder` runs it over a folder). The settings are an
:class:`~flareseg.inference.config.InferenceConfig`; each case gets a
:class:`~flareseg.inference.reports.PredictionReport` with per-stage timings.

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
                organs that can hold a lesion (labels.LESION_HOST_IDS) plus ``tumor_margin_mm``, and
                when its preprocessing differs from the organ model's, its grid is resampled here, from
                that box of the input only (at least one patch wide), not in ``preprocess``;
``postprocess`` post-processing of the organ and lesion maps, then the merge (lesion id 14 wins);
``restore``     the label map back to the input's exact grid (:func:`~flareseg.transforms.preprocessing.restore_label`);
``write``       atomic write (temporary file + rename) in the input's geometry.

Post-processing runs on each model's network grid; the merge too when both models share it (same
preprocessing settings), else on the input's grid after restoring each map.

An organ subset (``config.organs``) keeps only the requested labels after the merge; without the lesion
(14) among them the tumour model is neither preprocessed for nor run, and in ``fast`` mode the fine
organ pass covers only the requested organs (plus the lesion hosts when lesions are asked for).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from flareseg.errors import ConfigError
from flareseg.inference.config import InferenceConfig
from flareseg.inference.reports import PredictionReport, StageTimer
from flareseg.io import Grid, Volume, case_name, read_image, remove_stale_temporaries, strip_image_suffix
from flareseg import __version__
from flareseg.io.output import check_output_file
from flareseg.io.write import write_segmentation
from flareseg.labels import LESION, LESION_HOST_IDS, ORGAN_IDS, TASK_TABLE, label_counts
from flareseg.model.device import resolve_device
from flareseg.model.engine import resolve_engine
from flareseg.model.predictor import ModelPredictor, downsample
from flareseg.transforms.merge import merge_labels
from flareseg.transforms.postprocess import postprocess
from flareseg.transforms.preprocessing import BodyCrop, PreprocessRecord, body_crop, preprocess_case, restore_label
from flareseg.transforms.roi import (
    Box,
    box_shape,
    ensure_min_size,
    expand_box,
    full_box,
    grow_where_touching,
    intersect,
    is_empty,
    label_box,
    map_box,
    margin_voxels,
    middle_slab,
    scale_box,
    slices_for_extent,
)

log = logging.getLogger(__name__)

MAX_ROI_GROWTHS = 3
"""How often the organ region of interest may widen where organs touch its faces (fast mode)."""
ROI_MIN_SAVING = 0.25
"""The fine organ pass runs in the region of interest only where that saves more than this fraction of
the whole grid's tiles; otherwise on the whole grid: a region that saves little costs more when a
widening reruns the pass (the real CT with nnU-Net's weights: 18 of 24 tiles, widened, 42 in all)."""


def _as_predictor(model: str | os.PathLike | ModelPredictor, device: torch.device, task: str) -> ModelPredictor:
    predictor = model if isinstance(model, ModelPredictor) else ModelPredictor.from_folder(model, device)
    expected = TASK_TABLE[task].num_channels
    if predictor.config.network.out_channels != expected:
        raise ConfigError(
            f"the {task} model must have {expected} output channels; {predictor!r} has {predictor.config.network.out_channels}"
        )
    return predictor


def _same_network_grid(a: PreprocessRecord, b: PreprocessRecord) -> bool:
    return a.crop == b.crop and a.network.matches(b.network) and a.canonical.matches(b.canonical)


class Segmentation(NamedTuple):
    """The result of segmenting one CT: the label map on the input's grid and what happened."""

    label: Volume
    report: PredictionReport


@dataclass
class NetworkInputs:
    """One case on the models' network grids: records to undo preprocessing, normalised (I, J, K) float32 images.

    An image is dropped (None) once its model has run, to free its memory.
    """

    organ_record: PreprocessRecord
    organ_image: np.ndarray | None
    tumor_record: PreprocessRecord | None = None
    tumor_image: np.ndarray | None = None
    tumor_source: BodyCrop | None = None
    """The reoriented input and its body box, kept when the tumour model's grid is made only around the lesion hosts (``roi`` mode)."""


class TwoStepPredictor:
    """The organ and tumour models, loaded once, predicting any number of cases.

    Args:
        organ_model: a model folder (or a loaded :class:`ModelPredictor`) with 14 output channels.
        tumor_model: a model folder (or predictor) with 2 output channels, or None for organs only.
        config: the inference settings (default: the ``fast`` preset).
        device: 'cpu', 'cuda', 'cuda:1', 'auto' or a torch.device.

    ``config.engine`` 'auto' (the default) runs OpenVINO on the CPU where it is installed, else torch
    (:func:`~flareseg.model.engine.resolve_engine`). With an ONNX engine, loading also exports both
    networks to ONNX or reads them from their cache (:mod:`flareseg.model.engine`); an engine asked
    for by name that is not installed falls back to torch with a warning (:attr:`engine` says which ran).

    Raises:
        ModelFolderError: a model folder is missing or invalid, or an engine cannot load its graph.
        ConfigError: a model has the wrong number of output channels, ``config.organs`` asks for the
            lesions without a tumour model, or an ONNX engine is asked to run on a GPU.
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
        if tumor_model is None and self.config.organs is not None and LESION in self.config.organs:
            raise ConfigError("inference.organs asks for the lesions, but no tumour model was given")
        self.organ = _as_predictor(organ_model, self.device, "organ")
        self.tumor = None if tumor_model is None else _as_predictor(tumor_model, self.device, "tumor")
        self.engine = resolve_engine(self.config.engine, self.device, self.config.precision)
        for model in (m for m in (self.organ, self.tumor) if m is not None):  # part of loading, so that a bad folder fails here
            if self.engine == "torch":
                model.network  # noqa: B018  (built on first use)
            else:
                model.engine_runner(self.engine)  # the ONNX graph, exported or read from its cache
        self.load_seconds = time.perf_counter() - start

    def __repr__(self) -> str:
        return f"TwoStepPredictor(organ={self.organ!r}, tumor={self.tumor!r}, mode={self.config.mode!r})"

    # ----------------------------------------------------------------------------------- one case
    def segment(
        self,
        image: str | os.PathLike | Volume,
        *,
        output: str | os.PathLike | None = None,
        case: str | None = None,
        progress: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> Segmentation:
        """Segment a CT (a file, a DICOM series folder or a :class:`Volume`), and write it when `output` is given.

        The output (NIfTI, NRRD, MHA, or DICOM SEG for a series) has the input's exact grid and is
        written atomically: it either appears complete or not at all.

        Returns:
            The label map (uint8 ids 0-14) as a :class:`Volume` on the input's exact grid, and the report.

        Raises:
            InputError: the input cannot be read or is not a CT, or the output path cannot be written
                (the input itself, a folder, an unknown suffix, a read-only folder); checked first.
        """
        if output is not None:
            output = check_output_file(output, source=None if isinstance(image, Volume) else image)
        if case is None:
            if not isinstance(image, Volume):
                case = case_name(Path(image))
            else:
                case = "volume" if output is None else strip_image_suffix(output.name)
        report = PredictionReport(case=case, output=None if output is None else str(output))
        label, grid = self._run(image, report, output_path=output, progress=progress, on_stage=on_stage)
        return Segmentation(Volume.on_grid(label, grid), report)

    def predict(
        self,
        image: str | os.PathLike | Volume,
        output_path: str | os.PathLike,
        *,
        case: str | None = None,
        progress: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> PredictionReport:
        """Segment `image` and write its label map to `output_path` (:meth:`segment`); returns the report."""
        return self.segment(image, output=output_path, case=case, progress=progress, on_stage=on_stage).report

    def _run(
        self,
        source: str | os.PathLike | Volume,
        report: PredictionReport,
        *,
        output_path: Path | None = None,
        progress: bool = False,
        on_stage: Callable[[str], None] | None = None,
    ) -> tuple[np.ndarray, Grid]:
        """The stages of one case (module docstring); returns the label map and the input's grid."""
        timer = StageTimer(report.timings, on_stage)
        report.mode, report.device, report.engine = self.config.mode, str(self.device), self.engine
        start = time.perf_counter()
        with timer.stage("read"):
            volume = source if isinstance(source, Volume) else read_image(source)
        if not isinstance(source, Volume):
            report.input = str(source)
        report.input_shape, report.input_spacing = volume.shape, tuple(volume.spacing)
        with timer.stage("preprocess"):
            net = self._preprocess(volume)
        del volume  # the records hold the input's grid; its voxels live on only in net.tumor_source (reoriented), until the tumour stage
        report.network_shape = tuple(net.organ_image.shape)
        _note_thin_scan(net.organ_record.canonical, report)
        organ_label = self._predict_organs(net, report, timer, progress)
        tumor_label = None
        if self.tumor is not None and self._tumor_model() is None:
            report.notes.append("no lesion among the requested labels: the tumour model was not run")
        if self._tumor_model() is not None:
            with timer.stage("tumor"):
                tumor_label = self._predict_lesions(net, organ_label, report, progress)
        label = self._assemble(organ_label, tumor_label, net, timer)
        report.voxel_counts = label_counts(label)
        if output_path is not None:
            with timer.stage("write"):
                remove_stale_temporaries(output_path)
                models = [str(m.folder) for m in (self.organ, self._tumor_model()) if m is not None and m.folder is not None]
                write_segmentation(label, net.organ_record.original, output_path, source=source, version=__version__, models=models)
        report.timings["total"] = time.perf_counter() - start
        log.info("%s", report.summary())
        return label, net.organ_record.original

    # ----------------------------------------------------------------------------------- stages
    def _tumor_model(self) -> ModelPredictor | None:
        """The tumour model, or None when there is none or the requested labels (config.organs) hold no lesion."""
        organs = self.config.organs
        return None if organs is not None and LESION not in organs else self.tumor

    def _fine_organ_ids(self) -> tuple[int, ...]:
        """The organs the fine organ pass must cover in ``roi`` mode: the requested ones, plus the
        lesion hosts when lesions are asked for (the tumour pass runs around them)."""
        organs = self.config.organs
        if organs is None:
            return ORGAN_IDS
        wanted = set(organs) & set(ORGAN_IDS)
        if self._tumor_model() is not None:
            wanted |= set(LESION_HOST_IDS)
        return tuple(sorted(wanted))

    def _preprocess(self, volume: Volume) -> NetworkInputs:
        """Each model's normalised network-grid image, shared when the two preprocessing settings match."""
        organ, tumor = self.organ, self._tumor_model()
        body = body_crop(volume, organ.preprocess_config)
        pre_o = preprocess_case(body, config=organ.preprocess_config, fingerprint=None)
        inputs = NetworkInputs(pre_o.record, organ.normalize(pre_o.image))
        if tumor is None:
            return inputs
        if tumor.preprocess_config == organ.preprocess_config:
            inputs.tumor_record = pre_o.record
            inputs.tumor_image = inputs.organ_image if tumor.fingerprint == organ.fingerprint else tumor.normalize(pre_o.image)
        elif self.config.roi and self.config.paper_slices is None:  # resampled around the lesion hosts once they are known (_predict_lesions)
            inputs.tumor_source = body
        else:
            pre_t = preprocess_case(body, config=tumor.preprocess_config, fingerprint=None)
            inputs.tumor_record, inputs.tumor_image = pre_t.record, tumor.normalize(pre_t.image)
        return inputs

    def _predict_organs(self, net: NetworkInputs, report: PredictionReport, timer: StageTimer, progress: bool) -> np.ndarray:
        """The ``roi`` and ``organ`` stages: labels 0-13 on the organ model's network grid."""
        cfg, organ = self.config, self.organ
        slab = self._slab(net.organ_image.shape, organ)
        organ_box: Box = slab
        whole_tiles = organ.count_tiles(box_shape(slab), cfg.step)
        flip = organ.tile_flips(net.organ_record.original.direction)
        # A region of interest saves nothing when the whole grid is one tile (a whole-volume model).
        if cfg.roi and whole_tiles > 1:
            with timer.stage("roi"):
                organ_box = self._locate_organs(net.organ_image, slab, flip, report, progress)
        with timer.stage("organ"):
            report.tiles["organ"], report.steps["organ"] = 0, organ.resolve_step(cfg.step)
            margin = margin_voxels(cfg.roi_margin_mm, organ.spacing)
            for attempt in range(MAX_ROI_GROWTHS + 1):
                if organ.count_tiles(box_shape(organ_box), cfg.step) >= (1 - ROI_MIN_SAVING) * whole_tiles:
                    organ_box = slab  # the whole grid, tiled as `accurate` tiles it
                report.tiles["organ"] += organ.count_tiles(box_shape(organ_box), cfg.step, cfg.mirror)
                label = organ.predict_labels(
                    net.organ_image, box=organ_box, step=cfg.step, mirror=cfg.mirror, flip=flip, precision=cfg.precision, engine=self.engine,
                    tile_batch_size=cfg.tile_batch_size, progress=progress, desc=f"{report.case}: organ",
                )
                # The fine pass must not lose what the weights find: an organ cut by a face of the
                # coarse region of interest widens the region, and the region is predicted again.
                grown = grow_where_touching(organ_box, label_box(label, self._fine_organ_ids()), margin, slab)
                if grown == organ_box or attempt == MAX_ROI_GROWTHS:
                    break
                report.notes.append(f"organs touched the region of interest {organ_box}: widened to {grown}")
                organ_box = grown
        report.organ_box = organ_box
        net.organ_image = None
        return label

    def _predict_lesions(self, net: NetworkInputs, organ_label: np.ndarray, report: PredictionReport, progress: bool) -> np.ndarray | None:
        """The ``tumor`` stage: labels 0/14 on the tumour model's network grid (None: no lesion host found)."""
        cfg, tumor = self.config, self.tumor
        hosts = None
        if cfg.roi:
            hosts = self._hosts_box(organ_label, net.organ_record, report)
            if hosts is None:
                return None
        if net.tumor_source is not None:
            within = self._host_region(hosts, net.organ_record, tumor)
            pre_t = preprocess_case(net.tumor_source, config=tumor.preprocess_config, fingerprint=None, within=within)
            net.tumor_source = None
            net.tumor_record, net.tumor_image = pre_t.record, tumor.normalize(pre_t.image)
        image = net.tumor_image
        net.tumor_image = None
        box = self._tumor_box(hosts, net.organ_record, net.tumor_record, image.shape, tumor)
        report.tumor_box = box
        if box is None:
            return np.zeros(image.shape, dtype=np.uint8)
        report.tiles["tumor"], report.steps["tumor"] = tumor.count_tiles(box_shape(box), cfg.step, cfg.mirror), tumor.resolve_step(cfg.step)
        return tumor.predict_labels(
            image, box=box, step=cfg.step, mirror=cfg.mirror, flip=tumor.tile_flips(net.tumor_record.original.direction),
            precision=cfg.precision, engine=self.engine,
            tile_batch_size=cfg.tile_batch_size, progress=progress, desc=f"{report.case}: tumor",
        )

    def _hosts_box(self, organ_label: np.ndarray, rec_o: PreprocessRecord, report: PredictionReport) -> Box | None:
        """The lesion-host organs' box plus ``tumor_margin_mm`` on the organ model's grid; None (noted in
        `report`) when no host organ was predicted."""
        hosts = label_box(organ_label, LESION_HOST_IDS)
        if hosts is None:
            report.notes.append("no lesion-host organ found: the tumour model was not run")
            log.info("%s: no lesion-host organ predicted; skipping the tumour model", report.case)
            return None
        return expand_box(hosts, margin_voxels(self.config.tumor_margin_mm, rec_o.network.spacing), organ_label.shape)

    def _host_region(self, hosts: Box, rec_o: PreprocessRecord, tumor: ModelPredictor) -> Box:
        """The voxel box of the reoriented input that the tumour model's grid must cover in ``roi`` mode:
        `hosts` (on the organ grid) mapped to the input's LPS grid and widened to at least one tumour
        patch, so the tiles see the context they would see on the whole grid."""
        box = map_box(hosts, rec_o.network, rec_o.canonical)
        patch = np.ceil(np.asarray(tumor.patch_size) * np.asarray(tumor.spacing) / np.asarray(rec_o.canonical.spacing)).astype(int)
        return ensure_min_size(box, patch, rec_o.canonical.shape)

    def _assemble(self, organ_label: np.ndarray, tumor_label: np.ndarray | None, net: NetworkInputs, timer: StageTimer) -> np.ndarray:
        """The ``postprocess`` and ``restore`` stages: the merged label map on the input's grid.

        Each map is post-processed on its own network grid. When the two models share that grid the
        maps are merged there and restored once; else each is restored to the input's grid and
        merged there (post-processing 512x512x300 voxels instead of the network grids' took 6 s).
        """
        rec_o, rec_t = net.organ_record, net.tumor_record
        with timer.stage("postprocess"):
            organs = self._postprocess(organ_label, rec_o.network.spacing)
            lesions = None if tumor_label is None else self._postprocess(tumor_label, rec_t.network.spacing)
            shared = lesions is None or _same_network_grid(rec_o, rec_t)
            if shared:
                merged = self._combine(organs, lesions)
        with timer.stage("restore"):
            if shared:
                return restore_label(merged, rec_o)
            organs, lesions = restore_label(organs, rec_o), restore_label(lesions, rec_t)
        with timer.stage("postprocess"):
            return self._combine(organs, lesions)

    def _slab(self, shape: tuple[int, ...], model: ModelPredictor) -> Box:
        """The whole network grid, or in paper mode its middle slab along K."""
        cfg = self.config
        if cfg.paper_slices is None:
            return full_box(shape)
        n = slices_for_extent(cfg.paper_slices * cfg.paper_slice_mm, model.spacing[2])
        return middle_slab(shape, n, axis=2)

    def _locate_organs(self, image: np.ndarray, slab: Box, flip: tuple[int, ...], report: PredictionReport, progress: bool) -> Box:
        """The coarse pass: organ model on the pooled image (its tiles flipped along `flip`); organs' box + margin on the network grid."""
        cfg, organ = self.config, self.organ
        coarse = downsample(image, cfg.roi_downsample)
        report.tiles["roi"] = organ.count_tiles(coarse.shape, cfg.roi_step)
        coarse_label = organ.predict_labels(
            coarse, step=cfg.roi_step, flip=flip, precision=cfg.precision, engine=self.engine, tile_batch_size=cfg.tile_batch_size,
            progress=progress, desc=f"{report.case}: roi",
        )
        found = label_box(coarse_label, self._fine_organ_ids())
        if found is None:
            report.notes.append("the coarse pass found none of the organs sought: the whole volume is predicted")
            log.warning("%s: the coarse pass found none of the organs sought; predicting the whole volume", report.case)
            return slab
        box = scale_box(found, coarse.shape, image.shape)
        box = expand_box(box, margin_voxels(cfg.roi_margin_mm, organ.spacing), image.shape)
        box = ensure_min_size(box, organ.patch_size, image.shape)
        return intersect(box, slab)

    def _tumor_box(self, hosts: Box | None, rec_o: PreprocessRecord, rec_t: PreprocessRecord, shape_t: tuple[int, ...], tumor: ModelPredictor) -> Box | None:
        """Where the tumour model runs on its grid: the whole slab, or (``roi`` mode) `hosts` mapped to
        it and widened to one patch; None when that misses the grid."""
        slab = self._slab(shape_t, tumor)
        if hosts is None:
            return slab
        box = map_box(hosts, rec_o.network, rec_t.network)
        box = intersect(ensure_min_size(box, tumor.patch_size, shape_t), slab)
        return None if is_empty(box) else box

    def _postprocess(self, label: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """`label` post-processed by the configured rules (its voxel `spacing` in mm)."""
        cfg = self.config.postprocess
        return postprocess(label, spacing, cfg) if cfg.enabled else label

    def _combine(self, organs: np.ndarray, lesions: np.ndarray | None) -> np.ndarray:
        """The merge of two post-processed maps on one grid (lesion wins), then the requested labels (config.organs) alone."""
        cfg = self.config
        if lesions is None:
            merged = organs.astype(np.uint8, copy=False)
        else:
            merged = merge_labels(organs, lesions, host_ids=LESION_HOST_IDS if cfg.tumor_in_organs_only else None)
        if cfg.organs is not None:
            merged = np.where(np.isin(merged, np.asarray(cfg.organs, dtype=merged.dtype)), merged, np.uint8(0)).astype(np.uint8, copy=False)
        return merged


# --------------------------------------------------------------------------------------- functions
MIN_AXIAL_EXTENT_MM = 50.0
"""A scan shorter than this along the axial axis holds slivers of the organs (the abdomen spans ~300 mm)."""


def _note_thin_scan(canonical: Grid, report: PredictionReport) -> None:
    """Warn (and note in `report`) when the reoriented input covers less than MIN_AXIAL_EXTENT_MM axially."""
    extent = canonical.shape[2] * canonical.spacing[2]
    if extent < MIN_AXIAL_EXTENT_MM:
        message = (f"the scan covers only {extent:.0f} mm along the axial axis ({canonical.shape[2]} slice(s)); "
                   f"the models were trained on whole abdomens, so expect partial or missed organs")
        report.notes.append(message)
        log.warning("%s: %s", report.case, message)


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
        image: a CT file, a DICOM series folder or a :class:`~flareseg.io.volume.Volume`.
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
    check_output_file(output_path, source=None if isinstance(image, Volume) else image)  # before loading models
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    report = predictor.predict(image, output_path, progress=progress)
    report.timings["load"] = predictor.load_seconds
    report.timings["total"] += predictor.load_seconds
    return report


def predict(
    image: str | os.PathLike | Volume,
    output: str | os.PathLike | None = None,
    *,
    organ_model: str | os.PathLike | ModelPredictor,
    tumor_model: str | os.PathLike | ModelPredictor | None = None,
    mode: str = "fast",
    config: InferenceConfig | None = None,
    organs: str | Sequence[str | int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Segmentation:
    """Segment one CT with both models and return (and optionally write) its label map.

    Args:
        image: a CT file (NIfTI, NRRD, MHA), a DICOM series folder or a :class:`Volume` in HU.
        output: the label file to write atomically (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, or ``.dcm``: a DICOM SEG for a series); None writes nothing.
        organ_model, tumor_model: model folders (flareseg or nnU-Net v2) or loaded predictors;
            `tumor_model` None segments organs only.
        mode: ``"fast"`` (default), ``"accurate"`` or ``"paper"``; ignored when `config` is given.
        config: full inference settings (:meth:`InferenceConfig.for_mode` with overrides).
        organs: write only these labels (names or ids, e.g. ``"liver,spleen"`` or ``["liver", "lesion"]``;
            :attr:`InferenceConfig.organs`); None: every label, or `config`'s choice.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns:
        A :class:`Segmentation`: ``label`` (uint8 ids 0-14, the input's exact shape, spacing, origin
        and direction) and ``report`` (per-stage seconds, boxes, voxel counts, notes).

    Raises:
        InputError: unreadable input or not a CT (the message names the file).
        ModelFolderError: a model folder is missing or invalid.
        ConfigError: an unknown mode, organ name or an invalid setting.
    """
    if output is not None:
        output = check_output_file(output, source=None if isinstance(image, Volume) else image)
    config = config or InferenceConfig.for_mode(mode)
    if organs is not None:
        config = dataclasses.replace(config, organs=organs)
    predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
    result = predictor.segment(image, output=output, progress=progress)
    result.report.timings["load"] = predictor.load_seconds
    return result
