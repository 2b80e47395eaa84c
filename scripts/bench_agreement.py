#!/usr/bin/env python
"""Where `fast` and `accurate` disagree: the organ step in four settings, against `accurate` and the truth.

Not a test. Runs the organ model alone (no tumour model, so no lesion overwrites an organ) on the
phantom CT of ``bench_inference.py`` in: ``fast``; ``fast`` at step 0.5; ``accurate`` without test-time
mirroring; ``accurate``. Prints a markdown table of Dice against ``accurate`` and against the
phantom's truth, for every organ above 1000 voxels. The second and third settings isolate what the
region of interest, the step and the mirroring each change.

Example::

    python scripts/bench_agreement.py --organ-model runs/organ_long
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_ct  # noqa: E402

from flareseg.evaluation.metrics import dice  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ-model", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from flareseg.labels import BY_ID, ORGAN_IDS
    from flareseg.inference import InferenceConfig, TwoStepPredictor

    image, truth = make_ct(tuple(args.shape), tuple(args.spacing))
    settings = {
        "fast": InferenceConfig.for_mode("fast"),
        "fast, step 0.5": InferenceConfig.for_mode("fast", step=0.5),
        "accurate, no mirroring": InferenceConfig.for_mode("accurate", mirror=()),
        "accurate": InferenceConfig.for_mode("accurate"),
    }
    predictions = {}
    for name, config in settings.items():
        start = time.perf_counter()
        predictions[name] = TwoStepPredictor(args.organ_model, None, config=config, device=args.device).segment(image).label.array
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)

    reference = predictions["accurate"]
    others = [n for n in settings if n != "accurate"]
    print(f"organ model {args.organ_model}; CT {tuple(args.shape)} at {tuple(args.spacing)} mm\n")
    print("| organ | voxels | " + " | ".join(f"{n} vs accurate" for n in others) + " | " + " | ".join(f"{n} vs truth" for n in settings) + " |")
    print("|---|---:|" + "---:|" * (len(others) + len(settings)))
    for organ in ORGAN_IDS:
        size = int((reference == organ).sum())
        if size <= 1000:
            continue
        against_accurate = [dice(predictions[n] == organ, reference == organ) for n in others]
        against_truth = [dice(predictions[n] == organ, truth.array == organ) for n in settings]
        print(f"| {BY_ID[organ].name} | {size} | " + " | ".join(f"{v:.3f}" for v in against_accurate + against_truth) + " |")


if __name__ == "__main__":
    main()
