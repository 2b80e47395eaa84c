"""One trained model, ready to predict label maps on its network grid.

:class:`ModelPredictor` is built from a model folder alone (``config.json`` + ``model.safetensors``,
see :mod:`flareseg.model.folder`). It normalises a network-grid image with the model's fingerprint
(:meth:`ModelPredictor.normalize`; resampling to the model's spacing is the pipeline's
:func:`~flareseg.transforms.preprocessing.preprocess_case`), runs sliding-window inference over the
whole network grid or a box of it, and returns labels (the arg-max mapped through the model's
``channel_labels``), never full-resolution probabilities.

How the model is run comes from the folder's ``inference`` section, which training wrote
(:class:`~flareseg.config.InferenceDefaults`): the tile size, the value tiles are padded with, the
axes it may be mirrored along at test time (``mirror=None`` asks for exactly those), the tile step
it runs at where the mode leaves the step to it (``step=None``) and the voxel order its tiles are
shown in (:meth:`ModelPredictor.tile_flips`: nnU-Net's models see the input's stored one). What runs the
network on each tile is the `engine` (:mod:`flareseg.model.engine`): torch itself, or its ONNX
export on ONNX Runtime or OpenVINO; tiling, mirroring and blending are the same for all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from flareseg.config import Fingerprint, PreprocessConfig
from flareseg.errors import ConfigError
from flareseg.model.device import resolve_device
from flareseg.model.engine import check_engine, graph_key, onnx_runner
from flareseg.model.folder import ModelConfig, load_network, network_structure, read_model_config, read_weights, weights_path
from flareseg.model.nnunet import is_nnunet_folder, load_nnunet_model
from flareseg.transforms.preprocessing import normalize, stored_flips
from flareseg.transforms.roi import Box, box_slices, full_box, is_empty
from flareseg.model.sliding_window import TilePredictor, count_tiles, flipped, mirrored, network_predictor, sliding_window_argmax

log = logging.getLogger(__name__)


class ModelPredictor:
    """A loaded model (configuration + network in eval mode on a device).

    Attributes:
        config: the model's :class:`~flareseg.model.folder.ModelConfig`.
        device: where it runs.
        folder: the model folder it came from (None when built from objects).
        cache_graphs: whether an ONNX engine's graph is cached on disk (False: weights that are still
            training; the graph is exported for this predictor only).

    `network` is the network or a function building it; a flareseg folder's is built on first use
    (:attr:`network`), so a prediction on an ONNX engine whose graph is cached never builds it.
    """

    def __init__(
        self,
        config: ModelConfig,
        network: torch.nn.Module | Callable[[], torch.nn.Module],
        device: str | torch.device = "cpu",
        *,
        folder: Path | None = None,
        cache_graphs: bool = True,
    ):
        self.config = config
        self.device = resolve_device(device)
        self._network, self._build = (network.to(self.device).eval(), None) if isinstance(network, torch.nn.Module) else (None, network)
        self.folder = folder
        self.cache_graphs = cache_graphs
        self._lookup = np.asarray(config.channel_labels, dtype=np.uint8)
        self._runners: dict[str, TilePredictor] = {}

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "ModelPredictor":
        """Load a flareseg model folder, or an nnU-Net v2 trained model folder (see :mod:`flareseg.model.nnunet`).

        Raises:
            ModelFolderError: missing or invalid configuration or weights.
        """
        device = resolve_device(device)
        if is_nnunet_folder(folder):
            cfg, network = load_nnunet_model(folder, device)
            return cls(cfg, network, device, folder=Path(folder))
        cfg = read_model_config(folder)
        weights_path(folder)  # a missing weights file is refused now; one that does not fit, when the network is built
        return cls(cfg, partial(load_network, folder, cfg), device, folder=Path(folder))

    def __repr__(self) -> str:
        where = f" from {self.folder}" if self.folder else ""
        return f"ModelPredictor({self.config.task}, preset {self.config.preset!r}{where}, on {self.device})"

    @property
    def network(self) -> torch.nn.Module:
        """The network in eval mode on :attr:`device` (built on first use for a flareseg folder).

        Raises:
            ModelFolderError: the folder's weights do not fit its configuration.
        """
        if self._network is None:
            self._network = self._build().to(self.device).eval()  # type: ignore[misc]
        return self._network

    def graph_key(self, tile_shape: Sequence[int]) -> str:
        """The name of this model's ONNX graph for tiles of `tile_shape` (:func:`flareseg.model.engine.graph_key`):
        from the folder's config and weights file when the network is not built, else from the network."""
        if self._build is not None and self.folder is not None:  # a flareseg folder's, built or not
            return graph_key(network_structure(self.config), read_weights(self.folder), tile_shape)
        return graph_key(repr(self.network), self.network.state_dict(), tile_shape)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Sliding-window tile (I, J, K) in network-grid voxels (the training patch)."""
        return self.config.inference.patch_size  # type: ignore[union-attr]

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Network-grid axes the model was trained flipped along: its own test-time mirrors."""
        return self.config.inference.mirror_axes  # type: ignore[union-attr]

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.config.preprocess

    @property
    def fingerprint(self) -> Fingerprint:
        return self.config.fingerprint

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.config.preprocess.target_spacing)  # type: ignore[return-value]

    @property
    def pad_value(self) -> float:
        """What tiles reaching past the image are padded with: the normalised intensity of air, as in training."""
        return self.config.inference.pad_value  # type: ignore[union-attr]

    @property
    def tile_step(self) -> float:
        """The sliding-window step this model runs at where the mode leaves it to the model (``step=None``)."""
        return self.config.inference.step  # type: ignore[union-attr]

    def resolve_step(self, step: float | None) -> float:
        """`step`, or this model's own :attr:`tile_step` for None."""
        return self.tile_step if step is None else float(step)

    def resolve_mirror(self, mirror: Sequence[int] | None) -> tuple[int, ...]:
        """`mirror` as a tuple of axes; None means this model's own :attr:`mirror_axes`."""
        return self.mirror_axes if mirror is None else tuple(int(a) for a in mirror)

    def tile_flips(self, direction: Sequence[float]) -> tuple[int, ...]:
        """The network-grid axes each tile is flipped along before this model sees it, for an input
        stored with `direction` (3x3): none for a model trained on reoriented images, the axes its
        stored voxel order runs against LPS (:func:`~flareseg.transforms.preprocessing.stored_flips`)
        for one trained on images as stored (``inference.orientation`` ``"stored"``: nnU-Net's)."""
        if self.config.inference.orientation == "canonical":  # type: ignore[union-attr]
            return ()
        return stored_flips(direction)

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """Normalise a network-grid image in HU with this model's fingerprint."""
        return normalize(hu, self.config.fingerprint)

    def engine_runner(self, engine: str) -> TilePredictor:
        """The network exported to ONNX and run by `engine` ('onnxruntime' or 'openvino'), float32.

        Built on first use and kept: the graph is looked up in (or exported to) the cache keyed by the
        weights (:func:`flareseg.model.engine.cached_graph`; for a loaded folder, its ``onnx/``).
        Whether the engine is installed is the caller's check (:func:`~flareseg.model.engine.available_engine`).

        Raises:
            ConfigError: not an ONNX engine, or a device other than the CPU.
            ModelFolderError: the engine cannot load the graph.
        """
        if engine not in self._runners:
            tile_shape = (self.config.network.in_channels, *self.patch_size)
            key = self.graph_key(tile_shape) if self.cache_graphs else None
            self._runners[engine] = onnx_runner(
                engine, lambda: self.network, key=key, tile_shape=tile_shape, folder=self.folder, device=self.device
            )
        return self._runners[engine]

    def tile_predictor(
        self, *, mirror: Sequence[int] | None = (), flip: Sequence[int] = (), precision: str = "auto", engine: str = "torch"
    ) -> TilePredictor:
        """The network as a tile predictor run by `engine`, averaged over the flips of `mirror` (None: :attr:`mirror_axes`),
        seeing each tile flipped along `flip` (:meth:`tile_flips`).

        Raises:
            ConfigError: an unknown engine, or a precision the engine does not support (ONNX engines: fp32).
        """
        check_engine(engine, precision)
        axes = self.resolve_mirror(mirror)
        if engine == "torch":
            return flipped(network_predictor(self.network, mirror_axes=axes, precision=precision, device=self.device), flip)
        return flipped(mirrored(self.engine_runner(engine), axes), flip)

    def count_tiles(self, shape: Sequence[int], step: float | None, mirror: Sequence[int] | None = ()) -> int:
        """Network evaluations needed for a region of `shape` (mirroring included; None: :attr:`tile_step`, :attr:`mirror_axes`)."""
        return count_tiles(shape, self.patch_size, self.resolve_step(step)) * 2 ** len(self.resolve_mirror(mirror))

    def predict_labels(
        self,
        image: np.ndarray,
        *,
        box: Box | None = None,
        step: float | None = 0.5,
        mirror: Sequence[int] | None = (),
        flip: Sequence[int] = (),
        precision: str = "auto",
        engine: str = "torch",
        tile_batch_size: int = 1,
        progress: bool = False,
        desc: str | None = None,
    ) -> np.ndarray:
        """Predict a normalised (X, Y, Z) network-grid image; labels are the model's final ids.

        Args:
            image: float32 normalised image on this model's network grid (see :meth:`normalize`).
            box: predict only inside this box (the network sees only the box); background elsewhere.
                None is the whole grid.
            mirror: network-grid axes to average test-time flips over; () none, None the model's own
                :attr:`mirror_axes` (the axes it was trained flipped along).
            flip: network-grid axes each tile is shown to the network flipped along, its output flipped
                back: the case's :meth:`tile_flips`.
            step: distance between tile starts as a fraction of the patch; None this model's own :attr:`tile_step`.
            precision, tile_batch_size: see :func:`flareseg.model.sliding_window.iter_blended_slabs`.
            engine: what runs the network on each tile: 'torch', 'onnxruntime' or 'openvino' (:meth:`tile_predictor`).

        Returns:
            (X, Y, Z) uint8 label map on the image's grid, e.g. 0-13 for an organ model, 0/14 for a tumour model.
        """
        box = full_box(image.shape) if box is None else box
        out = np.zeros(image.shape, dtype=np.uint8)
        if is_empty(box):
            return out
        region = np.ascontiguousarray(image[box_slices(box)], dtype=np.float32)
        index = sliding_window_argmax(
            region,
            self.tile_predictor(mirror=mirror, flip=flip, precision=precision, engine=engine),
            patch_size=self.patch_size,
            step=self.resolve_step(step),
            tile_batch_size=tile_batch_size,
            device=self.device,
            pad_value=self.pad_value,
            progress=progress,
            desc=desc or self.config.task,
        )
        out[box_slices(box)] = self._lookup[index]
        return out


def downsample(image: np.ndarray, factor: float) -> np.ndarray:
    """Average-pool an (X, Y, Z) image to ``round(n / factor)`` voxels per axis (at least 1).

    ``factor`` 1 returns the image itself. Uses adaptive average pooling (``torch`` 'area'
    interpolation), which anti-aliases for any factor >= 1.

    Raises:
        ConfigError: a factor below 1 (or NaN).
    """
    if factor == 1:
        return image
    if not factor >= 1:
        raise ConfigError(f"downsample factor must be >= 1, got {factor}")
    size = tuple(max(1, int(round(s / factor))) for s in image.shape)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="area")[0, 0].numpy()
