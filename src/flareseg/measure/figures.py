"""The memory-time curves of a benchmark as a PNG (matplotlib is imported when a figure is drawn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from flareseg.io import save_figure
from flareseg.measure.measurement import CaseMeasurement

HEADROOM = 1.15
"""The y axis reaches this multiple of the highest sample, so no curve runs along the frame."""
LEGEND_INSIDE_MAX = 6
"""Up to this many cases the legend sits inside the axes; beyond, to the right of them."""


def memory_curve_figure(measurements: Sequence[CaseMeasurement], path: str | os.PathLike, *, cpu: str | None = None) -> Path:
    """Plot each case's memory-time curve to a PNG: one line per case, its peak marked, and a legend.

    Panels: device-wide GPU memory (when a GPU was sampled) above the RSS of the case's process tree.
    Axes: seconds since the start of the case (for a case in its own process, since that process was
    started) and MiB, from 0 to :data:`HEADROOM` times the highest sample. The title says whether the
    cases ran in their own processes or in the measuring one (whose memory the curves then include),
    and `cpu` (e.g. :meth:`CpuInfo.summary`) when given.

    Returns:
        `path` (written atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = [m for m in measurements if m.curve is not None and len(m.curve.times_s)]
    has_gpu = any(m.curve.gpu_mib is not None for m in cases)  # type: ignore[union-attr]
    isolations = {m.isolation for m in cases}
    own = isolations == {"process"}
    tree = "the case's process tree" if own else "the measuring process tree" if isolations == {"in-process"} else "the process tree"
    panels = [("rss_mib", f"RSS of {tree} (MiB)")]
    if has_gpu:
        panels.insert(0, ("gpu_mib", "GPU memory used, device-wide (MiB)"))
    outside = len(cases) > LEGEND_INSIDE_MAX
    fig = Figure(figsize=(11 if outside else 9, 3.8 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    t_max = max((float(m.curve.times_s[-1]) for m in cases), default=1.0)  # type: ignore[union-attr]
    for ax, (attr, ylabel) in zip(axes, panels):
        top = 0.0
        for m in cases:
            values = getattr(m.curve, attr)
            if values is None or not len(values):
                continue
            times = m.curve.times_s  # type: ignore[union-attr]
            peak = int(values.argmax())
            label = f"{m.case}{'' if m.ok else ' (failed)'}: peak {values[peak]:,.0f} MiB"
            (line,) = ax.plot(times, values, lw=1.3, label=label)
            ax.plot(times[peak], values[peak], "o", ms=4, color=line.get_color())
            top = max(top, float(values.max()))
        ax.set_xlabel("time since the case's process was started (s)" if own else "time since the start of the case (s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, max(top, 1.0) * HEADROOM)
        ax.set_xlim(0, max(t_max, 1e-3) * 1.02)
        if not cases:
            ax.text(0.5, 0.5, "no cases measured", ha="center", va="center", transform=ax.transAxes)
        elif outside:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                      ncol=1 if len(cases) <= 20 else 2)
        else:
            ax.legend(fontsize=8, loc="best")
    how = "each case in its own process" if own else "cases run inside the measuring process" if isolations == {"in-process"} else ""
    title = "Memory-time curves per case" + (f" ({how})" if how else "")
    fig.suptitle(title + (f"\n{cpu}" if cpu else ""), fontsize=11)
    return save_figure(fig, path)
