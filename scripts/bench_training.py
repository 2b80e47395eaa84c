#!/usr/bin/env python
"""Training speed and memory of each preset on this machine.

For each preset, in a fresh process (so that the peak resident memory is that preset's alone): build
the network, then time full training steps (forward, Dice+CE loss, backward, Adam step) on a batch of
the preset's size and patch; report the median seconds per step over the timed repeats after warm-up
steps, the steps per second, and the process's peak RSS. With ``--prepared`` it also times the data
pipeline (cached case -> patches -> augmentation) of that preset on a prepared cohort.

    python scripts/bench_training.py                       # cpu and tiny presets, 5 timed steps each
    python scripts/bench_training.py --presets paper --repeats 2 --warmup 1
    python scripts/bench_training.py --prepared PREPARED   # also the data pipeline per batch

Prints a table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: spinning OpenMP threads tripled step times here


def _worker(preset: str, task: str, warmup: int, repeats: int, threads: int | None, prepared: str | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from flareseg.config import get_preset
    from flareseg.model.network import build_network, count_parameters
    from flareseg.training.loss import build_loss, compute_loss
    from flareseg.training.schedule import build_optimizer

    p = get_preset(preset, task)
    network = build_network(p.network).train()
    optimizer = build_optimizer(p.train, network.parameters())
    loss_fn = build_loss()
    gen = torch.Generator().manual_seed(0)
    shape = (p.train.batch_size, 1, *p.train.patch_size)
    image = torch.randn(shape, generator=gen)
    target = torch.randint(0, p.network.out_channels, shape, generator=gen)
    wall, cpu = [], []
    for i in range(warmup + repeats):
        t, c = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(loss_fn, network(image), target)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    row = {
        "preset": preset,
        "task": task,
        "params": count_parameters(network),
        "patch": list(p.train.patch_size),
        "batch": p.train.batch_size,
        "spacing_mm": list(p.preprocess.target_spacing),
        "threads": torch.get_num_threads(),
        "s_per_step": statistics.median(wall),
        "s_per_step_min": min(wall),
        "cpu_s_per_step": statistics.median(cpu),
        "steps_per_s": 1.0 / statistics.median(wall),
        "repeats": repeats,
    }
    if prepared:
        row["data_s_per_batch"] = _time_data(prepared, p, task)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    row["load_avg_1min"] = os.getloadavg()[0]
    return row


def _time_data(prepared: str, preset, task: str, batches: int = 20) -> float:
    from pathlib import Path

    from torch.utils.data import DataLoader

    from flareseg.data.cache import CACHE_DIRNAME, CaseCache
    from flareseg.transforms.preprocessing import pad_value_of
    from flareseg.training.data import PatchStream, load_training_data

    data = load_training_data(prepared, task)
    cache = CaseCache(Path(prepared) / CACHE_DIRNAME, preset.preprocess, data.fingerprint)
    cache.build(data.train)
    stream = PatchStream(cache, [c.name for c in data.train], task, preset.train, seed=0, epoch=1, pad_value=pad_value_of(data.fingerprint))
    it = iter(DataLoader(stream, batch_size=preset.train.batch_size, num_workers=0))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu"], help="presets to time (default: tiny cpu; paper takes ~1 min per step)")
    parser.add_argument("--task", default="organ", choices=["organ", "tumor"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--prepared", default=None, help="a prepared cohort: also time the data pipeline")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        row = _worker(args.worker, args.task, args.warmup, args.repeats, args.threads, args.prepared)
        print("ROW " + json.dumps(row))
        return 0

    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--worker", preset, "--task", args.task, "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.prepared:
            cmd += ["--prepared", args.prepared]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{preset}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ROW "))
        rows.append(json.loads(line[4:]))
        print(f"  {preset}: {rows[-1]['s_per_step']:.3f} s/step", file=sys.stderr, flush=True)

    header = f"{'preset':<7}{'params':>9}{'patch':>8}{'batch':>6}{'threads':>8}{'s/step':>9}{'steps/s':>9}{'cpu s/step':>11}{'data s/batch':>13}{'peak RSS':>10}{'load':>6}"
    print(header)
    for r in rows:
        data = f"{r['data_s_per_batch']:.3f}" if "data_s_per_batch" in r else "-"
        print(
            f"{r['preset']:<7}{r['params'] / 1e6:>8.2f}M{r['patch'][0]:>7}^3{r['batch']:>6}{r['threads']:>8}{r['s_per_step']:>9.3f}"
            f"{r['steps_per_s']:>9.2f}{r['cpu_s_per_step']:>11.3f}{data:>13}{r['peak_rss_gb']:>8.2f}GB{r['load_avg_1min']:>6.1f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
