"""The measurement of one case: one row of the paper's table 5, with its curve and per-stage seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from flareseg.measure.sampler import MemoryCurve

ISOLATIONS = ("process", "in-process")
"""How a case ran: 'process', in a process of its own started for the case (what FLARE's fresh
container per case and a standalone ``flareseg predict`` measure); 'in-process', inside the measuring
process, whose memory before the case is then part of the curve."""


@dataclass(frozen=True)
class CaseMeasurement:
    """Time and memory of one case (one row of the paper's table 5).

    Attributes:
        case: case name.
        image_shape: voxels along the image's index axes (I, J, K), from its header; None if unknown.
        spacing_mm: voxel size along I, J, K in mm, from its header; None if unknown.
        wall_time_s: seconds from the start of the case to its written output: for a case in its own
            process, from starting that process (interpreter start and imports included) to its report
            that the output is written; in-process, the call of the prediction.
        rss_peak_mib: peak resident memory of the process tree over the samples (MiB).
        rss_area_mib_s: area under the RSS-time curve (MiB x s).
        gpu_peak_mib: peak device-wide used GPU memory (NVML), None without a GPU.
        gpu_area_mib_s: area under the GPU memory-time curve, None without a GPU.
        gpu_baseline_mib: GPU memory in use at the start (other processes, a CUDA context kept from an
            earlier case), None without a GPU. FLARE counts it; subtract it to see this case's own share.
        torch_peak_mib: ``torch.cuda.max_memory_allocated`` during the case (tensors only, not the
            allocator's cache or the CUDA context), None when the code did not use CUDA through torch.
        n_samples: samples on the curve.
        error: why the case failed, None on success; a failed case's figures cover the time until it failed.
        isolation: one of :data:`ISOLATIONS`.
        startup_s: 'process' only: seconds from starting the case's process to the call of the
            prediction (interpreter start, imports, loading the callable); None in-process.
        stages_s: seconds per stage as the prediction reported them (``PredictionReport.timings``:
            load, read, preprocess, roi, organ, tumor, postprocess, restore, write, total); empty when
            the prediction returned no timings.
        rss_hwm_mib: 'process' only: the kernel's peak resident memory of the case's process (VmHWM,
            Linux): not sampled, so it also sees spikes shorter than the interval, but it covers that
            process alone, not its descendants. None in-process or when unknown.
        curve: the sampled curve; its times are seconds since the start of the case.
    """

    case: str
    image_shape: tuple[int, ...] | None
    spacing_mm: tuple[float, ...] | None
    wall_time_s: float
    rss_peak_mib: float
    rss_area_mib_s: float
    gpu_peak_mib: float | None = None
    gpu_area_mib_s: float | None = None
    gpu_baseline_mib: float | None = None
    torch_peak_mib: float | None = None
    n_samples: int = 0
    error: str | None = None
    isolation: str = "in-process"
    startup_s: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    rss_hwm_mib: float | None = None
    curve: MemoryCurve | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_curve(
        cls,
        curve: MemoryCurve,
        *,
        case: str,
        wall_time_s: float,
        image_shape: Sequence[int] | None = None,
        spacing_mm: Sequence[float] | None = None,
        torch_peak_mib: float | None = None,
        error: str | None = None,
        isolation: str = "in-process",
        startup_s: float | None = None,
        stages_s: Mapping[str, float] | None = None,
        rss_hwm_mib: float | None = None,
    ) -> "CaseMeasurement":
        """Summarise a sampled curve: peaks and trapezoid areas; the other fields are stored as given."""
        has_gpu = curve.gpu_mib is not None and len(curve.gpu_mib) > 0
        return cls(
            case=case,
            image_shape=None if image_shape is None else tuple(int(s) for s in image_shape),
            spacing_mm=None if spacing_mm is None else tuple(float(s) for s in spacing_mm),
            wall_time_s=float(wall_time_s),
            rss_peak_mib=curve.rss_peak_mib,
            rss_area_mib_s=curve.rss_area_mib_s,
            gpu_peak_mib=curve.gpu_peak_mib if has_gpu else None,
            gpu_area_mib_s=curve.gpu_area_mib_s if has_gpu else None,
            gpu_baseline_mib=float(curve.gpu_mib[0]) if has_gpu else None,  # type: ignore[index]
            torch_peak_mib=torch_peak_mib,
            n_samples=len(curve.times_s),
            error=error,
            isolation=isolation,
            startup_s=None if startup_s is None else float(startup_s),
            stages_s={str(k): float(v) for k, v in (stages_s or {}).items()},
            rss_hwm_mib=None if rss_hwm_mib is None else float(rss_hwm_mib),
            curve=curve,
        )

    def to_dict(self, *, with_curve: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; figures rounded to 0.01 (MiB, s, MiB x s), the curve to 1 ms and 0.1 MiB."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "curve":
                continue
            if isinstance(value, float):
                value = round(value, 2)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: round(v, 3) for k, v in value.items()}
            out[key] = value
        if with_curve and self.curve is not None:
            c = self.curve
            out["curve"] = {
                "t_s": [round(float(t), 3) for t in c.times_s],
                "rss_mib": [round(float(v), 1) for v in c.rss_mib],
                "gpu_mib": None if c.gpu_mib is None else [round(float(v), 1) for v in c.gpu_mib],
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CaseMeasurement":
        """Inverse of :meth:`to_dict` (figures as rounded there); fields a file lacks take their defaults."""
        data = dict(data)
        raw_curve = data.pop("curve", None)
        curve = None
        if raw_curve is not None:
            gpu = raw_curve.get("gpu_mib")
            curve = MemoryCurve(
                np.asarray(raw_curve["t_s"], dtype=float),
                np.asarray(raw_curve["rss_mib"], dtype=float),
                None if gpu is None else np.asarray(gpu, dtype=float),
            )
        for key in ("image_shape", "spacing_mm"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        known = {f for f in cls.__dataclass_fields__ if f != "curve"}
        return cls(**{k: v for k, v in data.items() if k in known}, curve=curve)
