#!/usr/bin/env python
"""Lesion post-processing rules swept over written label maps: lesion DSC and lesion-wise detection.

Not a test. For each rule (drop lesion components under ``--min-ml`` millilitres, optionally keep only
those touching a lesion-host organ, optionally keep only the ``--top-k`` largest), the lesion mask (id 14)
of every prediction in PRED_DIR is filtered and scored against REF_DIR: lesion DSC over the cases with
reference lesions, the official mean (an empty case scores 1) and lesion-wise sensitivity, false positives
per case and F1 (:mod:`flareseg.evaluation.lesions`).

    python scripts/bench_lesion_rules.py runs/demo/predict_fast/predictions runs/demo/cohort/labelsVal
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cc3d
import numpy as np

from flareseg.evaluation.evaluate import find_cases, read_label_array
from flareseg.evaluation.lesions import detect_lesions, pool_detections
from flareseg.evaluation.metrics import dice
from flareseg.labels import LESION, LESION_HOST_IDS
from flareseg.transforms.merge import lesions_touching


def filtered_lesions(label: np.ndarray, voxel_ml: float, min_ml: float, hosts: bool, top_k: int) -> np.ndarray:
    """The (I, J, K) bool lesion mask of `label` after the rule (`voxel_ml`: one voxel's volume in ml)."""
    lesion = label == LESION
    if hosts:
        lesion = lesions_touching(lesion, np.where(lesion, 0, label), LESION_HOST_IDS)
    components, n = cc3d.connected_components(lesion, connectivity=26, return_N=True)
    counts = np.bincount(components.ravel(), minlength=n + 1)
    keep = counts * voxel_ml >= min_ml
    if top_k:
        keep[np.argsort(-counts[1:])[top_k:] + 1] = False
    keep[0] = False
    return keep[components]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("ref_dir", type=Path)
    parser.add_argument("--min-ml", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--top-k", type=int, nargs="+", default=[0, 3], help="keep the k largest components (0: all)")
    args = parser.parse_args()
    cases = []
    for _, ref_path, pred_path in find_cases(args.pred_dir, args.ref_dir):
        ref, spacing, _ = read_label_array(ref_path)  # the reference's spacing, as the scorer uses it
        pred, _, _ = read_label_array(pred_path)
        cases.append((pred, ref == LESION, float(np.prod(spacing)) / 1000.0))
    print("| min ml | touching a host organ | largest k | lesion DSC, cases with lesions | official mean | sensitivity | FP per case | F1 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for min_ml, hosts, top_k in itertools.product(args.min_ml, (False, True), args.top_k):
        present, official, counts = [], [], []
        for pred, ref, voxel_ml in cases:
            mask = filtered_lesions(pred, voxel_ml, min_ml, hosts, top_k)
            score = dice(ref, mask) if ref.any() else float(not mask.any())
            official.append(score)
            if ref.any():
                present.append(score)
            counts.append(detect_lesions(ref, mask))
        pool = pool_detections(counts)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {min_ml:g} | {'yes' if hosts else 'no'} | {top_k or 'all'} | {np.mean(present):.3f} | {np.mean(official):.3f} | "
              f"{fmt(pool['sensitivity'])} | {fmt(pool['fp_per_case'])} | {fmt(pool['f1'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
