#!/usr/bin/env python
"""The peer, side by side: nnU-Net v2's own predictor against flareseg on the same nnU-Net weights.

Not a test, and nnunetv2 is never a flareseg dependency: it lives in a virtual environment this
script creates (``--venv``, torch pinned by the project's constraints file). Stages, each resumable
(a finished stage is kept on a rerun):

1. **setup**: the venv (``pip install nnunetv2 'dynamic-network-architectures<0.4'``: 0.4 needs timm,
   which pulls torchvision), plus one trainer class, ``nnUNetTrainer_flaresegPeer``: nnU-Net's default
   trainer with ``--epochs`` epochs of ``--iterations`` steps and no final validation;
2. **train**: ``--cases`` synthetic phantoms (all 13 organs in view, LPS, resampled to 5 mm isotropic,
   the lesion counted as background as flareseg's organ task does) as an nnU-Net raw dataset,
   ``nnUNetv2_plan_and_preprocess`` (3d_fullres; the planned features per stage scaled by ``--width``
   and the patch set by ``--patch``, so that training fits 2 CPU cores) and ``nnUNetv2_train`` on
   the CPU, fold 0;
3. **measure** (run it alone on the machine): on the 512 x 512 x 300 benchmark CT of
   ``scripts/bench_inference.py`` and the real CT sample (``../shared/data/real/totalsegmentator_ct``,
   stored RAS), four commands, each its own process, interleaved, ``--repeats`` times:
   ``nnUNetv2_predict`` with its defaults (mirroring on), with ``--disable_tta``, and ``flareseg predict``
   ``--mode accurate`` and ``--mode fast`` with the nnU-Net folder as the organ model (organs only).
   Wall time and peak RSS (the largest process of the command, from ``wait4``) are recorded per run;
   agreement is the Dice per organ of flareseg ``accurate`` against nnU-Net's default output and of
   ``fast`` against its no-TTA output.

Writes ``peer.md`` (tables, command, machine) and ``peer.json`` under ``--out``.

    python scripts/bench_peer_nnunet.py --out runs/peer                     # everything
    python scripts/bench_peer_nnunet.py --out runs/peer --stage train       # the venv and the model only
    flock /tmp/locks/cpu python scripts/bench_peer_nnunet.py --out runs/peer --stage measure
    python scripts/bench_peer_nnunet.py --out runs/peer --stage measure --inputs phantom5mm --repeats 1   # the adapter alone
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATASET_ID = "901"
DATASET = f"Dataset{DATASET_ID}_FlareSynth"
TRAINER = "nnUNetTrainer_flaresegPeer"
CONFIGURATION = "3d_fullres"
TRAIN_SPACING_MM = (5.0, 5.0, 5.0)
"""Coarse enough for nnU-Net to train a few hundred steps on 2 CPU cores (at 3 mm it planned 112x160x128 patches: 12 s a step)."""
REAL_CT = ROOT.parent / "shared" / "data" / "real" / "totalsegmentator_ct" / "ct.nii.gz"
COMMANDS = ("nnunet", "nnunet_notta", "accurate", "fast", "accurate_raw", "fast_raw")
TITLES = {
    "nnunet": "nnUNetv2_predict (defaults: mirroring)",
    "nnunet_notta": "nnUNetv2_predict --disable_tta",
    "accurate": "flareseg --mode accurate",
    "fast": "flareseg --mode fast",
    "accurate_raw": "flareseg --mode accurate --no-postprocess",
    "fast_raw": "flareseg --mode fast --no-postprocess",
}
PAIRS = (("accurate", "nnunet"), ("fast", "nnunet_notta"), ("accurate_raw", "nnunet"), ("fast_raw", "nnunet_notta"))
"""Agreement pairs: (flareseg command, the nnU-Net output it should reproduce). nnU-Net's predictor writes the
raw arg-max (its post-processing is a separate command), so the ``_raw`` pairs compare like with like."""
FLARESEG_SRC = ROOT / "src"
"""The flareseg the commands run: this checkout's (not whichever is installed in the environment)."""
MIN_VOXELS = 1000
"""Organs smaller than this in the nnU-Net output are left out of the agreement table."""

TRAINER_SOURCE = '''"""Written by flareseg's scripts/bench_peer_nnunet.py: nnU-Net's default trainer on a short schedule."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_flaresegPeer(nnUNetTrainer):
    """FLARESEG_PEER_EPOCHS epochs of FLARESEG_PEER_ITERATIONS steps; the final validation is skipped."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        # nnU-Net records its constructor's arguments by the names of this signature: keep them.
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("FLARESEG_PEER_EPOCHS", "20"))
        self.num_iterations_per_epoch = int(os.environ.get("FLARESEG_PEER_ITERATIONS", "15"))
        self.num_val_iterations_per_epoch = 3

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("flareseg peer benchmark: final validation skipped")
'''


LAUNCHER = "import os, sys; pid = os.spawnv(os.P_NOWAIT, sys.argv[1], sys.argv[1:]); _, status, usage = os.wait4(pid, 0); print(usage.ru_maxrss, file=open(os.environ['FLARESEG_PEER_RSS'], 'w')); sys.exit(os.waitstatus_to_exitcode(status))"
"""Runs a command and writes its peak RSS (KiB). A child's ru_maxrss starts at its parent's RSS at the
fork (Linux keeps it across exec), so the command is started from this small interpreter, not from
the benchmark's own process, whose RSS (about 1 GiB after making the 512 x 512 x 300 CT) would hide
any smaller peak."""


def _run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run `cmd` to completion; returns (wall seconds, peak RSS in GiB of its largest process).

    Raises:
        SystemExit: the command failed (its output is in `log`, or on the terminal).
    """
    env = dict(os.environ if env is None else env)
    rss_file = Path(env.setdefault("FLARESEG_PEER_RSS", str((log or Path("peer")).with_suffix(".rss"))))
    out = open(log, "a") if log else None
    try:
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-c", LAUNCHER, shutil.which(cmd[0]) or cmd[0], *cmd[1:]], env=env,
                              stdout=out, stderr=subprocess.STDOUT if out else None).returncode
        wall = time.perf_counter() - start
    finally:
        if out:
            out.close()
    if code != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed with exit code {code}" + (f"; see {log}" if log else ""))
    return wall, int(rss_file.read_text()) / 2**20  # ru_maxrss is in KiB on Linux


def _nnunet_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(args.out / "nnUNet_raw"), "nnUNet_preprocessed": str(args.out / "nnUNet_preprocessed"),
        "nnUNet_results": str(args.out / "nnUNet_results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false",
        "FLARESEG_PEER_EPOCHS": str(args.epochs), "FLARESEG_PEER_ITERATIONS": str(args.iterations),
        "PYTHONPATH": "",
    })
    return env


def _bin(args: argparse.Namespace, name: str) -> str:
    return str(args.venv / "bin" / name)


def setup(args: argparse.Namespace) -> None:
    """The nnunetv2 venv and the short-schedule trainer in it."""
    python = args.venv / "bin" / "python"
    if not (args.venv / "bin" / "nnUNetv2_train").is_file():
        print(f"creating {args.venv} with nnunetv2 (torch pinned by {ROOT / 'constraints.txt'}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                        "nnunetv2", "dynamic-network-architectures<0.4"], check=True)
    site = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                          check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}).stdout.strip()
    trainer = Path(site) / "training" / "nnUNetTrainer" / "variants" / "flareseg_peer.py"
    if not trainer.is_file() or trainer.read_text() != TRAINER_SOURCE:
        trainer.write_text(TRAINER_SOURCE)


def phantom_at_train_spacing(seed: int):
    """A `small` LPS phantom (image HU, label FLARE ids) resampled to :data:`TRAIN_SPACING_MM` by flareseg,
    as the training data are made."""
    from flareseg.data.synthetic import synthesize_case
    from flareseg.transforms.preprocessing import resample_image, resample_label, resampled_grid

    image, label, _ = synthesize_case(seed, size="small", fov_cut=False, orientation="LPS")
    grid = resampled_grid(image.grid, TRAIN_SPACING_MM)
    return resample_image(image, grid), resample_label(label, grid)


def write_dataset(args: argparse.Namespace) -> Path:
    """`args.cases` phantoms at :data:`TRAIN_SPACING_MM` as nnU-Net raw data; returns the dataset folder."""
    from flareseg.io import Volume, write_volume
    from flareseg.labels import TASK_TABLE, name_of

    raw = args.out / "nnUNet_raw" / DATASET
    if (raw / "dataset.json").is_file():
        return raw
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    lut = TASK_TABLE["organ"].target_lut()
    for index in range(args.cases):
        image, label = phantom_at_train_spacing(args.seed + index)
        case = f"peer_{index:04d}"
        write_volume(Volume(image.array.astype("int16"), image.spacing, image.origin, image.direction), raw / "imagesTr" / f"{case}_0000.nii.gz")
        write_volume(Volume(lut[label.array], label.spacing, label.origin, label.direction), raw / "labelsTr" / f"{case}.nii.gz")
    labels = {"background": 0, **{name_of(i): i for i in TASK_TABLE["organ"].channel_labels[1:]}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": args.cases, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return raw


def model_folder(args: argparse.Namespace) -> Path:
    return args.out / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"


def _shrink_plans(plans_file: Path, width: float, patch: list[int]) -> None:
    """Scale the 3d_fullres network's features per stage by `width` and set its patch to `patch`.

    nnU-Net planned 32-320 features and a 64x96x96 patch here: over 16 s a step on 2 busy CPU cores
    (half the features: still over 20 s). The comparison needs weights that nnU-Net's own trainer
    wrote, not a large network. The planned values are kept in the plans under ``flareseg_peer``.
    """
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"][CONFIGURATION]
    arch = config["architecture"]["arch_kwargs"]
    planned = plans.setdefault("flareseg_peer", {"features_per_stage": arch["features_per_stage"], "patch_size": config["patch_size"]})
    arch["features_per_stage"] = [max(8, int(round(f * width))) for f in planned["features_per_stage"]]
    config["patch_size"] = list(patch)
    plans_file.write_text(json.dumps(plans, indent=2))


def train_model(args: argparse.Namespace) -> float:
    """Plan, preprocess and train fold 0; returns the training minutes.

    Done when the final checkpoint is there for ``--epochs``; a model trained for fewer epochs is
    trained on to ``--epochs`` (nnU-Net's ``--c``), its minutes added up.
    """
    folder, record = model_folder(args), args.out / "train_time.json"
    done = json.loads(record.read_text()) if record.is_file() else {"minutes": 0.0, "epochs": 0}
    if (folder / "fold_0" / "checkpoint_final.pth").is_file() and done["epochs"] >= args.epochs:
        return done["minutes"]
    write_dataset(args)
    env, log = _nnunet_env(args), args.out / "nnunet_train.log"
    if not (args.out / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        print("nnUNetv2_plan_and_preprocess ...", flush=True)
        _run([_bin(args, "nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", CONFIGURATION,
              "-np", "2", "--verify_dataset_integrity"], env, log)
    _shrink_plans(args.out / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json", args.width, args.patch)
    more = ["--c"] if done["epochs"] else []
    print(f"nnUNetv2_train: epochs {done['epochs']} to {args.epochs}, {args.iterations} steps each, on the CPU (log: {log}) ...", flush=True)
    wall, _ = _run([_bin(args, "nnUNetv2_train"), DATASET_ID, CONFIGURATION, "0", "-tr", TRAINER, "-device", "cpu", *more], env, log)
    minutes = round(done["minutes"] + wall / 60, 2)
    record.write_text(json.dumps({"minutes": minutes, "epochs": args.epochs, "iterations": args.iterations}))
    return minutes


def write_inputs(args: argparse.Namespace) -> dict[str, Path]:
    """One folder per input CT, holding ``<name>_0000.nii.gz``: the benchmark CT, and the real CT where present."""
    from bench_inference import make_ct
    from flareseg.io import write_volume

    from flareseg.io import Volume

    inputs = {}
    held_out = args.out / "inputs" / "phantom5mm" / "phantom5mm_0000.nii.gz"
    if not held_out.is_file():  # a phantom the model did not train on, at its spacing: neither program resamples it
        held_out.parent.mkdir(parents=True, exist_ok=True)
        image, _ = phantom_at_train_spacing(args.seed + args.cases + 1000)
        write_volume(Volume(image.array.astype("int16"), image.spacing, image.origin, image.direction), held_out)
    inputs["phantom5mm"] = held_out
    bench = args.out / "inputs" / "bench512" / "bench512_0000.nii.gz"
    if not bench.is_file():
        bench.parent.mkdir(parents=True, exist_ok=True)
        write_volume(make_ct((512, 512, 300), (0.8, 0.8, 1.0), seed=args.seed)[0], bench)
    inputs["bench512"] = bench
    if REAL_CT.is_file():
        real = args.out / "inputs" / "real" / "real_0000.nii.gz"
        real.parent.mkdir(parents=True, exist_ok=True)
        if not real.is_file():
            real.write_bytes(REAL_CT.read_bytes())
        inputs["real"] = real
    else:
        print(f"(no real CT at {REAL_CT}: the benchmark CT only)", file=sys.stderr)
    return {name: path for name, path in inputs.items() if name in args.inputs}


def command(args: argparse.Namespace, which: str, image: Path, out_dir: Path) -> list[str]:
    """The command line of `which` (one of COMMANDS) for one input; its label map lands in `out_dir`."""
    if which.startswith("nnunet"):
        cmd = [_bin(args, "nnUNetv2_predict"), "-i", str(image.parent), "-o", str(out_dir), "-d", DATASET_ID,
               "-c", CONFIGURATION, "-f", "0", "-tr", TRAINER, "-device", "cpu"]
        return cmd + (["--disable_tta"] if which == "nnunet_notta" else [])
    name = image.name.replace("_0000.nii.gz", ".nii.gz")
    mode, _, raw = which.partition("_")
    return [str(Path(sys.executable).parent / "flareseg"), "predict", "-q", "-i", str(image), "-o", str(out_dir / name),
            "--organ-model", str(model_folder(args)), "--mode", mode, "--overwrite"] + (["--no-postprocess"] if raw else [])


def measure(args: argparse.Namespace) -> dict:
    """Every command on every input, interleaved, `args.repeats` times; then the agreement."""
    from flareseg.evaluation.metrics import dice
    from flareseg.io import read_label
    from flareseg.labels import ORGAN_IDS, name_of

    inputs = write_inputs(args)
    runs: dict[str, dict[str, list]] = {name: {which: [] for which in COMMANDS} for name in inputs}
    for repeat in range(args.repeats):
        for name, image in inputs.items():
            for which in COMMANDS:
                out_dir = args.out / "outputs" / f"{name}_{which}"
                out_dir.mkdir(parents=True, exist_ok=True)
                env = _nnunet_env(args) if which.startswith("nnunet") else {**os.environ, "PYTHONPATH": str(FLARESEG_SRC)}
                wall, rss = _run(command(args, which, image, out_dir), env, args.out / "measure.log")
                runs[name][which].append({"seconds": round(wall, 2), "peak_rss_gib": round(rss, 3)})
                print(f"repeat {repeat + 1}/{args.repeats} {name:9s} {which:13s} {wall:7.1f} s  {rss:5.2f} GiB", flush=True)
    agreement: dict[str, dict[str, dict[str, float]]] = {}
    for name, image in inputs.items():
        label_file = image.name.replace("_0000.nii.gz", ".nii.gz")
        maps = {which: read_label(args.out / "outputs" / f"{name}_{which}" / label_file).array for which in COMMANDS}
        agreement[name] = {}
        for ours, theirs in PAIRS:
            agreement[name][f"{ours}_vs_{theirs}"] = {
                name_of(organ): round(dice(maps[theirs] == organ, maps[ours] == organ), 4)
                for organ in ORGAN_IDS if int((maps[theirs] == organ).sum()) >= MIN_VOXELS
            }
    return {"runs": runs, "agreement": agreement, "inputs": {k: str(v) for k, v in inputs.items()}}


def report(args: argparse.Namespace, result: dict, train_minutes: float) -> str:
    from flareseg.measure.environment import cpu_info

    cmd = "python scripts/bench_peer_nnunet.py " + shlex.join(sys.argv[1:])
    lines = [
        "# nnU-Net v2's predictor against flareseg on the same nnU-Net weights", "",
        f"Command: `{cmd}`  ", f"Machine: {cpu_info().summary()}  ",
        f"Model: nnU-Net v2 3d_fullres (its planned features x {args.width}, patch {'x'.join(map(str, args.patch))}), {TRAINER} ({args.epochs} epochs x {args.iterations} steps, {train_minutes} min on this CPU), "
        f"{args.cases} phantoms at 5 mm; medians of {args.repeats} runs, each command its own process, interleaved.", "",
        "| input | command | wall s (median) | peak RSS GiB | nnU-Net default / this | nnU-Net no-TTA / this |", "|---|---|---|---|---|---|",
    ]
    medians = {}
    for name, by_command in result["runs"].items():
        medians[name] = {w: statistics.median(r["seconds"] for r in runs) for w, runs in by_command.items()}
        for which, runs in by_command.items():
            m = medians[name][which]
            rss = max(r["peak_rss_gib"] for r in runs)
            lines.append(f"| {name} | {TITLES[which]} | {m:.1f} | {rss:.2f} | {medians[name]['nnunet'] / m:.2f} | {medians[name]['nnunet_notta'] / m:.2f} |")
    result["medians_s"] = medians
    for name, pairs in result["agreement"].items():
        organs = sorted({o for per in pairs.values() for o in per})
        lines += ["", f"Agreement on `{name}` (Dice per organ, organs of >= {MIN_VOXELS} voxels in the nnU-Net output):", "",
                  "| organ | " + " | ".join(p.replace("_vs_", " vs ") for p in pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
        for organ in organs:
            lines.append(f"| {organ} | " + " | ".join(f"{per.get(organ, float('nan')):.3f}" for per in pairs.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--venv", type=Path, help="the nnunetv2 virtual environment (default: OUT/nnunet_venv)")
    parser.add_argument("--stage", choices=("train", "measure", "all"), default="all")
    parser.add_argument("--cases", type=int, default=16, help="training phantoms (default 16)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=float, default=0.5, help="scale of nnU-Net's planned features per stage (default 0.5)")
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 48, 48), help="nnU-Net's patch instead of the planned one (default 32 48 48; each axis a multiple of 16)")
    parser.add_argument("--iterations", type=int, default=15, help="steps per epoch (default 15)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", default="phantom5mm,bench512,real",
                        help="comma-separated inputs to measure: phantom5mm (held out, at the model's spacing: the adapter alone), bench512, real")
    args = parser.parse_args(argv)
    args.inputs = args.inputs.split(",")
    args.out = args.out.resolve()
    args.venv = (args.venv or args.out / "nnunet_venv").resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    setup(args)
    train_minutes = train_model(args)
    if args.stage == "train":
        return 0
    result = measure(args)
    text = report(args, result, train_minutes)
    (args.out / "peer.md").write_text(text)
    (args.out / "peer.json").write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
