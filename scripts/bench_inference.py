#!/usr/bin/env python
"""Benchmark of the two-step inference: per-stage timings per mode, peak RSS, fast-vs-accurate Dice.

Not a test. Each prediction runs in a fresh child process, so its peak resident memory is its own and
includes model loading, as the FLARE efficiency rules count it: the kernel's high-water mark of that
process's own address space (VmHWM, :func:`flareseg.measure.own_peak_rss_mib`), not ``ru_maxrss``,
which Linux carries over from this parent across fork + exec. Figures are medians over ``--repeats``
runs. For the FLARE table itself (memory-time curves and areas per case) use ``flareseg benchmark``.

Without ``--organ-model/--tumor-model`` the models are RANDOMLY INITIALISED networks of ``--preset``
(timing only: their output is noise, their 'organs' fill the volume, so the ``fast`` mode's region of
interest is the whole body: its worst case, and the Dice figures mean nothing).

Examples::

    python scripts/bench_inference.py                       # random cpu-preset models, 512x512x300
    python scripts/bench_inference.py --organ-model runs/organ --tumor-model runs/tumor --repeats 3
    python scripts/bench_inference.py --modes fast --memory-shape 512 512 500 --repeats 1
    python scripts/bench_inference.py --organ-model runs/organ --organ-only --modes fast accurate --memory-shape 0 0 0
    python scripts/bench_inference.py --organ-model runs/organ --tumor-model runs/tumor --modes fast --organs liver --memory-shape 0 0 0
    python scripts/bench_inference.py --organ-model runs/demo/models/organ --tumor-model runs/demo/models/tumor --throughput 12

``--throughput N`` measures folder runs instead (and nothing else): N small synthetic phantoms predicted
by ``flareseg predict`` serially (one process, models loaded once) and with ``--ray --workers W``
(a local Ray cluster of W one-thread CPU workers), each command timed from its start to its exit,
in cases per hour; then one case alone each way, whose difference is the Ray runner's overhead
(cluster start-up, worker processes, model loading in each); and the voxels where the two runs'
label maps differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: spinning OpenMP threads tripled step times here

import numpy as np

from flareseg.evaluation.metrics import dice

STAGES = ("load", "read", "preprocess", "roi", "organ", "tumor", "postprocess", "restore", "write", "total")


# ------------------------------------------------------------------------------------------ inputs
def write_figures(path: Path | None, figures: dict) -> None:
    """Write a benchmark's figures as JSON to `path` (none when None), and say where."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {path}")


def make_ct(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0):
    """A synthetic abdominal CT of exactly `shape` (flareseg.data.synthetic's phantom, slices cropped or
    repeated at the ends to the requested count) and its label map."""
    from flareseg.io import Volume
    from flareseg.data.synthetic import synthesize_case

    image, label, _ = synthesize_case(seed, size="full", lesions=3, fov_cut=False, orientation="LPS", spacing=(spacing[0], spacing[2]))
    if image.array.shape[2] < shape[2]:
        print(f"(the phantom has {image.array.shape[2]} slices at {spacing[2]} mm; the other {shape[2] - image.array.shape[2]} repeat its "
              "end slices: not anatomy, so Dice figures there mean little)", file=sys.stderr)
    arrays = []
    for array in (image.array, label.array):
        arrays.append(_fit_axis(_fit_axis(_fit_axis(array, shape[0], 0), shape[1], 1), shape[2], 2))
    img, lab = arrays
    make = lambda a: Volume(a, (float(spacing[0]), float(spacing[1]), float(spacing[2])), image.origin, image.direction)  # noqa: E731
    return make(img.astype(np.int16)), make(lab.astype(np.uint8))


def _fit_axis(array: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Crop centrally or repeat the edge slices so that `axis` has `n` entries."""
    size = array.shape[axis]
    if size > n:
        start = (size - n) // 2
        return np.take(array, range(start, start + n), axis=axis)
    if size < n:
        before = (n - size) // 2
        pad = [(0, 0)] * 3
        pad[axis] = (before, n - size - before)
        return np.pad(array, pad, mode="edge")
    return array


def random_models(folder: Path, preset: str) -> tuple[Path, Path]:
    """Write randomly initialised organ and tumour model folders of `preset` (timing only)."""
    import torch

    from flareseg.config import Fingerprint, get_preset
    from flareseg.model.folder import WEIGHTS_FILE, ModelConfig, channel_labels_for, save_tensors, write_model_config
    from flareseg.model.network import build_network

    out = []
    for seed, task in enumerate(("organ", "tumor")):
        p = get_preset(preset, task)
        torch.manual_seed(seed)
        net = build_network(p.network)
        cfg = ModelConfig(
            task=task, preset=preset, network=p.network, preprocess=p.preprocess,
            fingerprint=Fingerprint(-160.0, 240.0, 70.0, 60.0), train=p.train, channel_labels=channel_labels_for(task),
            data={"note": "RANDOM WEIGHTS: benchmark timing only"},
        )
        d = folder / f"random_{preset}_{task}"
        save_tensors(net.state_dict(), d / WEIGHTS_FILE)
        write_model_config(d, cfg)
        out.append(d)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> None:
    """Run one prediction in this process and print a JSON line with its report and peak RSS."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from flareseg.inference import InferenceConfig, predict_case

    config = InferenceConfig.for_mode(args.mode, **json.loads(args.overrides))
    report = predict_case(args.input, args.output, organ_model=args.organ_model, tumor_model=args.tumor_model, config=config, device=args.device)
    from flareseg.measure import own_peak_rss_mib

    print("RESULT " + json.dumps({"report": report.to_dict(), "peak_rss_mb": own_peak_rss_mib()}))


def run_worker(args: argparse.Namespace, mode: str, image: Path, output: Path, overrides: dict) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--mode", mode, "--input", str(image), "--output", str(output),
        "--organ-model", str(args.organ_model), "--device", args.device, "--overrides", json.dumps(overrides),
    ]
    if args.tumor_model is not None:
        cmd += ["--tumor-model", str(args.tumor_model)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------ figures
def agreement(pred: np.ndarray, ref: np.ndarray, min_voxels: int = 1000) -> dict[int, float]:
    """Dice per label id present in `ref` with more than `min_voxels` voxels."""
    counts = np.bincount(ref.ravel(), minlength=15)
    return {i: round(dice(pred == i, ref == i), 4) for i in range(1, 15) if counts[i] > min_voxels}


def median_table(results: list[dict]) -> dict[str, float]:
    out = {}
    for stage in STAGES:
        values = [r["report"]["timings"][stage] for r in results if stage in r["report"]["timings"]]
        if values:
            out[stage] = statistics.median(values)
    out["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in results)
    return out


# ------------------------------------------------------------------------------------------ throughput
def _timed_predict(args: argparse.Namespace, inputs: Path, output: Path, ray_workers: int | None) -> dict:
    """Run `flareseg predict` on a folder in its own process; wall seconds from start to exit, and its log."""
    cmd = [sys.executable, "-m", "flareseg.cli", "predict", "-i", str(inputs), "-o", str(output), "--organ-model", str(args.organ_model), "--device", args.device]
    if args.tumor_model is not None:
        cmd += ["--tumor-model", str(args.tumor_model)]
    if ray_workers:
        cmd += ["--ray", "--workers", str(ray_workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    log_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("INFO flareseg")]
    return {"command": shlex.join(cmd), "seconds": seconds, "log": log_lines}


def throughput(args: argparse.Namespace, work: Path) -> dict:
    """Cases per hour of serial and Ray folder runs on `args.throughput` small phantoms, and the Ray overhead on one case."""
    from flareseg.data.synthetic import synthesize_case
    from flareseg.io import read_label, write_volume
    from flareseg.measure.environment import cpu_info

    many, one = work / "cases", work / "one"
    one.mkdir(parents=True, exist_ok=True)
    shapes = []
    for seed in range(args.throughput):
        image, _, _ = synthesize_case(seed, size="small", lesions=1, fov_cut=False, orientation="LPS")
        write_volume(image, many / f"case_{seed:03d}_0000.nii.gz")
        shapes.append(image.array.shape)
    write_volume(image, one / f"case_{args.throughput - 1:03d}_0000.nii.gz")
    print(f"inputs: {args.throughput} small phantoms, {min(shapes)} to {max(shapes)} voxels")
    print(f"CPU: {cpu_info().summary()}")
    runs = {}
    for name, folder, workers in (("serial", many, None), ("ray", many, args.ray_workers), ("serial_one", one, None), ("ray_one", one, args.ray_workers)):
        runs[name] = _timed_predict(args, folder, work / f"out_{name}", workers)
        print(f"  {name}: {runs[name]['seconds']:.1f} s  ({runs[name]['command']})")
        for line in runs[name]["log"]:
            print(f"      {line}")
    differing = 0
    for path in sorted((work / "out_serial").glob("*.nii.gz")):
        differing += int((read_label(path).array != read_label(work / "out_ray" / path.name).array).sum())
    n = args.throughput
    figures = {
        "cpu": cpu_info().summary(), "cases": n, "ray_workers": args.ray_workers, "shapes": shapes, "runs": runs,
        "serial_cases_per_hour": n / runs["serial"]["seconds"] * 3600, "ray_cases_per_hour": n / runs["ray"]["seconds"] * 3600,
        "ray_overhead_one_case_s": runs["ray_one"]["seconds"] - runs["serial_one"]["seconds"], "voxels_differing": differing,
    }
    print(f"\nserial: {figures['serial_cases_per_hour']:.0f} cases/h; Ray, {args.ray_workers} workers: {figures['ray_cases_per_hour']:.0f} cases/h "
          f"(x{figures['ray_cases_per_hour'] / figures['serial_cases_per_hour']:.2f}); Ray overhead on one case: {figures['ray_overhead_one_case_s']:.1f} s; "
          f"voxels differing between the two runs' outputs: {differing}")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ-model", type=Path)
    parser.add_argument("--tumor-model", type=Path)
    parser.add_argument("--organ-only", action="store_true", help="run the organ step alone (no tumour model): organ agreement without lesions overwriting organs")
    parser.add_argument("--preset", default="cpu", help="preset of the random models (default cpu)")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0), help="mm; at 1.0 the phantom's 329 slices are cropped to 300, no slice repeated")
    parser.add_argument("--modes", nargs="+", default=["fast", "accurate", "paper"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast mode (median reported)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs of the accurate and paper modes")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=(512, 512, 500), help="CT for the peak-RSS run (fast mode); 0 0 0 skips")
    parser.add_argument("--memory-spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0))
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--override", action="append", default=[], help="inference field=JSON value, e.g. step=1.0 (all modes)")
    parser.add_argument("--organs", help="also run the fast mode --repeats times writing only these labels (e.g. liver): the time an organ subset saves")
    parser.add_argument("--workdir", type=Path, help="keep inputs and outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write all figures to this JSON file")
    parser.add_argument("--throughput", type=int, default=0, metavar="N", help="only the folder-run throughput: N small phantoms, serial vs --ray (see above)")
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray workers of --throughput (default 2)")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    print("command:", shlex.join([sys.executable, *sys.argv]))
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    tmp = tempfile.TemporaryDirectory(prefix="flareseg_bench_")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    from flareseg.io import read_label, write_volume

    random_weights = args.organ_model is None or (args.tumor_model is None and not args.organ_only)
    if random_weights:
        args.organ_model, args.tumor_model = random_models(work / "models", args.preset)
        print(f"MODELS: RANDOMLY INITIALISED '{args.preset}' networks - timings only; Dice figures are meaningless")
    if args.organ_only:
        args.tumor_model = None
        print(f"models: organ {args.organ_model} alone (--organ-only)")
    elif not random_weights:
        print(f"models: organ {args.organ_model}, tumor {args.tumor_model}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, torch threads {args.threads or 'default'}")
    if args.throughput:
        figures = throughput(args, work)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2))
        return

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    image_path = work / "bench_0000.nii.gz"
    t = time.perf_counter()
    image, truth = make_ct(shape, spacing)
    write_volume(image, image_path)
    print(f"input: {shape} voxels at {spacing} mm ({time.perf_counter() - t:.1f} s to synthesise)")

    figures: dict = {"command": shlex.join([sys.executable, *sys.argv]), "random_weights": random_weights, "shape": shape, "spacing": spacing, "modes": {}}
    outputs = {}
    for mode in args.modes:
        repeats = args.repeats if mode == "fast" else args.slow_repeats
        results = []
        for r in range(repeats):
            out = work / f"out_{mode}.nii.gz"
            results.append(run_worker(args, mode, image_path, out, overrides))
            rep = results[-1]["report"]
            print(f"  {mode} run {r + 1}/{repeats}: {rep['timings']['total']:.1f} s, peak RSS {results[-1]['peak_rss_mb']:.0f} MiB, tiles {rep['tiles']}")
        outputs[mode] = work / f"out_{mode}.nii.gz"
        med = median_table(results)
        figures["modes"][mode] = {"median": med, "runs": [r["report"]["timings"] for r in results], "tiles": results[-1]["report"]["tiles"],
                                  "organ_box": results[-1]["report"]["organ_box"], "network_shape": results[-1]["report"]["network_shape"]}
    if args.organs:
        subset = f"fast[{args.organs}]"
        results = []
        for r in range(args.repeats):
            results.append(run_worker(args, "fast", image_path, work / "out_subset.nii.gz", {**overrides, "organs": args.organs}))
            rep = results[-1]["report"]
            print(f"  {subset} run {r + 1}/{args.repeats}: {rep['timings']['total']:.1f} s, tiles {rep['tiles']}, notes {rep['notes']}")
        outputs[subset] = work / "out_subset.nii.gz"
        figures["modes"][subset] = {"median": median_table(results), "runs": [r["report"]["timings"] for r in results], "tiles": results[-1]["report"]["tiles"],
                                    "organ_box": results[-1]["report"]["organ_box"], "network_shape": results[-1]["report"]["network_shape"]}

    print(f"\nper-stage medians (s) on {shape} at {spacing} mm" + (" - RANDOM WEIGHTS" if random_weights else ""))
    cols = [s for s in STAGES if any(s in figures["modes"][m]["median"] for m in figures["modes"])]
    print(f"{'mode':<9}" + "".join(f"{c:>11}" for c in cols) + f"{'peak MiB':>10}")
    for mode, fig in figures["modes"].items():
        med = fig["median"]
        print(f"{mode:<9}" + "".join(f"{med[c]:>11.2f}" if c in med else f"{'-':>11}" for c in cols) + f"{med['peak_rss_mb']:>10.0f}")

    if args.organs and "fast" in figures["modes"]:
        full, part = figures["modes"]["fast"]["median"]["total"], figures["modes"][subset]["median"]["total"]
        figures["subset_saving"] = {"organs": args.organs, "fast_s": full, "subset_s": part, "saved_s": full - part, "saved_fraction": 1 - part / full}
        sub = read_label(outputs[subset]).array
        whole = read_label(outputs["fast"]).array
        figures["subset_dice_vs_fast"] = {i: round(dice(sub == i, whole == i), 4) for i in np.unique(sub).tolist() if i}
        print(f"\n--organs {args.organs}: median {part:.1f} s instead of {full:.1f} s ({100 * (1 - part / full):.0f} % saved); "
              f"labels written {sorted(figures['subset_dice_vs_fast'])}, Dice vs the full fast map {figures['subset_dice_vs_fast']}")
    if "fast" in outputs and "accurate" in outputs:
        fast = read_label(outputs["fast"]).array
        acc = read_label(outputs["accurate"]).array
        agree = agreement(fast, acc)
        figures["fast_vs_accurate_dice"] = agree
        print("\nDice fast vs accurate (labels > 1000 voxels in accurate)" + (" - RANDOM WEIGHTS, MEANINGLESS" if random_weights else "") + ":")
        print("  " + ", ".join(f"{k}: {v:.3f}" for k, v in agree.items()) + (f"  (min {min(agree.values()):.3f})" if agree else ""))
    if not random_weights:
        figures["dice_vs_phantom"] = {}
        for mode, path in outputs.items():
            figures["dice_vs_phantom"][mode] = agreement(read_label(path).array, truth.array)
            print(f"Dice {mode} vs phantom truth: {figures['dice_vs_phantom'][mode]}")

    if any(args.memory_shape):
        mshape, mspacing = tuple(args.memory_shape), tuple(args.memory_spacing)
        mem_path = work / "mem_0000.nii.gz"
        big, _ = make_ct(mshape, mspacing, seed=1)
        write_volume(big, mem_path)
        del big
        res = run_worker(args, "fast", mem_path, work / "out_mem.nii.gz", overrides)
        figures["memory"] = {"shape": mshape, "spacing": mspacing, "peak_rss_mb": res["peak_rss_mb"], "timings": res["report"]["timings"]}
        print(f"\npeak RSS, fast mode, {mshape} at {mspacing} mm: {res['peak_rss_mb']:.0f} MiB (total {res['report']['timings']['total']:.1f} s)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
