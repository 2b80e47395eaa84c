"""Sliding-window inference with Gaussian blending, test-time mirroring and bounded memory.

The volume is cut into overlapping tiles of the network's patch size (nnU-Net's tiling: tiles as
evenly spread as possible, ``step`` = fraction of the patch between neighbouring tiles, so the overlap is
``1 - step``), each tile's output is weighted by a Gaussian importance map (MONAI's
``compute_importance_map``, sigma = patch / 8, clamped at 1e-3) and the weighted
sum is divided by the sum of the weights:

    out(x) = sum_t w(x - s_t) f_t(x) / sum_t w(x - s_t)

where ``f_t`` is the network's output (logits, as nnU-Net v2 blends them) for tile ``t`` starting at
``s_t``. Test-time mirroring averages the logits over every combination of flips of the chosen axes
(``(0, 1, 2)``: the 8 combinations nnU-Net uses).

Memory: tiles are visited in order of their start along the last axis ``K`` (the axial axis of the
canonical LPS grid), and only a slab one patch thick along ``K`` is accumulated; slices that no later
tile touches are finalised (divided, or arg-maxed) and dropped. The multi-channel accumulator is
therefore ``C x X x Y x patch_K`` floats, not ``C x X x Y x Z``: 14 channels for a 300 x 350 footprint at
a 128 patch is 750 MB instead of 2 GB for 300 slices, and the arg-max output is one byte per voxel.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from flareseg.errors import ConfigError

log = logging.getLogger(__name__)

TilePredictor = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of tiles (B, C_in, px, py, pz) to outputs (B, C_out, px, py, pz)."""

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
SIGMA_SCALE = 0.125
"""Gaussian sigma as a fraction of the patch size (nnU-Net and MONAI: 1/8)."""


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Start indices of the tiles along one axis (nnU-Net's ``compute_steps_for_sliding_window``).

    The number of tiles is ``ceil((size - patch) / (patch * step)) + 1`` and they are spread evenly
    from 0 to ``size - patch``; an axis no longer than the patch gets one tile at 0 (it is padded).

    Raises:
        ConfigError: `step` outside (0, 1] or a non-positive size or patch.
    """
    if not 0 < step <= 1:
        raise ConfigError(f"step must lie in (0, 1], got {step}")
    if size < 1 or patch < 1:
        raise ConfigError(f"size and patch must be positive, got size {size}, patch {patch}")
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    spacing = (size - patch) / (n - 1)
    return [int(round(spacing * i)) for i in range(n)]


def count_tiles(shape: Sequence[int], patch_size: Sequence[int], step: float) -> int:
    """Number of tiles (network evaluations without mirroring) for a volume of `shape`."""
    return int(np.prod([len(tile_starts(s, p, step)) for s, p in zip(shape, patch_size)]))


def gaussian_weights(patch_size: Sequence[int], *, sigma_scale: float = SIGMA_SCALE, device: str | torch.device = "cpu") -> torch.Tensor:
    """The (px, py, pz) float32 Gaussian importance map: 1 at the centre, at least 1e-3 everywhere.

    Centred at ``(p - 1) / 2`` on every axis, so it is symmetric under flips. MONAI's
    ``compute_importance_map(mode="gaussian")`` to the last bit (tested), written out here because
    importing any part of MONAI loads all of it (4 s of every ``flareseg predict``'s start).
    """
    weights = torch.ones((), dtype=torch.float32, device=device)
    for p in (int(p) for p in patch_size):
        x = torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2.0
        weights = weights.unsqueeze(-1) * torch.exp(x**2 / (-2 * (p * sigma_scale) ** 2))
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial `axes` (0, 1, 2), the empty one first: ``2 ** len(axes)`` of them.

    Raises:
        ConfigError: an axis outside 0-2 or repeated.
    """
    axes = tuple(int(a) for a in axes)
    if len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
        raise ConfigError(f"mirror axes must be distinct values among 0, 1, 2; got {axes}")
    return [combo for n in range(len(axes) + 1) for combo in itertools.combinations(sorted(axes), n)]


def mirrored(predict: TilePredictor, axes: Sequence[int]) -> TilePredictor:
    """Wrap `predict` so that it averages its outputs over all flips of the spatial `axes`.

    For each subset ``S`` of `axes` the tile is flipped along ``S``, predicted, flipped back; the mean
    over the ``2 ** len(axes)`` subsets is returned. No axes returns `predict` itself.
    """
    combos = mirror_combinations(axes)
    if len(combos) == 1:
        return predict

    def predict_mirrored(tiles: torch.Tensor) -> torch.Tensor:
        total = None
        for combo in combos:
            dims = [2 + a for a in combo]
            x = torch.flip(tiles, dims) if dims else tiles
            y = predict(x).float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y  # not in place: y may be the caller's tensor
        return total / len(combos)  # type: ignore[operator]

    return predict_mirrored


def flipped(predict: TilePredictor, axes: Sequence[int]) -> TilePredictor:
    """Wrap `predict` so that it sees each tile flipped along the spatial `axes` (0-2), its output
    flipped back: the network runs on the other voxel order, the output lies on the caller's.
    No axes returns `predict` itself."""
    dims = [2 + a for a in mirror_combinations(axes)[-1]]
    if not dims:
        return predict

    def predict_flipped(tiles: torch.Tensor) -> torch.Tensor:
        return torch.flip(predict(torch.flip(tiles, dims)), dims)

    return predict_flipped


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The compute dtype for `precision` on `device`.

    ``auto`` is float32 on the CPU (these CPUs have no fast bf16: it is many times slower) and float16
    under autocast on CUDA (bfloat16 is available on request).

    Raises:
        ConfigError: unknown precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        return torch.float16 if kind == "cuda" else torch.float32
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if kind == "cpu" and dtype != torch.float32:
        log.warning("precision %s on the CPU: autocast to %s is usually much slower than fp32 on CPUs without native support", precision, dtype)
    return dtype


def autocast(device: str | torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """An autocast context for `dtype` on `device`, or a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def network_predictor(
    network: torch.nn.Module,
    *,
    mirror_axes: Sequence[int] = (),
    precision: str = "auto",
    device: str | torch.device = "cpu",
) -> TilePredictor:
    """A tile predictor running `network` (in eval mode) with mirroring and mixed precision; float32 out."""
    dtype = resolve_precision(precision, device)

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            out = network(tiles)
        if isinstance(out, (list, tuple)):  # deep-supervision heads: keep the full-resolution one
            out = out[0]
        return out.float()

    return mirrored(predict, mirror_axes)


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) or (C, X, Y, Z) array -> (C, X, Y, Z) float32 tensor (shares memory when it can)."""
    t = torch.as_tensor(image)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"image must be (X, Y, Z) or (C, X, Y, Z), got shape {tuple(t.shape)}")
    return t.float()


def iter_blended_slabs(
    image: np.ndarray | torch.Tensor,
    predict: TilePredictor,
    *,
    patch_size: Sequence[int],
    step: float = 0.5,
    tile_batch_size: int = 1,
    device: str | torch.device = "cpu",
    pad_value: float | None = None,
    sigma_scale: float = SIGMA_SCALE,
    progress: bool = False,
    desc: str = "tiles",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run `predict` over tiles of `image` and yield the blended output slab by slab along Z.

    Args:
        image: (X, Y, Z) or (C_in, X, Y, Z) input on the network grid.
        predict: the tile predictor (see :func:`network_predictor`).
        patch_size: (px, py, pz) tile size in voxels.
        step: distance between tile starts as a fraction of the patch, in (0, 1]; overlap = 1 - step.
        tile_batch_size: tiles per call of `predict`.
        device: where tiles are predicted and blended.
        pad_value: value used to pad an axis shorter than the patch (default: the image minimum, i.e.
            air in a body-cropped CT).
        progress: show a tqdm bar over tiles.

    Yields:
        (z0, z1, out): the blended (C_out, X, Y, z1 - z0) float32 output for slices z0 to z1 (exclusive)
        of the unpadded image, on `device`; consecutive slabs cover Z exactly once, in order.
    """
    if tile_batch_size < 1:
        raise ConfigError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
    x = _as_tensor(image)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3:
        raise ConfigError(f"patch_size must have 3 entries, got {patch_size}")
    shape = tuple(int(s) for s in x.shape[1:])
    # Pad axes shorter than the patch (centred, as nnU-Net does).
    pad_lo = [max(0, p - s) // 2 for s, p in zip(shape, patch)]
    pad_hi = [max(0, p - s) - lo for s, p, lo in zip(shape, patch, pad_lo)]
    if any(pad_lo) or any(pad_hi):
        value = float(x.min()) if pad_value is None else float(pad_value)
        x = torch.nn.functional.pad(x, (pad_lo[2], pad_hi[2], pad_lo[1], pad_hi[1], pad_lo[0], pad_hi[0]), value=value)
    padded = tuple(int(s) for s in x.shape[1:])
    starts = [tile_starts(s, p, step) for s, p in zip(padded, patch)]
    weights = gaussian_weights(patch, sigma_scale=sigma_scale, device=device)
    px, py, pz = patch
    z_lo, z_hi = pad_lo[2], pad_lo[2] + shape[2]  # the unpadded Z range, in padded coordinates

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(np.prod([len(s) for s in starts])), desc=desc, unit="tile", leave=False)

    acc: torch.Tensor | None = None  # (C_out, X, Y, pz): the slab [base, base + pz) in padded Z
    wsum = torch.zeros((padded[0], padded[1], pz), dtype=torch.float32, device=device)
    base = 0

    def finalise(stop: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield the finished slices [base, stop) clipped to the unpadded range, and shift the slab."""
        nonlocal base
        d = stop - base
        if d <= 0:
            return
        a, b = max(base, z_lo), min(stop, z_hi)
        if a < b and acc is not None:
            sl = slice(a - base, b - base)
            out = acc[:, pad_lo[0] : pad_lo[0] + shape[0], pad_lo[1] : pad_lo[1] + shape[1], sl]
            w = wsum[pad_lo[0] : pad_lo[0] + shape[0], pad_lo[1] : pad_lo[1] + shape[1], sl]
            yield a - z_lo, b - z_lo, out / w
        if acc is not None:
            if d < pz:
                acc[..., : pz - d] = acc[..., d:].clone()
                wsum[..., : pz - d] = wsum[..., d:].clone()
            acc[..., max(0, pz - d) :] = 0
            wsum[..., max(0, pz - d) :] = 0
        base = stop

    try:
        for z in starts[2]:
            yield from finalise(z)
            positions = list(itertools.product(starts[0], starts[1]))
            for i in range(0, len(positions), tile_batch_size):
                batch_pos = positions[i : i + tile_batch_size]
                tiles = torch.stack([x[:, a : a + px, b : b + py, z : z + pz] for a, b in batch_pos]).to(device)
                # no_grad only around the call: a grad mode held across the generator's yields would leak to the caller.
                with torch.no_grad():
                    out = predict(tiles).float()
                if out.shape[0] != len(batch_pos) or tuple(out.shape[2:]) != patch:
                    raise ValueError(f"the predictor returned shape {tuple(out.shape)} for tiles of shape {tuple(tiles.shape)}")
                if acc is None:
                    acc = torch.zeros((out.shape[1], padded[0], padded[1], pz), dtype=torch.float32, device=device)
                for (a, b), o in zip(batch_pos, out):
                    acc[:, a : a + px, b : b + py, :] += o * weights
                    wsum[a : a + px, b : b + py, :] += weights
                if bar is not None:
                    bar.update(len(batch_pos))
        yield from finalise(padded[2])
    finally:
        if bar is not None:
            bar.close()


def sliding_window_logits(image: np.ndarray | torch.Tensor, predict: TilePredictor, **kwargs) -> torch.Tensor:
    """The blended (C_out, X, Y, Z) float32 output on `kwargs['device']` (see :func:`iter_blended_slabs`).

    Holds the whole multi-channel output: use it for small volumes and tests; prefer
    :func:`sliding_window_argmax` for whole CTs.
    """
    return torch.cat([slab for _, _, slab in iter_blended_slabs(image, predict, **kwargs)], dim=-1)


def sliding_window_argmax(image: np.ndarray | torch.Tensor, predict: TilePredictor, **kwargs) -> np.ndarray:
    """The (X, Y, Z) uint8 arg-max over channels of the blended output, computed slab by slab on the CPU side.

    Peak memory is the input, the one-patch-thick slab accumulator and one byte per output voxel.
    Ties go to the lower channel (``torch.argmax``).
    """
    x = _as_tensor(image)
    out = np.zeros(tuple(x.shape[1:]), dtype=np.uint8)
    for z0, z1, slab in iter_blended_slabs(x, predict, **kwargs):
        if slab.shape[0] > 255:
            raise ValueError(f"cannot store the arg-max of {slab.shape[0]} channels in uint8")
        out[..., z0:z1] = slab.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return out
