"""Time and memory of inference (DESIGN section 8, the paper's table 5).

sampler      memory-time curves: RSS of a process tree and NVML GPU memory every 0.1 s; the sampler's cost
measurement  one case's figures (:class:`CaseMeasurement`)
benchmark    measuring a case in a process of its own or in this one, and a folder of cases
child        the process a case runs in (``python -m flareseg.measure.child``)
tables       the efficiency table with per-stage seconds, medians, efficiency.json/.md
figures      the memory-time curves as a PNG
environment  CPU model and vector extensions, versions
"""

from flareseg.measure.benchmark import benchmark_cases, measure_case, measure_in_subprocess
from flareseg.measure.environment import CpuInfo, cpu_info, environment, parse_cpuinfo
from flareseg.measure.figures import memory_curve_figure
from flareseg.measure.measurement import ISOLATIONS, CaseMeasurement
from flareseg.measure.sampler import (
    SAMPLE_INTERVAL_S,
    MemoryCurve,
    MemorySampler,
    SamplerOverhead,
    curve_area,
    measure_sampler_overhead,
    own_peak_rss_mib,
)
from flareseg.measure.tables import FORMAT_VERSION, STAGE_COLUMNS, efficiency_table, medians, write_efficiency

__all__ = [
    "FORMAT_VERSION", "ISOLATIONS", "SAMPLE_INTERVAL_S", "STAGE_COLUMNS", "CaseMeasurement", "CpuInfo", "MemoryCurve",
    "MemorySampler", "SamplerOverhead", "benchmark_cases", "cpu_info", "curve_area", "efficiency_table", "environment",
    "measure_case", "measure_in_subprocess", "measure_sampler_overhead", "medians", "memory_curve_figure",
    "own_peak_rss_mib", "parse_cpuinfo", "write_efficiency",
]
