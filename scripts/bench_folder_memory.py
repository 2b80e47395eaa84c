#!/usr/bin/env python
"""Peak memory per case over a long folder run: does a batch's memory stay flat?

    python scripts/bench_folder_memory.py --organ-model runs/demo/models/organ --tumor-model runs/demo/models/tumor \\
        --source runs/demo/cohort/imagesVal --cases 100 --workdir runs/folder_memory

Copies the CTs of --source cyclically into --cases inputs of a FLARE-layout folder, loads the
predictor once and predicts the cases one after the other in this process exactly as a folder run
does (``flareseg.inference.folder.predict_one`` per case), sampling this process's RSS every 0.1 s;
prints and writes (``folder_memory.json`` under --workdir) the peak RSS of every case and the ratio of
the last case's peak to case 5's (issue 15's bar: within 10%), and, since the inputs recur, the largest
ratio of an input's last peak to its first (growth without the inputs' differences). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from flareseg.inference import InferenceConfig, TwoStepPredictor  # noqa: E402
from flareseg.inference.folder import plan_folder, predict_one  # noqa: E402
from flareseg.measure.environment import cpu_info  # noqa: E402
from flareseg.measure.sampler import MemorySampler  # noqa: E402


def make_inputs(source: Path, folder: Path, cases: int) -> None:
    """`cases` FLARE-named inputs in `folder`, copies of the CTs in `source` in turn."""
    sources = sorted(p for p in source.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not sources:
        raise SystemExit(f"{source}: no NIfTI CT")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        target = folder / f"Case_{i + 1:04d}_0000.nii.gz"
        if not target.exists():
            shutil.copyfile(sources[i % len(sources)], target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ-model", type=Path, required=True)
    parser.add_argument("--tumor-model", type=Path)
    parser.add_argument("--source", type=Path, required=True, help="folder of NIfTI CTs to copy from")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--mode", default="fast")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    inputs, outputs = args.workdir / "inputs", args.workdir / "outputs"
    make_inputs(args.source, inputs, args.cases)
    shutil.rmtree(outputs, ignore_errors=True)
    predictor = TwoStepPredictor(args.organ_model, args.tumor_model, config=InferenceConfig.for_mode(args.mode))
    plan = plan_folder(inputs, outputs, overwrite=False)
    outputs.mkdir(parents=True)
    peaks, seconds = [], []
    for case in plan.todo:
        start = time.perf_counter()
        with MemorySampler(gpu=False) as sampler:
            status, result = predict_one(predictor, case, outputs, overwrite=False)
        if status != "predicted":
            raise SystemExit(f"{case.name}: {status}: {result}")
        peaks.append(round(sampler.curve.rss_peak_mib, 1))
        seconds.append(round(time.perf_counter() - start, 2))
        print(f"{case.name}: peak RSS {peaks[-1]:.0f} MiB, {seconds[-1]:.1f} s", flush=True)
    ratio = peaks[-1] / peaks[4] if len(peaks) >= 5 else None
    # the same input recurs every n_sources cases: its last peak against its first shows growth alone
    n_sources = len([p for p in args.source.iterdir() if p.name.endswith((".nii.gz", ".nii"))])
    drift = max(peaks[i + n_sources * ((len(peaks) - 1 - i) // n_sources)] / peaks[i] for i in range(min(n_sources, len(peaks))))
    result = {
        "command": "python scripts/bench_folder_memory.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "cpu": cpu_info().summary(),
        "cases": len(peaks),
        "mode": args.mode,
        "peak_rss_mib": peaks,
        "seconds": seconds,
        "case5_peak_mib": peaks[4] if len(peaks) >= 5 else None,
        "last_peak_mib": peaks[-1],
        "max_peak_mib": max(peaks),
        "median_peak_mib": statistics.median(peaks),
        "last_over_case5": None if ratio is None else round(ratio, 4),
        "same_input_last_over_first_max": round(drift, 4),
    }
    (args.workdir / "folder_memory.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("peak_rss_mib", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
