"""The process one case runs in when it is measured on its own (see :func:`flareseg.measure.measure_in_subprocess`).

Run as ``python -m flareseg.measure.child FD``: reads a pickled ``(predict_one, args)`` from stdin,
calls ``predict_one(*args)`` and writes one JSON line to the file descriptor FD:

``call_s``          seconds of the call (after the interpreter started and the callable was loaded);
``stages_s``        the returned object's ``timings`` mapping (a ``PredictionReport``), else {};
``torch_peak_mib``  ``torch.cuda.max_memory_allocated`` when the call used CUDA through torch, else null;
``rss_hwm_mib``     this process's peak resident memory as the kernel counts it (VmHWM), null if unknown;
``error``           "Type: message" when loading the callable or the call raised, else null;
``traceback``       the formatted traceback of that error, else null.

The exit status is 0 on success and 1 on an error. Nothing here is meant to be run by hand.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

from flareseg.measure.sampler import MIB, own_peak_rss_mib, torch_cuda


def _stage_timings(value: Any) -> dict[str, float]:
    timings = getattr(value, "timings", None)
    if not isinstance(timings, Mapping):
        return {}
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float))}


def run(payload: bytes) -> dict[str, Any]:
    """Load and call the pickled ``(predict_one, args)``; the result record described above."""
    result: dict[str, Any] = {"call_s": 0.0, "stages_s": {}, "torch_peak_mib": None, "error": None, "traceback": None}
    try:
        fn, args = pickle.loads(payload)
    except Exception as exc:
        result["error"] = f"cannot load the prediction in the case's process: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        return result
    start = time.perf_counter()
    try:
        result["stages_s"] = _stage_timings(fn(*args))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    result["call_s"] = time.perf_counter() - start
    cuda = torch_cuda()
    if cuda is not None:
        result["torch_peak_mib"] = float(cuda.max_memory_allocated()) / MIB
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    result = run(sys.stdin.buffer.read())
    result["rss_hwm_mib"] = own_peak_rss_mib()
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
