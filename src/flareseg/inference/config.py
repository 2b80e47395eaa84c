"""Inference settings: the ``fast``, ``accurate`` and ``paper`` modes as values of one frozen config."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flareseg.config import MIN_STEP, apply_overrides, to_dict
from flareseg.errors import ConfigError
from flareseg.labels import ALL_FOREGROUND_IDS, find_label, key_of
from flareseg.model.engine import check_engine
from flareseg.model.sliding_window import PRECISIONS, mirror_combinations
from flareseg.transforms.postprocess import DEFAULT as DEFAULT_POSTPROCESS
from flareseg.transforms.postprocess import OFF as NO_POSTPROCESS
from flareseg.transforms.postprocess import PostprocessConfig

MODES: tuple[str, ...] = ("fast", "accurate", "paper")
"""The inference presets (:meth:`InferenceConfig.for_mode`)."""


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the two-step prediction. Build presets with :meth:`for_mode`.

    Attributes:
        mode: name of the preset this came from (for reports; behaviour follows the fields).
        step: sliding-window step as a fraction of the patch, in [MIN_STEP, 1]; overlap = 1 - step.
            None: each model's own step (the ``inference.step`` of its folder: 0.8 for flareseg's
            models, 0.5 for nnU-Net's, whose predictions change at a sparser tiling).
        mirror: spatial axes (0, 1, 2 of the canonical LPS network grid) for test-time mirroring; the
            logits are averaged over every subset of flips (``(0, 1, 2)``: 8 passes, as nnU-Net).
            None: each model's own trained axes (the ``inference.mirror_axes`` its training wrote:
            the axes its augmentation flipped); ``()``: no mirroring.
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
        organs: the label ids to write (organs 1-13, lesion 14), or None for all. Given as names or ids
            (:func:`parse_label_selection`), stored as sorted ids. Other labels are written as 0; the
            tumour model runs only when 14 is asked for, and in ``roi`` mode the fine organ pass covers
            only the requested organs (plus the lesion hosts when 14 is asked for).
        engine: what runs the networks on each tile: 'torch', or their ONNX export on 'onnxruntime' or
            'openvino' (CPU, float32; :mod:`flareseg.model.engine`); an engine that is not installed
            falls back to torch with a warning. 'auto': OpenVINO on the CPU in float32 where it is
            installed, else torch (:func:`flareseg.model.engine.resolve_engine`).
    """

    mode: str = "fast"
    step: float | None = None
    mirror: tuple[int, ...] | None = ()
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
    organs: tuple[int, ...] | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.organs is not None:
            object.__setattr__(self, "organs", parse_label_selection(self.organs))
        for name in ("step", "roi_step") if self.step is not None else ("roi_step",):  # step None: each model's own
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not MIN_STEP <= value <= 1:  # NaN fails too
                raise ConfigError(f"inference.{name} must be a number in [{MIN_STEP}, 1], got {value!r}")
        try:
            if self.mirror is not None:
                mirror_combinations(self.mirror)
        except (ConfigError, TypeError, ValueError):
            raise ConfigError(f"inference.mirror must be None or distinct axes among 0, 1, 2; got {self.mirror!r}") from None
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
        check_engine(self.engine, self.precision)

    @classmethod
    def for_mode(cls, mode: str = "fast", **overrides: Any) -> "InferenceConfig":
        """The preset of `mode` with `overrides` applied to its fields.

        - ``fast``: coarse organ pass on a 2x pooled grid, fine models in the ROI, each model's own step
          (0.8 for flareseg's, 0.5 for nnU-Net's), no mirroring, post-processing on.
        - ``accurate``: whole volume, step 0.5, mirroring along each model's trained axes, post-processing on.
        - ``paper``: the paper's procedure: whole network grid but only its middle 50 mm along K,
          step 0.5, mirroring along each model's trained axes, no post-processing.

        Test-time mirroring (``mirror=None``) uses only the axes each model's augmentation flipped
        (for the paper's protocol I and J: 4 passes): mirroring the axial axis too (nnU-Net's 8
        passes) shows the network upside-down anatomy it never saw in training, which measurably hurt
        a trained `cpu` model (stomach DSC 0.87 -> 0.32). An explicit tuple overrides it for both models.

        `overrides` are field names, nested mappings for sections (``postprocess={"fill_holes": True}``
        changes that one field of the mode's post-processing), see :func:`flareseg.config.apply_overrides`.

        Raises:
            ConfigError: unknown mode or field, or an invalid value.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
        base = {
            "fast": cls(mode="fast"),
            "accurate": cls(mode="accurate", step=0.5, mirror=None, roi=False),
            "paper": cls(mode="paper", step=0.5, mirror=None, roi=False, paper_slices=50, postprocess=NO_POSTPROCESS),
        }[mode]
        return apply_overrides(base, overrides, prefix="inference")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)



def parse_label_selection(selection: str | int | Iterable[str | int]) -> tuple[int, ...]:
    """Label ids from names or ids: ``"liver,spleen"``, ``["liver", 3]``, ``"1,14"`` -> sorted unique ids.

    Names follow :func:`flareseg.labels.find_label` (any case; spaces, underscores or hyphens; short
    names such as ``RK``); ``lesion`` (14) asks for the lesions.

    Raises:
        ConfigError: an unknown name or id (the message lists the valid names), or an empty selection.
    """
    tokens = selection.split(",") if isinstance(selection, str) else [selection] if isinstance(selection, int) else list(selection)
    tokens = [t.strip() if isinstance(t, str) else t for t in tokens]
    tokens = [t for t in tokens if t != ""]
    valid = ", ".join(key_of(i) for i in ALL_FOREGROUND_IDS)
    if not tokens:
        raise ConfigError(f"inference.organs is empty; name at least one of: {valid} (or ids 1-14)")
    ids = set()
    for token in tokens:
        found = find_label(token)
        if found is None:
            raise ConfigError(f"unknown organ {token!r} in inference.organs; valid names: {valid} (or ids 1-14)")
        ids.add(found.id)
    return tuple(sorted(ids))
