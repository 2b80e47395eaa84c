"""Time and memory measurement: the sampler, the curve summaries, the benchmark's files, the sampler's cost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import flareseg.measure.efficiency as efficiency
from flareseg.measure.efficiency import (
    CaseMeasurement,
    MemoryCurve,
    MemorySampler,
    benchmark_cases,
    case_name,
    curve_area,
    efficiency_table,
    measure_case,
    measure_sampler_overhead,
)
from flareseg.errors import InputError
from flareseg.io import Volume, read_image, write_label, write_volume

MIB = 2**20


# ---------------------------------------------------------------------------------------------- sampler


def test_sampler_samples_every_tenth_of_a_second():
    with MemorySampler() as sampler:
        time.sleep(0.55)
    curve = sampler.curve
    # one sample on entry, ticks at 0.1 ... 0.5 s, one on exit at ~0.55 s
    assert 6 <= len(curve.times_s) <= 8
    assert curve.times_s[0] == pytest.approx(0.0, abs=0.01)
    assert curve.times_s[-1] == pytest.approx(0.55, abs=0.05)
    steps = np.diff(curve.times_s[:-1])
    assert np.median(steps) == pytest.approx(0.1, abs=0.02)
    assert np.all(curve.rss_mib > 10)  # a Python process with numpy holds tens of MiB
    assert curve.gpu_mib is None  # no GPU on the test machine (or gpu=None found none)


def test_sampler_rejects_bad_interval_and_reuse():
    with pytest.raises(ValueError, match="interval_s"):
        MemorySampler(interval_s=0)
    sampler = MemorySampler()
    with sampler:
        pass
    with pytest.raises(RuntimeError, match="single-use"):
        with sampler:
            pass


def test_peak_rss_sees_a_200_mib_allocation():
    def allocate():
        block = np.ones(200 * MIB // 8)  # written, so resident
        time.sleep(0.35)
        del block

    m = measure_case(allocate, case="alloc")
    baseline = m.curve.rss_mib[0]
    assert m.rss_peak_mib - baseline >= 180
    assert m.rss_peak_mib - baseline < 260
    # the area over the baseline: the block is held >= 0.35 s (first touching its pages can take longer)
    excess_area = m.rss_area_mib_s - baseline * m.curve.times_s[-1]
    assert 0.5 * 200 * 0.35 <= excess_area <= 210 * m.wall_time_s
    assert m.wall_time_s >= 0.35
    assert m.gpu_peak_mib is None and m.gpu_area_mib_s is None and m.torch_peak_mib is None


def test_rss_of_child_processes_is_counted():
    code = "b = b'x' * (150 * 2**20); import time; time.sleep(0.6)"

    def run_child():
        subprocess.run([sys.executable, "-c", code], check=True)

    m = measure_case(run_child, case="child")
    assert m.rss_peak_mib - m.curve.rss_mib[0] >= 140


def test_measure_case_propagates_errors_of_the_work():
    def fail():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        measure_case(fail)


# ---------------------------------------------------------------------------------------------- curve maths


def test_trapezoid_area_of_known_curves():
    t = np.arange(0, 2.0001, 0.1)
    assert curve_area(t, 100 * t) == pytest.approx(200.0)  # a ramp: exact under the trapezoid rule
    assert curve_area([0.0, 0.1, 0.3, 0.4], [0, 10, 10, 0]) == pytest.approx(0.5 + 2.0 + 0.5)  # uneven steps
    assert curve_area([0.0], [5.0]) == 0.0
    assert curve_area([], []) == 0.0
    with pytest.raises(ValueError, match="samples"):
        curve_area([0, 1], [1])


def test_case_measurement_from_injected_curve():
    t = np.arange(11) * 0.1  # 0 .. 1 s
    rss = np.full(11, 500.0)
    gpu = np.array([300, 300, 1300, 2300, 3300, 3300, 3300, 2300, 1300, 300, 300], dtype=float)
    curve = MemoryCurve(t, rss, gpu)
    m = CaseMeasurement.from_curve(curve, case="c1", wall_time_s=1.0, image_shape=(512, 512, 100), spacing_mm=(0.8, 0.8, 2.5))
    assert m.rss_peak_mib == 500.0
    assert m.rss_area_mib_s == pytest.approx(500.0)
    assert m.gpu_peak_mib == 3300.0
    assert m.gpu_baseline_mib == 300.0
    expected = sum((gpu[i] + gpu[i + 1]) / 2 * 0.1 for i in range(10))
    assert m.gpu_area_mib_s == pytest.approx(expected)
    assert m.n_samples == 11
    back = CaseMeasurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    assert np.allclose(back.curve.gpu_mib, gpu)
    with pytest.raises(ValueError, match="differ in length"):
        MemoryCurve(t, rss[:-1])


def test_case_name_strips_channel_suffix():
    assert case_name(Path("FLARE23_0001_0000.nii.gz")) == "FLARE23_0001"
    assert case_name(Path("abc.nii")) == "abc"
    assert case_name(Path("dicom_folder")) == "dicom_folder"


# ---------------------------------------------------------------------------------------------- benchmark


def _tiny_image(path: Path, shape=(12, 10, 8), spacing=(1.5, 1.5, 2.0)) -> Path:
    array = np.full(shape, -1000, dtype=np.int16)
    array[2:-2, 2:-2, 2:-2] = 40
    return write_volume(Volume(array, spacing, (0.0, 0.0, 0.0), np.eye(3)), path)


def test_benchmark_cases_writes_json_markdown_and_curves(tmp_path):
    inputs = [
        _tiny_image(tmp_path / "in" / "case_a_0000.nii.gz"),
        _tiny_image(tmp_path / "in" / "case_b_0000.nii.gz", shape=(16, 14, 9), spacing=(0.8, 0.8, 3.0)),
        _tiny_image(tmp_path / "in" / "case_bad_0000.nii.gz"),
        _tiny_image(tmp_path / "in" / "case_lazy_0000.nii.gz"),
    ]
    calls = []

    def predict_one(image_path: Path, output: Path) -> None:
        calls.append((image_path, output))
        if "bad" in image_path.name:
            raise RuntimeError("model crashed")
        if "lazy" in image_path.name:
            return
        reference = read_image(image_path)
        time.sleep(0.15)
        write_label((reference.array > 0).astype(np.uint8), reference, output)

    out = tmp_path / "bench"
    results = benchmark_cases(inputs, predict_one, out, progress=False)

    assert [m.case for m in results] == ["case_a", "case_b", "case_bad", "case_lazy"]
    assert calls[0] == (inputs[0], out / "predictions" / "case_a.nii.gz")
    assert (out / "predictions" / "case_a.nii.gz").exists()
    a, b, bad, lazy = results
    assert a.ok and b.ok
    assert a.image_shape == (12, 10, 8) and b.image_shape == (16, 14, 9)
    assert b.spacing_mm == pytest.approx((0.8, 0.8, 3.0))
    assert a.wall_time_s >= 0.15 and a.n_samples >= 2
    assert bad.error == "RuntimeError: model crashed"
    assert lazy.error is not None and "without writing" in lazy.error

    doc = json.loads((out / "efficiency.json").read_text())
    assert doc["sample_interval_s"] == 0.1
    assert len(doc["cases"]) == 4
    assert doc["cases"][0]["image_shape"] == [12, 10, 8]
    assert len(doc["cases"][0]["curve"]["t_s"]) == a.n_samples
    assert doc["median"]["wall_time_s"] == pytest.approx(np.median([a.wall_time_s, b.wall_time_s]), abs=0.01)
    assert "python" in doc["environment"] and doc["environment"]["device"] == "cpu"

    md = (out / "efficiency.md").read_text()
    assert "| Case | Image size | Spacing (mm) | Running time (s) |" in md
    assert "| case_a | (12, 10, 8) | (1.5, 1.5, 2) |" in md
    assert "**median** (2 cases)" in md
    assert "case_bad failed: RuntimeError: model crashed" in md
    header = next(line for line in md.splitlines() if line.startswith("| Case"))
    assert "GPU" not in header and "Torch" not in header  # no GPU columns on a CPU-only run
    assert "![Memory-time curves](memory_curves.png)" in md

    import matplotlib.image as mpimg

    png = mpimg.imread(out / "memory_curves.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 400


def test_benchmark_cases_rejects_empty_and_duplicate_names(tmp_path):
    with pytest.raises(InputError, match="no cases"):
        benchmark_cases([], lambda i, o: None, tmp_path, progress=False)
    with pytest.raises(InputError, match="share the case name"):
        benchmark_cases([tmp_path / "a" / "x_0000.nii.gz", tmp_path / "b" / "x.nii.gz"], lambda i, o: None, tmp_path, progress=False)


class _FakeGpu:
    """Stands in for NVML: 'used memory' rises by 100 MiB a sample from 1000 MiB."""

    name = "Fake GPU"

    def __init__(self):
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return (1000 + 100 * (self.calls - 1)) * MIB


def test_gpu_columns_with_a_fake_nvml(monkeypatch, tmp_path):
    monkeypatch.setattr(efficiency._NvmlProbe, "open", classmethod(lambda cls, index=None: _FakeGpu()))
    m = measure_case(time.sleep, 0.25, case="gpu")
    assert m.gpu_baseline_mib == 1000
    assert m.gpu_peak_mib == 1000 + 100 * (m.n_samples - 1)
    assert m.gpu_area_mib_s == pytest.approx(curve_area(m.curve.times_s, m.curve.gpu_mib))
    table = efficiency_table([m])
    assert "Max GPU memory (MiB)" in table and "Area under GPU memory-time curve (MiB·s)" in table
    paths = efficiency.write_efficiency([m], tmp_path, device="Fake GPU")
    assert json.loads(paths["json"].read_text())["environment"]["device"] == "Fake GPU"
    assert paths["png"].exists()


# ---------------------------------------------------------------------------------------------- overhead


def test_sampler_overhead_is_within_noise():
    """The sampler must not slow a CPU-bound numpy workload measurably.

    One sample costs ~50 us and a sampler's start and stop ~0.3 ms, so the expected slowdown of this
    ~0.2 s workload is well under 1% (measured: 0-2%); the tolerance of 10% absorbs the noise of a
    shared 2-core machine (medians of interleaved pair ratios, so load drifts largely cancel).
    """
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)

    def workload():
        for _ in range(60):
            np.sort(x)
            np.exp(x).sum()

    result = measure_sampler_overhead(workload, repeats=7)
    assert result.sample_cost_us < 2000
    assert result.relative_cpu < 0.10, result
    assert result.relative < 0.10, result
