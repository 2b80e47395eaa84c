#!/usr/bin/env python
"""Benchmark of the inference engines on the same weights: torch vs ONNX Runtime vs OpenVINO.

Not a test. In one run, on copies of the given model folders (so the ONNX graphs are cached in the
copies, never in the originals):

- **per tile**: for each model and engine, the seconds of one network call on one patch-sized tile
  (batch 1, no mirroring), median of ``--repeats`` calls after one warm-up call, in this process;
  and the seconds of the first export to ONNX (tracing, writing the cache);
- **per case**: the ``--mode`` prediction (default ``fast``) of the 512 x 512 x 300 benchmark CT of
  ``scripts/bench_inference.py`` (its :func:`make_ct`, at 0.8 x 0.8 x 1.0 mm), each run in a fresh
  process that loads the models (reading the cached graph included), the engines interleaved,
  ``--repeats`` runs each; medians of the total and of the network stages (roi + organ + tumour);
- **agreement**: Dice per label (ids 1-14 present in either map) of each engine's label map
  against the torch engine's.

Engines that are not installed are left out (and said so). The CPU (model and flags from ``lscpu``)
is printed and stored with the figures.

Example::

    python scripts/bench_engines.py --organ-model runs/demo/models/organ --tumor-model runs/demo/models/tumor --threads 2 --json bench_engines.json
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import bench_inference  # noqa: E402  (scripts/ is not a package: its make_ct and worker are reused)

NETWORK_STAGES = ("roi", "organ", "tumor")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")


def cpu_description() -> dict:
    """Model name, logical CPUs and the SIMD flags that decide CPU inference speed, from ``lscpu``."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("Flags", "").split())
    return {
        "model": fields.get("Model name", "unknown"),
        "cpus": fields.get("CPU(s)", "?"),
        "threads_per_core": fields.get("Thread(s) per core", "?"),
        "flags": {f: f in flags for f in CPU_FLAGS},
    }


def installed_engines() -> list[str]:
    from flareseg.config import ENGINES
    from flareseg.model.engine import ENGINE_PACKAGES

    out = []
    for engine in ENGINES:
        if engine == "auto":  # not an engine of its own: it picks one of the others
            continue
        try:
            if engine in ENGINE_PACKAGES:
                importlib.import_module(ENGINE_PACKAGES[engine])
        except ImportError as exc:
            print(f"engine {engine}: not installed ({exc}); left out")
            continue
        out.append(engine)
    return out


def copy_model(source: Path, target: Path) -> Path:
    """Copy a flareseg model folder's config.json and weights (what predicting reads) to `target`."""
    from flareseg.model.folder import CONFIG_FILE, WEIGHTS_FILE

    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(source / name, target / name)
    return target


def time_tiles(folder: Path, engines: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Per engine: ONNX export seconds (first use) and the median seconds of one tile call."""
    import torch

    from flareseg.model.predictor import ModelPredictor

    model = ModelPredictor.from_folder(folder)
    tile = torch.randn((1, model.config.network.in_channels, *model.patch_size), generator=torch.Generator().manual_seed(0))
    out = {}
    for engine in engines:
        start = time.perf_counter()
        if engine != "torch":
            model.engine_runner(engine)
        prepare = time.perf_counter() - start
        predict = model.tile_predictor(engine=engine)
        with torch.no_grad():
            predict(tile)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                predict(tile)
                times.append(time.perf_counter() - start)
        out[engine] = {"prepare_s": prepare, "tile_s": statistics.median(times), "tile_runs_s": times}
        print(f"  {folder.name} {engine}: tile {out[engine]['tile_s']:.3f} s (runs {', '.join(f'{t:.3f}' for t in times)}), "
              f"first use {prepare:.1f} s", flush=True)
    return out


def dice_per_label(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    from flareseg.evaluation.metrics import dice

    present = set(np.unique(pred)) | set(np.unique(ref))
    return {int(i): round(float(dice(pred == i, ref == i)), 4) for i in range(1, 15) if i in present}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ-model", type=Path, required=True)
    parser.add_argument("--tumor-model", type=Path, required=True)
    parser.add_argument("--mode", default="fast", choices=("fast", "accurate", "paper"))
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0))
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine (tiles and cases); medians reported")
    parser.add_argument("--threads", type=int, default=0, help="torch (and engine) threads (0: torch's default)")
    parser.add_argument("--workdir", type=Path, help="keep models, inputs and outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv])
    print("command:", command)
    tmp = tempfile.TemporaryDirectory(prefix="flareseg_engines_")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    print(f"cpu: {cpu['model']}, {cpu['cpus']} logical CPUs; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    engines = installed_engines()
    versions = {"torch": torch.__version__}
    for engine in engines[1:]:
        versions[engine] = importlib.import_module(engine).__version__
    organ = copy_model(args.organ_model, work / "models" / "organ")
    tumor = copy_model(args.tumor_model, work / "models" / "tumor")

    figures: dict = {"command": command, "cpu": cpu, "versions": versions, "threads": torch.get_num_threads(), "engines": engines, "tiles": {}}
    print("\nper tile (batch 1, no mirroring):")
    for folder in (organ, tumor):
        figures["tiles"][folder.name] = time_tiles(folder, engines, args.repeats)

    from flareseg.io import read_label, write_volume

    image_path = work / "bench_0000.nii.gz"
    image, _ = bench_inference.make_ct(tuple(args.shape), tuple(args.spacing))
    write_volume(image, image_path)
    del image
    print(f"\nper case: {args.mode} mode, {tuple(args.shape)} at {tuple(args.spacing)} mm, each run in its own process")
    worker_args = argparse.Namespace(organ_model=organ, tumor_model=tumor, device="cpu", threads=args.threads)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.repeats):
        for engine in engines:  # interleaved: drifting load on a shared machine hits every engine alike
            result = bench_inference.run_worker(worker_args, args.mode, image_path, work / f"out_{engine}.nii.gz", {"engine": engine})
            report = result["report"]
            if report["engine"] != engine:
                raise RuntimeError(f"asked for engine {engine}, the prediction ran {report['engine']}")
            t = report["timings"]
            runs[engine].append({"total_s": t["total"], "load_s": t.get("load", 0.0), "network_s": sum(t.get(s, 0.0) for s in NETWORK_STAGES),
                                 "timings": t, "tiles": report["tiles"], "peak_rss_mb": result["peak_rss_mb"]})
            print(f"  run {r + 1}/{args.repeats} {engine}: {t['total']:.1f} s (networks {runs[engine][-1]['network_s']:.1f} s, "
                  f"load {t.get('load', 0.0):.2f} s), tiles {report['tiles']}, peak RSS {result['peak_rss_mb']:.0f} MiB", flush=True)
    figures["cases"] = {e: {"runs": v, **{k: statistics.median(x[k] for x in v) for k in ("total_s", "load_s", "network_s", "peak_rss_mb")}}
                        for e, v in runs.items()}
    reference = read_label(work / "out_torch.nii.gz").array
    figures["dice_vs_torch"] = {e: dice_per_label(read_label(work / f"out_{e}.nii.gz").array, reference) for e in engines[1:]}

    print(f"\n| engine | s per tile, organ model | s per tile, tumour model | s per case ({args.mode}) | networks per case | load | min Dice vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for engine in engines:
        case = figures["cases"][engine]
        agree = figures["dice_vs_torch"].get(engine)
        low = "-" if agree is None else (f"{min(agree.values()):.4f}" if agree else "no labels")
        print(f"| {engine} | {figures['tiles']['organ'][engine]['tile_s']:.3f} | {figures['tiles']['tumor'][engine]['tile_s']:.3f} | "
              f"{case['total_s']:.1f} | {case['network_s']:.2f} | {case['load_s']:.2f} | {low} |")
    for engine, agree in figures["dice_vs_torch"].items():
        print(f"Dice per label, {engine} vs torch: {agree}")
    bench_inference.write_figures(args.json, figures)


if __name__ == "__main__":
    main()
