"""Where training runs: the device, mixed precision, and (under ``torchrun``) the process group.

With ``WORLD_SIZE`` > 1 each process joins the group (NCCL on CUDA, gloo on CPU); rank 0 validates
and writes every file, and the helpers below keep the ranks in step. With one process they do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from flareseg.errors import ConfigError
from flareseg.model.device import resolve_device

PRECISION_OF_AMP = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
"""The predictor's precision name for each autocast dtype training uses (validation runs alike)."""


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs: device, mixed precision, distributed rank."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that validates and writes files (rank 0)."""
        return self.rank == 0

    @property
    def precision(self) -> str:
        """The autocast dtype as a predictor precision name ('fp32', 'bf16', 'fp16')."""
        return PRECISION_OF_AMP[self.amp_dtype]


def resolve_runtime(device: str | torch.device = "cpu") -> Runtime:
    """Pick the device and precision, and join a torchrun process group when ``WORLD_SIZE`` > 1.

    The device comes from :func:`flareseg.model.device.resolve_device` (``"auto"`` takes CUDA when
    present); under torchrun a CUDA process takes ``cuda:LOCAL_RANK``. On CUDA, autocast with bfloat16
    where supported, else float16 (with a gradient scaler); on CPU, float32 (bfloat16 is very slow on
    CPUs without native support).

    Raises:
        ConfigError: an unknown device, CUDA asked for but not available, or a device type other
            than CPU and CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if world > 1:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif dev.type == "cpu":
        amp = None
    else:
        raise ConfigError(f"training supports 'cpu', 'cuda', 'cuda:N' or 'auto'; got device {device!r}")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    return Runtime(dev, amp, rank, world, local_rank)


def wrap_network(network: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`network` in DistributedDataParallel when several processes train, else itself."""
    if runtime.world_size == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(network, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)


def broadcast(value: Any, runtime: Runtime) -> Any:
    """Rank 0's `value` on every rank."""
    if runtime.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(runtime: Runtime) -> None:
    """Wait until every rank gets here."""
    if runtime.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def mean_across(value: float, runtime: Runtime) -> float:
    """The mean of `value` over the ranks."""
    if runtime.world_size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / runtime.world_size
