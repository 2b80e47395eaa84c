"""The machine a measurement ran on: CPU model and vector extensions, core count, memory, versions.

The CPU's vector extensions decide what a CPU run can do fast (DESIGN section 4: without native bf16,
bf16 is slower than fp32), so every efficiency report names them: AVX2, AVX-512 (foundation,
``avx512f``) and AMX (tile registers, ``amx_tile``), read from ``/proc/cpuinfo``, else from ``lscpu``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

CPUINFO = Path("/proc/cpuinfo")
_FLAGS = {"avx2": "avx2", "avx512": "avx512f", "amx": "amx_tile"}
"""Attribute of :class:`CpuInfo` -> the kernel's flag name that shows the extension."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and vector extensions.

    Attributes:
        model: model name as the kernel reports it (e.g. 'AMD EPYC 7B13'); the platform's processor
            or machine name when no model name is found.
        logical_cpus: CPUs this process may run on (its affinity), None if unknown.
        avx2, avx512, amx: whether the extension is present; None when no flag list was found
            (e.g. not Linux, or an ARM CPU's 'Features' line).
    """

    model: str
    logical_cpus: int | None
    avx2: bool | None
    avx512: bool | None
    amx: bool | None

    def summary(self) -> str:
        """One line, e.g. 'AMD EPYC, 2 logical CPUs; AVX2 yes, AVX-512 no, AMX no'."""
        cpus = "" if self.logical_cpus is None else f", {self.logical_cpus} logical CPU{'s' if self.logical_cpus != 1 else ''}"

        def yes(value: bool | None) -> str:
            return "unknown" if value is None else "yes" if value else "no"

        return f"{self.model}{cpus}; AVX2 {yes(self.avx2)}, AVX-512 {yes(self.avx512)}, AMX {yes(self.amx)}"


def parse_cpuinfo(text: str, *, logical_cpus: int | None = None) -> CpuInfo:
    """Read the model name and the AVX2 / AVX-512 / AMX flags from ``/proc/cpuinfo`` or ``lscpu`` text.

    The first 'model name' (cpuinfo) or 'Model name' (lscpu) line gives the model and the first
    'flags' / 'Flags' line the extensions; text without a flags line gives None for each extension.
    """
    model, flags = None, None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and flags is None:
            flags = set(value.split())
    known = {attr: (None if flags is None else name in flags) for attr, name in _FLAGS.items()}
    return CpuInfo(model=model or platform.processor() or platform.machine() or "unknown CPU", logical_cpus=logical_cpus, **known)


def cpu_info() -> CpuInfo:
    """The CPU of this machine, from ``/proc/cpuinfo`` (Linux), else ``lscpu``, else the platform module."""
    try:
        cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    text = ""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        pass
    if "flags" not in text:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            pass
    return parse_cpuinfo(text, logical_cpus=cpus)


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and machine description for an efficiency report (JSON-ready).

    Keys: flareseg, python, platform, cpu (model, logical_cpus, avx2, avx512, amx), cpu_summary,
    memory_gib (total RAM), numpy, device ('cpu' or the GPU's name), torch (the installed version,
    read from the package metadata without importing it; None when torch is not installed).
    """
    from flareseg import __version__

    cpu = cpu_info()
    env: dict[str, Any] = {
        "flareseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"model": cpu.model, "logical_cpus": cpu.logical_cpus, "avx2": cpu.avx2, "avx512": cpu.avx512, "amx": cpu.amx},
        "cpu_summary": cpu.summary(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "numpy": np.__version__,
        "device": device or "cpu",
        "torch": _installed_version("torch"),
    }
    return env


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
