#!/usr/bin/env python
"""The GPU check: training speed of the paper preset and fast/accurate prediction on CUDA, into one JSON.

Run by ``scripts/gpu_check.sh`` on a lent GPU machine. Measures, on CUDA with mixed precision:

- training: seconds per optimiser step of the ``paper`` preset (31.4M parameters, batch 2 of 128^3,
  Dice + CE, the preset's optimiser, autocast) after warm-up steps, and the torch peak memory;
- prediction: ``fast`` and ``accurate`` two-step prediction of a 512x512x300 CT-like phantom at
  0.8x0.8x1.0 mm with randomly initialised ``paper``-preset organ and tumour models (timing only:
  random weights segment nothing, so the fast mode's coarse pass finds no organ and falls back to
  the whole volume, the worst case); wall time with model loading, per-stage seconds, torch peak
  memory, and the NVML memory-time area sampled every 0.1 s.

``--dry-run`` does the same on the CPU with the ``tiny`` preset and a 96x96x48 volume in seconds,
so the test suite runs the script end to end without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _phantom(shape, spacing, seed=0):
    """A CT-like volume in HU: air outside an elliptic body, soft tissue and bright blobs inside."""
    import numpy as np

    from flareseg.io import Volume

    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    r2 = sum(((idx[a] - centre[a]) / (shape[a] * (0.45 if a < 2 else 0.6))) ** 2 for a in range(3))
    hu = np.where(r2 < 1, 40.0, -1000.0).astype(np.float32)
    hu[(r2 < 0.15)] = 150.0
    hu += rng.normal(0, 10, size=shape).astype(np.float32)
    return Volume(hu, tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), np.eye(3))


def _random_models(root: Path, preset: str) -> dict[str, Path]:
    import torch

    from flareseg.config import Fingerprint, get_preset
    from flareseg.model.folder import WEIGHTS_FILE, ModelConfig, channel_labels_for, save_tensors, write_model_config
    from flareseg.model.network import build_network

    out = {}
    for seed, task in enumerate(("organ", "tumor")):
        p = get_preset(preset, task)
        torch.manual_seed(seed)
        cfg = ModelConfig(task=task, preset=preset, network=p.network, preprocess=p.preprocess,
                          fingerprint=Fingerprint(-1000.0, 1500.0, 50.0, 300.0), train=p.train,
                          channel_labels=channel_labels_for(task))
        folder = root / task
        folder.mkdir(parents=True)
        write_model_config(folder, cfg)
        save_tensors(build_network(p.network).state_dict(), folder / WEIGHTS_FILE)
        out[task] = folder
    return out


def _train_steps(preset: str, device: str, warmup: int, repeats: int) -> dict:
    import torch
    from monai.losses import DiceCELoss

    from flareseg.config import get_preset
    from flareseg.model.network import build_network, count_parameters
    from flareseg.training.schedule import build_optimizer

    p = get_preset(preset, "organ")
    network = build_network(p.network).to(device).train()
    optimizer = build_optimizer(p.train, network.parameters())
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    shape = (p.train.batch_size, 1, *p.train.patch_size)
    image = torch.randn(shape, device=device)
    target = torch.randint(0, p.network.out_channels, shape, device=device)
    amp = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + repeats):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp, enabled=amp is not None):
            logits = network(image)
            logits = logits[:, 0] if logits.dim() == 6 else logits  # deep supervision: the full-resolution head
            loss = loss_fn(logits.float(), target)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return {
        "preset": preset, "parameters": count_parameters(network), "batch": p.train.batch_size,
        "patch": list(p.train.patch_size), "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "seconds_per_step_median": times[len(times) // 2], "steps_per_second": 1 / times[len(times) // 2],
        "repeats": repeats, "torch_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def _predict(mode: str, image, models: dict[str, Path], device: str, out: Path) -> dict:
    import torch

    import flareseg
    from flareseg.measure import MemorySampler

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with MemorySampler(gpu=None if device == "cuda" else False) as sampler:
        seg = flareseg.predict(image, out / f"{mode}.nii.gz", organ_model=models["organ"], tumor_model=models["tumor"], mode=mode, device=device)
    wall = time.perf_counter() - start
    curve = sampler.curve
    return {
        "mode": mode, "wall_time_s": wall, "stages_s": {k: round(v, 3) for k, v in seg.report.timings.items()},
        "tiles": seg.report.tiles, "notes": seg.report.notes,
        "torch_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "gpu_peak_mib": curve.gpu_peak_mib, "gpu_area_mib_s": curve.gpu_area_mib_s,
        "rss_peak_mib": curve.rss_peak_mib, "rss_area_mib_s": curve.rss_area_mib_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, small volume: seconds, for tests")
    parser.add_argument("--train-repeats", type=int, default=10)
    args = parser.parse_args()
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (use --dry-run to check the script on a CPU)", file=sys.stderr)
        return 2
    preset = "tiny" if args.dry_run else "paper"
    shape, spacing = ((96, 96, 48), (2.0, 2.0, 3.0)) if args.dry_run else ((512, 512, 300), (0.8, 0.8, 1.0))
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "dry_run": args.dry_run},
        "training": _train_steps(preset, device, warmup=1 if args.dry_run else 3, repeats=2 if args.dry_run else args.train_repeats),
        "prediction": [],
        "image": {"shape": list(shape), "spacing_mm": list(spacing)},
    }
    image = _phantom(shape, spacing)
    with tempfile.TemporaryDirectory(prefix="flareseg_gpu_check_") as tmp:
        models = _random_models(Path(tmp) / "models", preset)
        for mode in ("fast", "accurate"):
            result["prediction"].append(_predict(mode, image, models, device, Path(tmp)))
            print(json.dumps(result["prediction"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["training"]))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
