"""The efficiency table (the paper's table 5, with per-stage seconds), its medians and its files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from flareseg.io import atomic_write_text
from flareseg.measure.environment import environment
from flareseg.measure.figures import memory_curve_figure
from flareseg.measure.measurement import CaseMeasurement
from flareseg.measure.sampler import SAMPLE_INTERVAL_S

FORMAT_VERSION = 2
"""Version of the efficiency.json layout (2: isolation, start-up, stage seconds, kernel peak RSS)."""

STAGE_COLUMNS = (
    ("load", "Load"), ("read", "Read"), ("preprocess", "Preprocess"), ("roi", "ROI"), ("organ", "Organ"),
    ("tumor", "Tumour"), ("postprocess", "Post-process"), ("restore", "Restore"), ("write", "Write"),
)
"""(key in ``CaseMeasurement.stages_s``, column title): the stages of ``PredictionReport.timings``
(:mod:`flareseg.inference.pipeline` describes each), in the order a case runs them."""

FIGURES = ("wall_time_s", "startup_s", "rss_peak_mib", "rss_area_mib_s", "rss_hwm_mib", "gpu_peak_mib", "gpu_area_mib_s", "torch_peak_mib")
"""The per-case figures :func:`medians` summarises (besides the stages)."""


def medians(measurements: Sequence[CaseMeasurement]) -> dict[str, float | None]:
    """Median of each figure over the successful cases (None where no case has it).

    Keys: those of :data:`FIGURES`, and ``<stage>_s`` (e.g. 'organ_s', 'total_s') for every stage
    some successful case reported.
    """
    ok = [m for m in measurements if m.ok]
    out: dict[str, float | None] = {}
    for key in FIGURES:
        values = [getattr(m, key) for m in ok if getattr(m, key) is not None]
        out[key] = float(statistics.median(values)) if values else None
    stages = dict.fromkeys(stage for m in ok for stage in m.stages_s)
    for stage in stages:
        out[f"{stage}_s"] = float(statistics.median(m.stages_s[stage] for m in ok if stage in m.stages_s))
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _size_text(m: CaseMeasurement) -> str:
    return "?" if m.image_shape is None else "(" + ", ".join(str(s) for s in m.image_shape) + ")"


def _spacing_text(m: CaseMeasurement) -> str:
    return "?" if m.spacing_mm is None else "(" + ", ".join(f"{s:.3g}" for s in m.spacing_mm) + ")"


def _case_figures(m: CaseMeasurement) -> dict[str, float | None]:
    values: dict[str, float | None] = {k: getattr(m, k) for k in FIGURES}
    values.update({f"{stage}_s": seconds for stage, seconds in m.stages_s.items()})
    return values


def efficiency_table(measurements: Sequence[CaseMeasurement]) -> str:
    """The per-case table of the paper's table 5, as Markdown, with a median row and a note on how it ran.

    Columns: case, image size (voxels, from the header), spacing (mm), running time (s); start-up (s)
    when a case ran in its own process; the seconds of each stage in :data:`STAGE_COLUMNS` when the
    prediction reported them ('-' for a stage a case did not run); max GPU memory (MiB) and the area
    under the GPU memory-time curve (MiB x s) when a GPU was sampled; torch's peak allocation (MiB)
    when CUDA was used through torch; max RSS (MiB) and the area under the RSS-time curve (MiB x s).
    Below the table: the failed cases' errors and a sentence saying whether the cases ran in their own
    processes or in the measuring one (and then what that process held at the start).
    """
    has = {
        "startup": any(m.startup_s is not None for m in measurements),
        "stages": any(m.stages_s for m in measurements),
        "gpu": any(m.gpu_peak_mib is not None for m in measurements),
        "torch": any(m.torch_peak_mib is not None for m in measurements),
    }
    columns: list[tuple[str, str, int]] = [("wall_time_s", "Running time (s)", 2)]  # (figure key, title, decimals)
    if has["startup"]:
        columns.append(("startup_s", "Start-up (s)", 2))
    if has["stages"]:
        columns += [(f"{key}_s", f"{title} (s)", 2) for key, title in STAGE_COLUMNS]
    if has["gpu"]:
        columns += [("gpu_peak_mib", "Max GPU memory (MiB)", 0), ("gpu_area_mib_s", "Area under GPU memory-time curve (MiB·s)", 0)]
    if has["torch"]:
        columns.append(("torch_peak_mib", "Torch peak allocated (MiB)", 0))
    columns += [("rss_peak_mib", "Max RSS (MiB)", 0), ("rss_area_mib_s", "Area under RSS-time curve (MiB·s)", 0)]

    head = ["Case", "Image size", "Spacing (mm)"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]

    def row(first: list[str], values: dict[str, float | None]) -> str:
        return "| " + " | ".join(first + [_fmt(values.get(key), digits) for key, _, digits in columns]) + " |"

    for m in measurements:
        name = m.case if m.ok else f"{m.case} (failed)"
        lines.append(row([name, _size_text(m), _spacing_text(m)], _case_figures(m)))
    n_ok = sum(m.ok for m in measurements)
    lines.append(row([f"**median** ({n_ok} case{'' if n_ok == 1 else 's'})", "", ""], medians(measurements)))
    failed = [m for m in measurements if not m.ok]
    if failed:
        lines.append("")
        lines.extend(f"- {m.case} failed: {m.error}" for m in failed)
    lines += ["", isolation_note(measurements)]
    return "\n".join(lines) + "\n"


def isolation_note(measurements: Sequence[CaseMeasurement]) -> str:
    """One paragraph saying how the cases ran, for under the table."""
    own = [m for m in measurements if m.isolation == "process"]
    here = [m for m in measurements if m.isolation == "in-process"]
    parts = []
    if own:
        parts.append(
            f"{_count(own, measurements)}ran in a process of its own (`python -m flareseg.measure.child`), as a standalone "
            "`flareseg predict` runs: running time and memory from starting that process; *Start-up* is the interpreter "
            "start and imports before the prediction is called, the stage columns are the prediction's own timings "
            "(*Load*: the model folders), and start-up plus the stages make up the running time."
        )
    if here:
        start = min((m.curve.rss_mib[0] for m in here if m.curve is not None and len(m.curve.rss_mib)), default=None)
        held = "" if start is None else f" ({start:,.0f} MiB at the start of a case, at least)"
        parts.append(
            f"{_count(here, measurements)}ran inside the measuring process: the RSS figures include what that process "
            f"already held{held}, and imports were paid by the first case only."
        )
    return "*How the cases ran:* " + " ".join(parts) if parts else ""


def _count(group: Sequence[CaseMeasurement], everything: Sequence[CaseMeasurement]) -> str:
    if len(group) == len(everything):
        return "Each case " if len(group) > 1 else "The case "
    return f"{len(group)} of the {len(everything)} cases ({', '.join(m.case for m in group)}) each "


def write_efficiency(
    measurements: Sequence[CaseMeasurement],
    out_dir: str | os.PathLike,
    *,
    device: str | None = None,
    interval_s: float = SAMPLE_INTERVAL_S,
    figure: bool = True,
) -> dict[str, Path]:
    """Write ``efficiency.json``, ``efficiency.md`` and (with `figure`) ``memory_curves.png`` to `out_dir`.

    Returns:
        The written paths by kind: 'json', 'md' and 'png'.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "sample_interval_s": interval_s,
        "units": {"time": "s", "memory": "MiB (2^20 bytes)", "area": "MiB*s (trapezoid rule)"},
        "environment": env,
        "median": {k: (None if v is None else round(v, 3)) for k, v in medians(measurements).items()},
        "cases": [m.to_dict() for m in measurements],
    }
    paths = {"json": out_dir / "efficiency.json", "md": out_dir / "efficiency.md"}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1) + "\n")
    versions = f"flareseg {env['flareseg']}" + (f", torch {env['torch']}" if env.get("torch") else "")
    md = [
        "# Efficiency",
        "",
        f"Device: {env['device']}. CPU: {env['cpu_summary']}; {env['memory_gib']} GiB RAM; {versions}.",
        "",
        f"Wall time from the start of the case to its written output, model loading included. Memory sampled "
        f"every {interval_s:g} s; areas by the trapezoid rule. GPU memory is the device-wide use read through "
        "NVML (as FLARE reads it); RSS is the resident memory of the case's process tree. efficiency.json also "
        "holds the kernel's own peak RSS of each case's process (`rss_hwm_mib`, not sampled).",
        "",
        efficiency_table(measurements),
    ]
    if figure:
        paths["png"] = memory_curve_figure(measurements, out_dir / "memory_curves.png", cpu=env["cpu_summary"])
        md += ["![Memory-time curves](memory_curves.png)", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    return paths
