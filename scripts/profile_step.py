#!/usr/bin/env python
"""Profile one CPU training step of a preset's network (torch profiler) and time cheap variants of it.

    python scripts/profile_step.py --preset cpu                 # the table in docs/training.md
    python scripts/profile_step.py --preset cpu --no-variants   # the profile only

Prints the profiler's table (self CPU time per op, grouped by input shape) and, for each variant,
the median seconds per step (Dice + CE, the preset's optimiser, random input of the preset's batch and patch). A
benchmark, not a test: run it alone on the machine (under the project's CPU lock).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from flareseg.config import NetworkConfig, TrainConfig, get_preset  # noqa: E402
from flareseg.measure.environment import cpu_info  # noqa: E402
from flareseg.model.network import build_network  # noqa: E402
from flareseg.training.schedule import build_optimizer  # noqa: E402


def _step_fn(cfg: NetworkConfig, train: TrainConfig, batch: int, patch: tuple[int, int, int], *, channels_last: bool = False, compiled: bool = False):
    net = build_network(cfg)
    x = torch.randn(batch, cfg.in_channels, *patch)
    y = torch.randint(0, cfg.out_channels, (batch, 1, *patch))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last_3d), x.to(memory_format=torch.channels_last_3d)
    forward = torch.compile(net) if compiled else net
    optimizer = build_optimizer(train, net.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        optimizer.step()

    return step


def seconds_per_step(step, repeats: int, warmup: int = 3) -> float:
    """Median wall seconds of `repeats` calls of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--task", default="organ", choices=("organ", "tumor"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-variants", action="store_true")
    args = parser.parse_args()
    preset = get_preset(args.preset, args.task)
    batch, patch, net = preset.train.batch_size, preset.train.patch_size, preset.network
    print(f"{cpu_info().summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}: batch {batch} x {patch}")

    step = _step_fn(net, preset.train, batch, patch)
    seconds_per_step(step, repeats=0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=30, max_shapes_column_width=80))
    if args.no_variants:
        return 0
    variants = {
        "preset": lambda: _step_fn(net, preset.train, batch, patch),
        "channels-last 3-D": lambda: _step_fn(net, preset.train, batch, patch, channels_last=True),
        "torch.compile": lambda: _step_fn(net, preset.train, batch, patch, compiled=True),
        f"filters {net.filters[0]}-96": lambda: _step_fn(dataclasses.replace(net, filters=net.filters[:-1] + (96,)), preset.train, batch, patch),
        f"filters {2 * net.filters[0]}-{net.filters[-1]}": lambda: _step_fn(
            dataclasses.replace(net, filters=tuple(min(2 * f, net.filters[-1]) for f in net.filters)), preset.train, batch, patch),
    }
    results = {name: round(seconds_per_step(make(), args.repeats), 3) for name, make in variants.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results["1 thread"] = round(seconds_per_step(_step_fn(net, preset.train, batch, patch), args.repeats), 3)
    torch.set_num_threads(threads)
    print(json.dumps({"seconds_per_step": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
