"""What happened to one case (:class:`PredictionReport`) and to a folder run (:class:`BatchReport`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flareseg.transforms.roi import Box


@dataclass
class PredictionReport:
    """What happened to one case.

    Attributes:
        case: case name.
        input, output: paths (None for an in-memory volume / when nothing was written).
        mode: the inference mode.
        device: where the networks ran.
        engine: what ran them ('torch', 'onnxruntime', 'openvino'; after any fallback to torch).
        input_shape, input_spacing: the input's grid.
        network_shape: the organ model's network grid (after body crop and resampling).
        organ_box, tumor_box: the boxes of the network grids the models saw (None: not run).
        tiles: network evaluations per stage (mirroring included).
        steps: the sliding-window step each model ran at ('organ', 'tumor'): the mode's, or the model's own.
        timings: seconds per stage (see the module docstring), plus 'load' when models were loaded
            for this case and 'total'.
        voxel_counts: voxels per label id in the written map.
        notes: anything unusual (no organ found, tumour model skipped, ...).
    """

    case: str
    input: str | None = None
    output: str | None = None
    mode: str = ""
    device: str = ""
    engine: str = ""
    input_shape: tuple[int, int, int] | None = None
    input_spacing: tuple[float, float, float] | None = None
    network_shape: tuple[int, int, int] | None = None
    organ_box: Box | None = None
    tumor_box: Box | None = None
    tiles: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    voxel_counts: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.timings.get("total", sum(v for k, v in self.timings.items() if k != "total"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items() if k != "total")
        return f"{self.case}: {self.seconds:.1f} s ({stages})"


@dataclass
class BatchReport:
    """The result of :func:`predict_folder`.

    Attributes:
        predicted: reports of the cases predicted now.
        skipped: names of the cases whose output already existed.
        failed: case name -> error message.
        seconds: wall time of the whole batch.
    """

    input_dir: str
    output_dir: str
    predicted: list[PredictionReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"{len(self.predicted)} predicted, {len(self.skipped)} skipped (already done), {len(self.failed)} failed in {self.seconds:.1f} s"
        for name, message in self.failed.items():
            text += f"\n  FAILED {name}: {message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StageTimer:
    """Accumulates seconds per stage and announces each stage to a callback."""

    def __init__(self, timings: dict[str, float], on_stage: Callable[[str], None] | None):
        self.timings = timings
        self.on_stage = on_stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

