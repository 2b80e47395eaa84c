"""Engines that run a model's network on sliding-window tiles: PyTorch, ONNX Runtime, OpenVINO.

The sliding window (:mod:`flareseg.model.sliding_window`) calls a *tile runner*: a function from a
batch of tiles, a (B, C_in, px, py, pz) float32 tensor, to their logits, a (B, C_out, px, py, pz)
float32 tensor. Test-time mirroring, Gaussian blending and the arg-max are the sliding window's,
whatever runs the network, so every engine predicts the same procedure:

- ``torch``: the network itself (:func:`~flareseg.model.sliding_window.network_predictor`, with
  its autocast precisions);
- ``onnxruntime``, ``openvino``: the network exported to ONNX once per weights (:func:`cached_graph`)
  and run on the CPU in float32 (OpenVINO is told to: on CPUs with bf16 units it would otherwise
  lower the precision by itself). They support no other precision and no other device.

Export: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), opset
:data:`OPSET`, the batch axis dynamic and the tile size fixed (the sliding window feeds whole patches
only: shorter axes are padded). torch 2.13 marks that exporter deprecated; its torch.export-based
successor gives an equivalent graph but took 6-12 s instead of 0.7 s for a tiny network here and
needs onnxscript and onnx besides.

Cache: a graph is stored under the name of its :func:`graph_key` (SHA-256 of what decides the
network's module tree, every tensor of its state dict, the tile shape and the export settings), as ``<key>.onnx`` with
a manifest ``<key>.json`` holding the graph's own SHA-256 and size. The first writable of
:func:`cache_dirs` holds it: ``<model folder>/onnx/``, else the user's cache
(``$XDG_CACHE_HOME/flareseg/onnx``, by default ``~/.cache/flareseg/onnx``); when neither can be
written the graph is kept in memory for the process (with a warning). Changed weights have another
key, so they are exported again; a graph whose manifest is missing or does not match its bytes
(truncated, edited, half-copied) is exported again and replaced; every write is atomic. The key of a
flareseg folder is computed from its config and weights file alone, so a prediction whose graphs are
cached never builds the torch network (nor imports MONAI: 4 s of a process's start).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from flareseg.config import ENGINES
from flareseg.errors import ConfigError, ModelFolderError
from flareseg.io import atomic_write_bytes

log = logging.getLogger(__name__)

ONNX_ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
"""The engines that run the exported ONNX graph (float32, CPU)."""
ENGINE_PACKAGES: dict[str, str] = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
"""The package each ONNX engine imports; the flareseg extra that installs it has the same name."""
EXPORTER_PACKAGE = "onnx"
"""torch's ONNX exporter needs it; both engines' extras install it."""
OPSET = 17
EXPORT_FORMAT = 1
"""Version of the export settings below; part of every graph key, so a change re-exports."""
CPU_DEFAULT_ENGINE = "openvino"
"""What ``auto`` runs on the CPU where it is installed: the fastest of the three on the demo's models,
with torch's labels on every organ and the lesions (docs/efficiency.md, "Inference engines")."""
ENGINE_ENV = "FLARESEG_ENGINE"
"""Environment variable naming the engine ``auto`` stands for (for example ``torch``, to skip the ONNX export)."""
GRAPH_DIR = "onnx"
"""Folder of a model folder that caches its exported graphs."""


def check_engine(engine: str, precision: str = "auto") -> None:
    """Check an engine name and that it supports `precision`.

    Raises:
        ConfigError: an unknown engine, or fp16/bf16 with an ONNX engine (they run float32 only).
    """
    if engine not in ENGINES:
        raise ConfigError(f"inference.engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine in ONNX_ENGINES and precision not in ("auto", "fp32"):
        raise ConfigError(f"inference.precision {precision!r} needs engine torch: {engine} runs float32 only (precision auto or fp32)")


def resolve_engine(engine: str, device: torch.device, precision: str = "auto") -> str:
    """The engine that runs for the configured `engine` on `device`.

    ``auto``: the engine named by ``$FLARESEG_ENGINE`` when set, else :data:`CPU_DEFAULT_ENGINE` on
    the CPU in float32 where it and the ONNX exporter are installed, else torch (GPUs, fp16/bf16,
    a plain install), silently. Any other name: :func:`available_engine`.

    Raises:
        ConfigError: an unknown engine name (here or in ``$FLARESEG_ENGINE``).
    """
    check_engine(engine, precision)
    if engine != "auto":
        return available_engine(engine)
    named = os.environ.get(ENGINE_ENV, "").strip()
    if named:
        if named == "auto" or named not in ENGINES:
            raise ConfigError(f"${ENGINE_ENV} must be one of {', '.join(e for e in ENGINES if e != 'auto')}; got {named!r}")
        check_engine(named, precision)
        return available_engine(named)
    if device.type != "cpu" or precision not in ("auto", "fp32") or _import_error(CPU_DEFAULT_ENGINE) is not None:
        return "torch"
    return CPU_DEFAULT_ENGINE


def _import_error(engine: str) -> ImportError | None:
    """Why the runtime of the ONNX `engine` or the exporter cannot be imported; None when both can."""
    try:
        importlib.import_module(ENGINE_PACKAGES[engine])
        importlib.import_module(EXPORTER_PACKAGE)
    except ImportError as exc:
        return exc
    return None


def available_engine(engine: str) -> str:
    """`engine` when its runtime and the ONNX exporter's package can be imported, else ``'torch'`` with a one-line warning.

    Raises:
        ConfigError: an unknown engine.
    """
    check_engine(engine)
    if engine not in ONNX_ENGINES:
        return engine
    error = _import_error(engine)
    if error is not None:
        log.warning("engine %s is not available (%s; pip install 'flareseg[%s]'): running the networks with torch", engine, error, ENGINE_PACKAGES[engine])
        return "torch"
    return engine


# ------------------------------------------------------------------------------------------ graphs
def graph_key(structure: str, tensors: Mapping[str, torch.Tensor], tile_shape: Sequence[int]) -> str:
    """SHA-256 (hex) naming the ONNX graph of a network for tiles of `tile_shape` (C_in, px, py, pz).

    Covers `structure` (what decides the module tree: a flareseg folder's
    :func:`~flareseg.model.folder.network_structure`, else the module's ``repr``), every tensor of the
    state dict in name order (name, dtype, shape and bytes), the tile shape and
    :data:`EXPORT_FORMAT`/:data:`OPSET`. Hashing costs about as much as reading the weights once (0.1 s for 126 MB).
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": EXPORT_FORMAT, "opset": OPSET, "tile": [int(t) for t in tile_shape]}).encode())
    h.update(structure.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class _MainOutput(torch.nn.Module):
    """The network's full-resolution output alone (deep-supervision networks return a list of heads)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def export_onnx(network: torch.nn.Module, tile_shape: Sequence[int]) -> bytes:
    """The ONNX graph (serialised protobuf) of `network` (on the CPU), traced in eval mode.

    Input ``tiles`` (batch, C_in, px, py, pz) float32 with ``tile_shape`` = (C_in, px, py, pz);
    output ``logits`` (batch, C_out, px, py, pz) float32; the batch axis is dynamic.
    """
    was_training = network.training
    module = _MainOutput(network).eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the exporter's deprecation notice and tracer remarks on MONAI's shape checks
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (torch.zeros((1, *(int(t) for t in tile_shape))),), buffer, dynamo=False, opset_version=OPSET,
                input_names=["tiles"], output_names=["logits"], dynamic_axes={"tiles": {0: "batch"}, "logits": {0: "batch"}},
            )
    finally:
        network.train(was_training)
    return buffer.getvalue()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/flareseg/onnx`` (``~/.cache/flareseg/onnx`` when unset): graphs of read-only model folders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flareseg" / GRAPH_DIR


def cache_dirs(folder: Path | None) -> list[Path]:
    """Where a model's graph is looked for and written, in order: its folder's ``onnx/``, the user's cache."""
    return ([Path(folder) / GRAPH_DIR] if folder is not None else []) + [user_cache_dir()]


def _read_valid(graph: Path) -> bytes | None:
    """The graph's bytes when its manifest matches them; None when absent; None with a warning when corrupt."""
    manifest = graph.with_suffix(".json")
    if not graph.is_file():
        return None
    try:
        data = graph.read_bytes()
        expected = json.loads(manifest.read_text())["graph_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cached ONNX graph without a readable manifest (%s); exporting it again", graph, exc)
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("%s: cached ONNX graph does not match its manifest (corrupt or half-copied); exporting it again", graph)
        return None
    return data


def _write(directory: Path, key: str, data: bytes, tile_shape: Sequence[int], source: Path | None) -> Path:
    """Publish graph then manifest atomically in `directory`; returns the graph's path. Raises OSError."""
    graph = directory / f"{key}.onnx"
    atomic_write_bytes(graph, data)
    manifest = {
        "graph_sha256": hashlib.sha256(data).hexdigest(),
        "graph_bytes": len(data),
        "key": key,
        "tile_shape": [int(t) for t in tile_shape],
        "opset": OPSET,
        "export_format": EXPORT_FORMAT,
        "torch": torch.__version__,
        "model_folder": None if source is None else str(source),
    }
    atomic_write_bytes(graph.with_suffix(".json"), (json.dumps(manifest, indent=2) + "\n").encode())
    return graph


def _remove_stale(directory: Path, key: str) -> None:
    """Drop a model folder's graphs of earlier weights (other keys); temporaries of live writers stay."""
    for path in directory.iterdir():
        if path.suffix in (".onnx", ".json") and not path.name.startswith(".") and path.stem != key:
            path.unlink(missing_ok=True)


def cached_graph(key: str, network: Callable[[], torch.nn.Module], tile_shape: Sequence[int], folder: Path | None) -> tuple[bytes, Path | None]:
    """The ONNX graph named `key` (:func:`graph_key`) for tiles of `tile_shape`, from the cache or freshly exported.

    Args:
        key: the graph's name, from the weights it is made of.
        network: builds the network in eval mode (on any device; exported on the CPU); called only
            when the graph is not cached.
        tile_shape: (C_in, px, py, pz) of one tile.
        folder: the model folder the network came from (None: the user's cache only).

    Returns:
        The serialised graph and the file it is cached in (None when no cache folder was writable).
    """
    dirs = cache_dirs(folder)
    for directory in dirs:
        data = _read_valid(directory / f"{key}.onnx")
        if data is not None:
            log.debug("ONNX graph from the cache %s", directory / f"{key}.onnx")
            return data, directory / f"{key}.onnx"
    start = time.perf_counter()
    data = export_onnx(network(), tile_shape)
    log.info("exported the network to ONNX (%.1f MB) in %.1f s", len(data) / 1e6, time.perf_counter() - start)
    for i, directory in enumerate(dirs):
        try:
            path = _write(directory, key, data, tile_shape, folder)
        except OSError as exc:
            log.info("cannot cache the ONNX graph in %s (%s)", directory, exc.strerror or exc)
            continue
        if folder is not None and i == 0:
            _remove_stale(directory, key)
        return data, path
    log.warning("no writable cache for the ONNX graph (%s): it is kept in memory for this run and exported again next time", ", ".join(map(str, dirs)))
    return data, None


# ------------------------------------------------------------------------------------------ runners
class OnnxRuntimeRunner:
    """Tile runner on ONNX Runtime's CPU execution provider (float32).

    Args:
        graph: the serialised ONNX graph (:func:`cached_graph`).
        threads: intra-op threads (the sliding window's caller sets torch's; use the same).
        source: the file the graph came from, for error messages.

    Raises:
        ModelFolderError: ONNX Runtime cannot load the graph (the message names the file).
    """

    engine = "onnxruntime"

    def __init__(self, graph: bytes, *, threads: int, source: Path | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its graph-optimiser notes are not the user's business
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types (InvalidGraph, Fail, ...) share no public base
            raise ModelFolderError(f"{source or 'the exported graph'}: onnxruntime cannot load it: {str(exc).splitlines()[0]} (delete the file to export it again)") from None

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(tiles.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(["logits"], {"tiles": x})
        return torch.from_numpy(out).to(tiles.device)


class OpenVinoRunner:
    """Tile runner on OpenVINO's CPU plugin, inference precision pinned to float32.

    Args and Raises: as :class:`OnnxRuntimeRunner`.
    """

    engine = "openvino"

    def __init__(self, graph: bytes, *, threads: int, source: Path | None = None):
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(graph)
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"})
        except RuntimeError as exc:
            raise ModelFolderError(f"{source or 'the exported graph'}: openvino cannot load it: {str(exc).splitlines()[0]} (delete the file to export it again)") from None
        self.request = compiled.create_infer_request()

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(tiles.detach().cpu().numpy(), dtype=np.float32)
        self.request.infer({0: x})
        out = np.array(self.request.get_output_tensor(0).data, copy=True)
        return torch.from_numpy(out).to(tiles.device)


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}


def onnx_runner(
    engine: str, network: Callable[[], torch.nn.Module], *, key: str | None, tile_shape: Sequence[int], folder: Path | None, device: torch.device
) -> OnnxRuntimeRunner | OpenVinoRunner:
    """A tile runner for a network on an ONNX engine, with torch's current thread count.

    Args:
        engine: 'onnxruntime' or 'openvino' (see :func:`available_engine` for the fallback).
        network: builds the network in eval mode; called only when its graph must be exported.
        key: the graph's cache name (:func:`graph_key`); None exports the graph for this runner only
            (weights in training, which change between validations: no cache file per validation).
        tile_shape: (C_in, px, py, pz) of one tile.
        folder: the model folder (where the graph is cached; None: the user's cache).
        device: where the sliding window runs; the ONNX engines run on the CPU only.

    Raises:
        ConfigError: not an ONNX engine, or a device other than the CPU.
        ModelFolderError: the engine cannot load the graph.
    """
    if engine not in RUNNERS:
        raise ConfigError(f"{engine!r} is not an ONNX engine ({', '.join(ONNX_ENGINES)})")
    if torch.device(device).type != "cpu":
        raise ConfigError(f"engine {engine} runs on the CPU; got device {device} (use engine torch on a GPU)")
    graph, path = cached_graph(key, network, tile_shape, folder) if key is not None else (export_onnx(network(), tile_shape), None)
    return RUNNERS[engine](graph, threads=torch.get_num_threads(), source=path)
