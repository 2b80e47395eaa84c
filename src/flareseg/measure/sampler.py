"""Memory-time curves: the sampler, its probes (RSS of a process tree, GPU memory through NVML), its cost.

A :class:`MemorySampler` samples every 0.1 s (FLARE's interval) in a background thread while a block
runs; the curve's peak and the area under it (MiB x s, trapezoid rule over the sample times) are the
memory figures of the paper's table 5. On a GPU machine the curve also holds the device-wide used
memory read through NVML, as FLARE's ``nvidia-smi`` sampling reads it; on every machine it holds the
resident memory (RSS) of a process tree: a root process (this one, or a case's own process) and all its
descendants.

Neither torch nor NVML is imported at module import: NVML (package ``nvidia-ml-py``) is imported when
a sampler starts and skipped if absent or without a driver; torch is never imported here, only read
from ``sys.modules`` when the measured code has imported it and initialised CUDA.

Units: MiB = 2**20 bytes, seconds, MiB x s.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psutil

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.1
"""FLARE's sampling interval of the memory-time curve."""
MIB = float(2**20)


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


class NvmlProbe:
    """Device-wide used memory of one GPU through NVML, in bytes."""

    def __init__(self, handle: Any, nvml: Any, name: str) -> None:
        self._handle = handle
        self._nvml = nvml
        self.name = name

    @classmethod
    def open(cls, index: int | str | None = None) -> "NvmlProbe | None":
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


def torch_cuda() -> Any | None:
    """`torch.cuda` if the running code has imported torch and initialised CUDA; never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        return cuda if cuda.is_available() and cuda.is_initialized() else None
    except Exception:  # a broken or partial torch install must not break a measurement
        return None


def own_peak_rss_mib() -> float | None:
    """This process's peak resident memory as the kernel counts it (VmHWM of /proc/self/status), MiB;
    None where there is no /proc (not Linux).

    Unlike ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, VmHWM belongs to the process's current
    address space: Linux carries the parent's high-water mark into a child's ru_maxrss across
    fork + exec, so a child started by a 1 GiB process reports at least 1 GiB there.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        pass
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
        self._gpu = None if gpu is False else NvmlProbe.open(gpu_index)
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

    The sampler is created, started and stopped inside the timed region, as :func:`flareseg.measure.measure_case`
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
