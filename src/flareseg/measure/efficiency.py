"""Time and memory of inference, measured as the FLARE challenge does (DESIGN section 8).

Per case: the wall time from the start of the call to the written output (model loading included:
the callable that is measured loads the models itself), the memory-time curve sampled every 0.1 s,
its peak and the area under it (MiB x s, trapezoid rule over the sample times). On a GPU machine the
curve is the device-wide used memory read through NVML, as FLARE's ``nvidia-smi`` sampling reads it,
plus PyTorch's own ``torch.cuda.max_memory_allocated``; on every machine it is also the resident
memory (RSS) of the process tree: this process and all its descendants, so a prediction run in a
subprocess is measured too.

Neither torch nor NVML is imported at module import: NVML (package ``nvidia-ml-py``) is imported when
a sampler starts and skipped if absent or without a driver; torch is never imported here, only read
from ``sys.modules`` when the measured code has imported it and initialised CUDA.

Units: MiB = 2**20 bytes, seconds, MiB x s.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psutil

from flareseg.io import case_name
from flareseg.errors import InputError
from flareseg.io import atomic_write_text, save_figure

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.1
"""FLARE's sampling interval of the memory-time curve."""
MIB = float(2**20)
FORMAT_VERSION = 1
"""Version of the efficiency.json layout."""


# --------------------------------------------------------------------------------------------------
# The curve


@dataclass(frozen=True)
class MemoryCurve:
    """A sampled memory-time curve.

    Attributes:
        times_s: (n,) seconds since the start of the measurement, increasing; the first sample is taken
            at the start and the last at the end.
        rss_mib: (n,) resident memory of the process tree, MiB.
        gpu_mib: (n,) device-wide used GPU memory (NVML), MiB; None when no GPU was sampled.
    """

    times_s: np.ndarray
    rss_mib: np.ndarray
    gpu_mib: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.times_s)
        if len(self.rss_mib) != n or (self.gpu_mib is not None and len(self.gpu_mib) != n):
            raise ValueError(
                f"curve arrays differ in length: times {n}, rss {len(self.rss_mib)}, "
                f"gpu {None if self.gpu_mib is None else len(self.gpu_mib)}"
            )

    @property
    def rss_peak_mib(self) -> float:
        return _peak(self.rss_mib)

    @property
    def rss_area_mib_s(self) -> float:
        return curve_area(self.times_s, self.rss_mib)

    @property
    def gpu_peak_mib(self) -> float | None:
        return None if self.gpu_mib is None else _peak(self.gpu_mib)

    @property
    def gpu_area_mib_s(self) -> float | None:
        return None if self.gpu_mib is None else curve_area(self.times_s, self.gpu_mib)


def curve_area(times_s: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """Area under a sampled curve by the trapezoid rule, in (value unit) x s.

    Uses the actual sample times, so a late sample (a busy interpreter) does not bias the area.
    Fewer than two samples give 0.

    Raises:
        ValueError: the two sequences differ in length.
    """
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.shape != v.shape:
        raise ValueError(f"times_s has {t.size} samples but values has {v.size}")
    if t.size < 2:
        return 0.0
    return float(np.sum((v[1:] + v[:-1]) * np.diff(t)) / 2.0)


def _peak(values: np.ndarray) -> float:
    return float(np.max(values)) if len(values) else 0.0


# --------------------------------------------------------------------------------------------------
# Probes


def _descendant_pids(pid: int) -> list[int]:
    """Pids of all descendants of `pid`, read from /proc/<pid>/task/<tid>/children where the kernel
    offers it (tens of microseconds), else through psutil (which scans every process of the machine)."""
    root = Path(f"/proc/{pid}/task")
    if not root.is_dir() or not (root / str(pid) / "children").exists():
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


class _TreeRSS:
    """Resident memory of a process and all its descendants, in bytes.

    Shared pages (e.g. copy-on-write after fork) count once per process, as ``ps`` and FLARE's
    per-container totals would count them: an upper bound of the physical memory in use.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._procs: dict[int, psutil.Process] = {}

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return None
            self._procs[pid] = proc
        return proc

    def __call__(self) -> int:
        total = 0
        pids = [self.pid, *_descendant_pids(self.pid)]
        for pid in pids:
            proc = self._proc(pid)
            if proc is None:
                continue
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        if len(self._procs) > 4 * len(pids) + 16:  # forget exited children
            live = set(pids)
            self._procs = {p: v for p, v in self._procs.items() if p in live}
        return total


class _NvmlProbe:
    """Device-wide used memory of one GPU through NVML, in bytes."""

    def __init__(self, handle: Any, nvml: Any, name: str) -> None:
        self._handle = handle
        self._nvml = nvml
        self.name = name

    @classmethod
    def open(cls, index: int | str | None = None) -> "_NvmlProbe | None":
        """The probe of GPU `index` (an NVML index or a UUID; None: the first device CUDA sees),
        or None when NVML, its driver or the device is missing."""
        try:
            import pynvml  # package nvidia-ml-py
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: no library, no driver
            log.debug("NVML unavailable: %s", exc)
            return None
        if index is None:
            index = _first_visible_gpu()
        try:
            if isinstance(index, str) and not index.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByUUID(index)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(index))
            name = pynvml.nvmlDeviceGetName(handle)
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            log.debug("NVML device %s unavailable: %s", index, exc)
            return None
        if isinstance(name, bytes):
            name = name.decode()
        return cls(handle, pynvml, str(name))

    def __call__(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)


def _first_visible_gpu() -> int | str:
    """The NVML identity of CUDA device 0: the first entry of CUDA_VISIBLE_DEVICES, else index 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if not visible:
        return 0
    return int(visible) if visible.isdigit() else visible


def _torch_cuda() -> Any | None:
    """`torch.cuda` if the running code has imported torch and initialised CUDA; never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        return cuda if cuda.is_available() and cuda.is_initialized() else None
    except Exception:  # a broken or partial torch install must not break a measurement
        return None


# --------------------------------------------------------------------------------------------------
# The sampler


class MemorySampler:
    """Sample memory every `interval_s` seconds in a background thread while a block runs.

    Use as a context manager; after the block, :attr:`curve` holds the samples::

        with MemorySampler() as sampler:
            predict(...)
        print(sampler.curve.rss_peak_mib, sampler.curve.gpu_area_mib_s)

    One sample is taken on entry and one on exit, so the curve spans the whole block; in between the
    thread wakes on a fixed schedule (start + n x interval) so that it does not drift, and skips ticks
    it missed rather than bunching them. A sampler is single-use. A sample costs tens of microseconds
    (see docs/efficiency.md).

    Args:
        interval_s: sampling interval in seconds (FLARE: 0.1).
        pid: root of the process tree whose RSS is summed; default this process.
        gpu: True: sample GPU memory through NVML (silently skipped if unavailable); False: never;
            None (default): when NVML finds a device.
        gpu_index: NVML device index or UUID; default the first device in CUDA_VISIBLE_DEVICES, else 0.

    Raises:
        ValueError: `interval_s` is not a positive finite number.
    """

    def __init__(
        self,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        pid: int | None = None,
        gpu: bool | None = None,
        gpu_index: int | str | None = None,
    ) -> None:
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._rss = _TreeRSS(os.getpid() if pid is None else pid)
        self._gpu = None if gpu is False else _NvmlProbe.open(gpu_index)
        self._times: list[float] = []
        self._rss_bytes: list[int] = []
        self._gpu_bytes: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def gpu_name(self) -> str | None:
        """Name of the sampled GPU, None when no GPU is sampled."""
        return None if self._gpu is None else self._gpu.name

    def _sample(self, *, last: bool = False) -> None:
        t = time.perf_counter() - self._t0
        rss = self._rss()
        gpu = self._gpu() if self._gpu is not None else 0
        with self._lock:
            if self._closed:  # the thread woke after the block ended: its sample is past the end
                return
            self._times.append(t)
            self._rss_bytes.append(rss)
            self._gpu_bytes.append(gpu)
            self._closed = last

    def _run(self) -> None:
        tick = 1
        while True:
            delay = self._t0 + tick * self.interval_s - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            try:
                self._sample()
            except Exception:  # a vanished process or a GPU error must not kill the measured work
                log.debug("memory sample failed", exc_info=True)
            # Skip ticks already past (the interpreter was busy) instead of sampling in a burst.
            tick = max(tick + 1, math.floor((time.perf_counter() - self._t0) / self.interval_s) + 1)

    def __enter__(self) -> "MemorySampler":
        if self._thread is not None:
            raise RuntimeError("a MemorySampler is single-use; create a new one")
        self._t0 = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="flareseg-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The last sample closes the curve; the thread is not joined (waiting for it to be scheduled
        # costs up to a scheduler tick on a busy machine): it sees the stop flag and ends by itself.
        self._stop.set()
        self._sample(last=True)

    @property
    def curve(self) -> MemoryCurve:
        """The samples so far (complete after the block)."""
        with self._lock:
            times = np.array(self._times, dtype=float)
            rss = np.array(self._rss_bytes, dtype=float) / MIB
            gpu = np.array(self._gpu_bytes, dtype=float) / MIB if self._gpu is not None else None
        return MemoryCurve(times, rss, gpu)


# --------------------------------------------------------------------------------------------------
# One case


@dataclass(frozen=True)
class CaseMeasurement:
    """Time and memory of one case (one row of the paper's table 5).

    Attributes:
        case: case name.
        image_shape: voxels along the image's index axes (I, J, K), None if unknown.
        spacing_mm: voxel size along I, J, K in mm, None if unknown.
        wall_time_s: seconds from the start of the call to its return (to the written output).
        rss_peak_mib: peak resident memory of the process tree over the samples.
        rss_area_mib_s: area under the RSS-time curve.
        gpu_peak_mib: peak device-wide used GPU memory (NVML), None without a GPU.
        gpu_area_mib_s: area under the GPU memory-time curve, None without a GPU.
        gpu_baseline_mib: GPU memory in use at the start (other processes, a CUDA context kept from an
            earlier case), None without a GPU. FLARE counts it; subtract it to see this case's own share.
        torch_peak_mib: ``torch.cuda.max_memory_allocated`` during the case (tensors only, not the
            allocator's cache or the CUDA context), None when the code did not use CUDA through torch.
        n_samples: samples on the curve.
        error: why the case failed, None on success; a failed case's figures cover the time until it failed.
        curve: the sampled curve.
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
    curve: MemoryCurve | None = field(default=None, repr=False, compare=False)

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
    ) -> "CaseMeasurement":
        """Summarise a sampled curve: peaks and trapezoid areas."""
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
    def from_dict(cls, data: dict[str, Any]) -> "CaseMeasurement":
        """Inverse of :meth:`to_dict` (figures as rounded there)."""
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


def measure_case(
    fn: Callable[..., Any],
    *args: Any,
    case: str = "",
    image_shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    interval_s: float = SAMPLE_INTERVAL_S,
    gpu: bool | None = None,
    gpu_index: int | str | None = None,
) -> CaseMeasurement:
    """Run ``fn(*args)`` under a :class:`MemorySampler` and return its time and memory.

    The measurement covers exactly the call: pass a callable that loads the models, predicts and
    writes the output to have FLARE's "start to written output, model loading included". Use a
    closure or :func:`functools.partial` for keyword arguments or to keep the return value.

    Args:
        fn: the work to measure.
        *args: its positional arguments.
        case: case name for the table.
        image_shape, spacing_mm: image size for the table (not read here).
        interval_s, gpu, gpu_index: see :class:`MemorySampler`.

    Returns:
        The measurement; exceptions of `fn` propagate (the sampler is stopped first).
    """
    return _measure(fn, args, catch=False, case=case, image_shape=image_shape, spacing_mm=spacing_mm,
                    interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)


def _measure(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    catch: bool,
    case: str,
    image_shape: Sequence[int] | None,
    spacing_mm: Sequence[float] | None,
    interval_s: float,
    gpu: bool | None,
    gpu_index: int | str | None,
) -> CaseMeasurement:
    """Measure ``fn(*args)``; with `catch`, an exception of `fn` is recorded as the case's error."""
    torch_cuda = _torch_cuda()
    if torch_cuda is not None:
        torch_cuda.reset_peak_memory_stats()
    error = None
    sampler = MemorySampler(interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)
    with sampler:
        start = time.perf_counter()
        try:
            fn(*args)
        except Exception as exc:
            if not catch:
                raise
            error = f"{type(exc).__name__}: {exc}"
            log.error("case %s failed: %s", case, error, exc_info=log.isEnabledFor(logging.DEBUG))
        wall = time.perf_counter() - start
    return CaseMeasurement.from_curve(
        sampler.curve, case=case, wall_time_s=wall, image_shape=image_shape, spacing_mm=spacing_mm,
        torch_peak_mib=_torch_peak_mib(), error=error,
    )


def _torch_peak_mib() -> float | None:
    torch_cuda = _torch_cuda()
    if torch_cuda is None:
        return None
    try:
        return float(torch_cuda.max_memory_allocated()) / MIB
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------
# A folder of cases


def image_size(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(shape, spacing in mm) of an image file (header only) or DICOM folder; None if unreadable."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        if path.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not ids:
                return None
            files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s) for s in ids), key=len)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
            return tuple(image.GetSize()), tuple(round(s, 4) for s in image.GetSpacing())
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSize()), tuple(round(s, 4) for s in reader.GetSpacing())
    except RuntimeError:
        return None


def benchmark_cases(
    case_paths: Sequence[str | os.PathLike],
    predict_one: Callable[[Path, Path], None],
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    interval_s: float = SAMPLE_INTERVAL_S,
    gpu: bool | None = None,
    gpu_index: int | str | None = None,
) -> list[CaseMeasurement]:
    """Measure ``predict_one(input, output)`` per case and write the efficiency table and curves.

    `predict_one` must do everything a user's run does for one case, model loading included (load the
    model folders inside it, or start a subprocess: the RSS of child processes is counted), and write
    the label map to `output` = ``out_dir/predictions/<case>.nii.gz``. The cases run one after another
    in this process; garbage is collected, and PyTorch's CUDA cache emptied, between cases. Imports
    and the CUDA context are paid by the first case only; the GPU baseline column shows what stays.

    A case that raises, or returns without writing its output, is recorded with its error and the
    others go on (KeyboardInterrupt stops the run).

    Writes to `out_dir`: ``efficiency.json`` (environment, per-case figures and curves, medians),
    ``efficiency.md`` (the table) after every case, and ``memory_curves.png`` at the end.

    Args:
        case_paths: images (files or DICOM folders), measured in this order.
        predict_one: ``(input path, output path) -> None``.
        out_dir: output folder (created).
        progress: show a progress bar on stderr.
        interval_s, gpu, gpu_index: see :class:`MemorySampler`.

    Returns:
        One measurement per case, in order.

    Raises:
        InputError: `case_paths` is empty or two cases share a name.
    """
    paths = [Path(p) for p in case_paths]
    if not paths:
        raise InputError("benchmark_cases: no cases given")
    names = [case_name(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"benchmark_cases: several inputs share the case name(s) {', '.join(dupes)}")
    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    nvml = _NvmlProbe.open(gpu_index) if gpu is not False else None
    device = nvml.name if nvml is not None else "cpu"

    from tqdm.auto import tqdm

    results: list[CaseMeasurement] = []
    bar = tqdm(list(zip(paths, names)), desc="benchmark", unit="case", disable=not progress)
    for path, name in bar:
        bar.set_postfix_str(name)
        size = image_size(path)
        shape, spacing = size if size is not None else (None, None)
        output = pred_dir / f"{name}.nii.gz"
        output.unlink(missing_ok=True)
        _settle()
        m = _measure(predict_one, (path, output), catch=True, case=name, image_shape=shape, spacing_mm=spacing,
                     interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)
        if m.ok and not output.exists():
            m = replace(m, error=f"predict_one returned without writing {output}")
            log.error("case %s: %s", name, m.error)
        results.append(m)
        log.info("%s: %.2f s, peak RSS %.0f MiB, peak GPU %s MiB", name, m.wall_time_s, m.rss_peak_mib,
                 "-" if m.gpu_peak_mib is None else f"{m.gpu_peak_mib:.0f}")
        write_efficiency(results, out_dir, device=device, interval_s=interval_s, figure=False)
    write_efficiency(results, out_dir, device=device, interval_s=interval_s, figure=True)
    return results


def _settle() -> None:
    """Free what an earlier case left, so that it is not counted against the next."""
    gc.collect()
    torch_cuda = _torch_cuda()
    if torch_cuda is not None:
        torch_cuda.synchronize()
        torch_cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Output


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and machine description for the efficiency report."""
    from flareseg import __version__

    env: dict[str, Any] = {
        "flareseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "numpy": np.__version__,
        "device": device or "cpu",
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = getattr(torch, "__version__", "?")
    return env


def medians(measurements: Sequence[CaseMeasurement]) -> dict[str, float | None]:
    """Median of each figure over the successful cases (None where no case has it)."""
    ok = [m for m in measurements if m.ok]
    out: dict[str, float | None] = {}
    for key in ("wall_time_s", "rss_peak_mib", "rss_area_mib_s", "gpu_peak_mib", "gpu_area_mib_s", "torch_peak_mib"):
        values = [getattr(m, key) for m in ok if getattr(m, key) is not None]
        out[key] = float(statistics.median(values)) if values else None
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _size_text(m: CaseMeasurement) -> str:
    return "?" if m.image_shape is None else "(" + ", ".join(str(s) for s in m.image_shape) + ")"


def _spacing_text(m: CaseMeasurement) -> str:
    return "?" if m.spacing_mm is None else "(" + ", ".join(f"{s:.3g}" for s in m.spacing_mm) + ")"


def efficiency_table(measurements: Sequence[CaseMeasurement]) -> str:
    """The per-case table of the paper's table 5, as Markdown, with a median row.

    Columns: case, image size (voxels), spacing (mm), running time (s), max GPU memory (MiB), area
    under the GPU memory-time curve (MiB x s), torch peak (MiB), max RSS (MiB), area under the RSS-time
    curve (MiB x s). The GPU columns are left out when no case was measured on a GPU.
    """
    has_gpu = any(m.gpu_peak_mib is not None for m in measurements)
    has_torch = any(m.torch_peak_mib is not None for m in measurements)
    head = ["Case", "Image size", "Spacing (mm)", "Running time (s)"]
    if has_gpu:
        head += ["Max GPU memory (MiB)", "Area under GPU memory-time curve (MiB·s)"]
    if has_torch:
        head += ["Torch peak allocated (MiB)"]
    head += ["Max RSS (MiB)", "Area under RSS-time curve (MiB·s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]

    def row(first: list[str], values: dict[str, float | None]) -> str:
        cells = first + [_fmt(values["wall_time_s"], 2)]
        if has_gpu:
            cells += [_fmt(values["gpu_peak_mib"], 0), _fmt(values["gpu_area_mib_s"], 0)]
        if has_torch:
            cells += [_fmt(values["torch_peak_mib"], 0)]
        cells += [_fmt(values["rss_peak_mib"], 0), _fmt(values["rss_area_mib_s"], 0)]
        return "| " + " | ".join(cells) + " |"

    for m in measurements:
        name = m.case if m.ok else f"{m.case} (failed)"
        lines.append(row([name, _size_text(m), _spacing_text(m)], {k: getattr(m, k) for k in _FIGURES}))
    n_ok = sum(m.ok for m in measurements)
    lines.append(row([f"**median** ({n_ok} cases)", "", ""], medians(measurements)))
    failed = [m for m in measurements if not m.ok]
    if failed:
        lines.append("")
        lines.extend(f"- {m.case} failed: {m.error}" for m in failed)
    return "\n".join(lines) + "\n"


_FIGURES = ("wall_time_s", "rss_peak_mib", "rss_area_mib_s", "gpu_peak_mib", "gpu_area_mib_s", "torch_peak_mib")


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
    doc = {
        "format_version": FORMAT_VERSION,
        "sample_interval_s": interval_s,
        "units": {"time": "s", "memory": "MiB (2^20 bytes)", "area": "MiB*s (trapezoid rule)"},
        "environment": env,
        "median": {k: (None if v is None else round(v, 2)) for k, v in medians(measurements).items()},
        "cases": [m.to_dict() for m in measurements],
    }
    paths = {"json": out_dir / "efficiency.json", "md": out_dir / "efficiency.md"}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1) + "\n")
    md = [
        "# Efficiency",
        "",
        f"Device: {env['device']}; {env['cpu_count']} CPU cores, {env['memory_gib']} GiB RAM; "
        f"flareseg {env['flareseg']}" + (f", torch {env['torch']}" if "torch" in env else "") + ".",
        "",
        f"Wall time from the start of the case to its written output, model loading included. Memory sampled "
        f"every {interval_s:g} s; areas by the trapezoid rule. GPU memory is the device-wide use read through "
        "NVML (as FLARE reads it); RSS is the resident memory of the process tree.",
        "",
        efficiency_table(measurements),
    ]
    if figure:
        paths["png"] = memory_curve_figure(measurements, out_dir / "memory_curves.png")
        md += ["![Memory-time curves](memory_curves.png)", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    return paths


def memory_curve_figure(measurements: Sequence[CaseMeasurement], path: str | os.PathLike) -> Path:
    """Plot the memory-time curve of each case (RSS; GPU in a second panel when measured) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_curve = [m for m in measurements if m.curve is not None and len(m.curve.times_s)]
    has_gpu = any(m.curve.gpu_mib is not None for m in with_curve)  # type: ignore[union-attr]
    panels = [("rss_mib", "RSS of the process tree (MiB)")]
    if has_gpu:
        panels.insert(0, ("gpu_mib", "GPU memory used, device-wide (MiB)"))
    fig = Figure(figsize=(9, 3.6 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (attr, ylabel) in zip(axes, panels):
        for i, m in enumerate(with_curve):
            values = getattr(m.curve, attr)
            if values is None:
                continue
            label = m.case if i < 12 else None
            ax.plot(m.curve.times_s, values, lw=1.2, label=label)  # type: ignore[union-attr]
        ax.set_xlabel("time since the start of the case (s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
    if with_curve:
        axes[0].legend(fontsize=8, ncol=2 if len(with_curve) > 6 else 1, loc="best",
                       title=None if len(with_curve) <= 12 else f"first 12 of {len(with_curve)} cases")
    else:
        axes[0].text(0.5, 0.5, "no cases measured", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle("Memory-time curves per case")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# The sampler's own cost


@dataclass(frozen=True)
class SamplerOverhead:
    """Cost of the sampler on a workload (see :func:`measure_sampler_overhead`).

    Attributes:
        median_without_s: median wall time of the workload alone.
        median_with_s: median wall time of the workload inside a ``with MemorySampler()`` block.
        relative: median over the interleaved pairs of (time with / time without) - 1, wall clock
            (0.01 = 1% slower). Pair ratios cancel slow drifts of the machine's load.
        relative_cpu: the same for the CPU time of the process (the sampler thread's CPU included),
            which other processes on the machine disturb less than the wall clock.
        sample_cost_us: median wall time of taking one sample, microseconds.
        start_stop_ms: median wall time of entering and leaving an empty sampler block, milliseconds
            (thread start and join, first and last sample): a fixed cost per measured case.
        repeats: pairs of runs.
    """

    median_without_s: float
    median_with_s: float
    relative: float
    relative_cpu: float
    sample_cost_us: float
    start_stop_ms: float
    repeats: int


def measure_sampler_overhead(
    workload: Callable[[], Any], *, repeats: int = 7, interval_s: float = SAMPLE_INTERVAL_S
) -> SamplerOverhead:
    """Time `workload` alone and inside a running :class:`MemorySampler`, in interleaved pairs.

    The sampler is created, started and stopped inside the timed region, as :func:`measure_case`
    does. One unmeasured run warms caches first.

    Raises:
        ValueError: `repeats` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    workload()
    for i in range(2 * repeats):
        sampled = i % 2 == 1
        w0, c0 = time.perf_counter(), time.process_time()
        if sampled:
            with MemorySampler(interval_s=interval_s):
                workload()
        else:
            workload()
        wall[sampled].append(time.perf_counter() - w0)
        cpu[sampled].append(time.process_time() - c0)

    def pair_ratio(d: dict[bool, list[float]]) -> float:
        return statistics.median(a / b for a, b in zip(d[True], d[False]) if b > 0) - 1.0

    start_stop = []
    for _ in range(15):
        w0 = time.perf_counter()
        with MemorySampler(interval_s=interval_s):
            pass
        start_stop.append(time.perf_counter() - w0)
    probe = MemorySampler(interval_s=interval_s)
    probe._t0 = time.perf_counter()
    costs = []
    for _ in range(50):
        w0 = time.perf_counter()
        probe._sample()
        costs.append(time.perf_counter() - w0)
    return SamplerOverhead(
        median_without_s=statistics.median(wall[False]),
        median_with_s=statistics.median(wall[True]),
        relative=pair_ratio(wall),
        relative_cpu=pair_ratio(cpu),
        sample_cost_us=statistics.median(costs) * 1e6,
        start_stop_ms=statistics.median(start_stop) * 1e3,
        repeats=repeats,
    )
