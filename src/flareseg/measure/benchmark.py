"""Measure cases as the FLARE challenge does (DESIGN section 8): each in a process of its own, or in this one.

Per case: the wall time from the start of the case to the written output (model loading included:
the measured callable loads the models itself), the memory-time curve sampled every 0.1 s, its peak
and the area under it, and the per-stage seconds the prediction reports.

FLARE starts a fresh container per case, and a user runs ``flareseg predict`` as a fresh process: so
by default (:func:`measure_in_subprocess`, ``isolation='process'``) every case runs in a process
started for it, ``python -m flareseg.measure.child``, and the curve is the resident memory of that
process and its descendants from the moment it was started. Nothing the measuring process holds (a
demo's cohort, earlier cases, a trained model) is counted. :func:`measure_case` measures a call in
this process instead (``isolation='in-process'``): its curve starts at this process's own memory.

Units: MiB = 2**20 bytes, seconds, MiB x s.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from flareseg.errors import InputError
from flareseg.io import case_name, read_image_header
from flareseg.io.output import check_output_folder
from flareseg.measure.measurement import ISOLATIONS, CaseMeasurement
from flareseg.measure.sampler import MIB, SAMPLE_INTERVAL_S, MemoryCurve, MemorySampler, NvmlProbe, torch_cuda
from flareseg.measure.tables import write_efficiency

log = logging.getLogger(__name__)

CHILD_MODULE = "flareseg.measure.child"
EXIT_WAIT_S = 30.0
"""How long a case's process may take to exit after reporting its result before it is killed."""


# --------------------------------------------------------------------------------------------------
# One case in this process


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
    """Run ``fn(*args)`` in this process under a :class:`MemorySampler` and return its time and memory.

    The measurement covers exactly the call, and the curve is the RSS of this whole process (and its
    descendants): what it held before the call is counted too (``isolation='in-process'``). Pass a
    callable that loads the models, predicts and writes the output to have FLARE's "start to written
    output, model loading included". If `fn` returns an object with a ``timings`` mapping (a
    ``PredictionReport``), its stage seconds are kept.

    Args:
        fn: the work to measure.
        *args: its positional arguments.
        case: case name for the table.
        image_shape, spacing_mm: image size for the table (not read here).
        interval_s, gpu, gpu_index: see :class:`MemorySampler`.

    Returns:
        The measurement; exceptions of `fn` propagate (the sampler is stopped first).
    """
    return _measure_here(fn, args, catch=False, case=case, image_shape=image_shape, spacing_mm=spacing_mm,
                         interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)


def _measure_here(
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
    """Measure ``fn(*args)`` in this process; with `catch`, an exception of `fn` is recorded as the case's error."""
    cuda = torch_cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    error, value = None, None
    sampler = MemorySampler(interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)
    with sampler:
        start = time.perf_counter()
        try:
            value = fn(*args)
        except Exception as exc:
            if not catch:
                raise
            error = f"{type(exc).__name__}: {exc}"
            log.error("case %s failed: %s", case, error, exc_info=log.isEnabledFor(logging.DEBUG))
        wall = time.perf_counter() - start
    timings = getattr(value, "timings", None)
    return CaseMeasurement.from_curve(
        sampler.curve, case=case, wall_time_s=wall, image_shape=image_shape, spacing_mm=spacing_mm,
        torch_peak_mib=_torch_peak_mib(), error=error, isolation="in-process",
        stages_s=timings if isinstance(timings, Mapping) else None,
    )


def _torch_peak_mib() -> float | None:
    cuda = torch_cuda()
    if cuda is None:
        return None
    try:
        return float(cuda.max_memory_allocated()) / MIB
    except Exception:  # a broken CUDA state must not lose the measurement
        return None


# --------------------------------------------------------------------------------------------------
# One case in a process of its own


def measure_in_subprocess(
    predict_one: Callable[[Path, Path], Any],
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    case: str = "",
    image_shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    interval_s: float = SAMPLE_INTERVAL_S,
    gpu: bool | None = None,
    gpu_index: int | str | None = None,
) -> CaseMeasurement:
    """Run ``predict_one(image, output)`` in a new Python process and measure that process (POSIX).

    The process is ``python -m flareseg.measure.child`` with this process's ``sys.path``; it receives
    `predict_one` and its two path arguments pickled, so `predict_one` must be importable by
    reference: a module-level function of an importable module, or a :func:`functools.partial` of one
    with picklable arguments (``partial(predict_case, organ_model=..., tumor_model=..., config=...)``).

    The clock starts when the process is started; the case ends when the process reports that the call
    returned (its exit afterwards is not timed). The RSS curve is that of the process and its
    descendants, sampled from its start (``curve.times_s`` are seconds since then; the first sample is
    taken a few milliseconds later, once the process has replaced the forked copy of this one); GPU
    memory is sampled device-wide as in :class:`MemorySampler`.

    Returns:
        The measurement (``isolation='process'``, with ``startup_s``, ``stages_s`` and ``rss_hwm_mib``).
        An error of the call, a callable that cannot be loaded there, or a process that died without a
        result (killed, crashed) is recorded in ``error``, not raised.

    Raises:
        InputError: `predict_one` cannot be pickled or is defined in ``__main__`` (see above).
        KeyboardInterrupt: after killing the case's process.
    """
    payload = _payload(predict_one, (Path(image), Path(output)))
    reader, writer = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    start = time.perf_counter()
    try:
        # Popen returns once the child has executed the new interpreter (it waits for the exec).
        proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(writer)], stdin=subprocess.PIPE,
                                pass_fds=(writer,), env=env)
    finally:
        os.close(writer)
    try:
        with MemorySampler(interval_s=interval_s, pid=proc.pid, gpu=gpu, gpu_index=gpu_index) as sampler:
            offset = time.perf_counter() - start
            _send(proc, payload)
            raw = _await_line(proc, reader)
            wall = time.perf_counter() - start
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(reader)
    _reap(proc, case)
    result = _parse_result(raw, proc.returncode)
    if result.get("traceback"):
        log.debug("case %s, traceback in its process:\n%s", case, result["traceback"])
    if result["error"] is not None:
        log.error("case %s failed: %s", case, result["error"])
    c = sampler.curve
    curve = MemoryCurve(c.times_s + offset, c.rss_mib, c.gpu_mib)
    return CaseMeasurement.from_curve(
        curve, case=case, wall_time_s=wall, image_shape=image_shape, spacing_mm=spacing_mm,
        torch_peak_mib=result.get("torch_peak_mib"), error=result["error"], isolation="process",
        startup_s=max(wall - float(result.get("call_s") or 0.0), 0.0), stages_s=result.get("stages_s") or {},
        rss_hwm_mib=result.get("rss_hwm_mib"),
    )


def _payload(predict_one: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """The pickled call, or InputError when the case's process could not load it."""
    target = getattr(predict_one, "func", predict_one)  # a functools.partial's function
    if getattr(target, "__module__", None) == "__main__":
        raise InputError(
            f"predict_one {target!r} is defined in __main__, which a case's own process cannot import: "
            "define it in a module, or use isolation='in-process'"
        )
    try:
        return pickle.dumps((predict_one, args))
    except Exception as exc:
        raise InputError(
            f"predict_one {predict_one!r} cannot be sent to a case's own process ({type(exc).__name__}: {exc}): "
            "pass a module-level function or a functools.partial of one, or use isolation='in-process'"
        ) from None


def _send(proc: subprocess.Popen, payload: bytes) -> None:
    stdin = proc.stdin  # a pipe: Popen(stdin=PIPE)
    if stdin is None:
        return
    try:
        stdin.write(payload)
        stdin.close()
    except BrokenPipeError:  # the process died at once; _await_line reports it
        pass


def _await_line(proc: subprocess.Popen, fd: int) -> bytes:
    """Bytes of the first line written to `fd`, or what was written when the process ended without one."""
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:  # exited; a grandchild may still hold the pipe open
            break
    return data


def _reap(proc: subprocess.Popen, case: str) -> None:
    try:
        proc.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("case %s: its process did not exit %.0f s after reporting; killed", case, EXIT_WAIT_S)
        proc.kill()
        proc.wait()


def _parse_result(raw: bytes, returncode: int | None) -> dict[str, Any]:
    try:
        result = json.loads(raw.decode("utf-8", errors="replace").splitlines()[0])
        if isinstance(result, dict) and "error" in result:
            return result
    except (IndexError, json.JSONDecodeError):
        pass
    return {"error": f"the case's process ended without a result ({_exit_text(returncode)})"}


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


# --------------------------------------------------------------------------------------------------
# A folder of cases


def benchmark_cases(
    case_paths: Sequence[str | os.PathLike],
    predict_one: Callable[[Path, Path], Any],
    out_dir: str | os.PathLike,
    *,
    isolation: str = "process",
    progress: bool = True,
    interval_s: float = SAMPLE_INTERVAL_S,
    gpu: bool | None = None,
    gpu_index: int | str | None = None,
) -> list[CaseMeasurement]:
    """Measure ``predict_one(input, output)`` per case and write the efficiency table and curves.

    `predict_one` must do everything a user's run does for one case, model loading included, and
    write the label map to `output` = ``out_dir/predictions/<case>.nii.gz``. With ``isolation='process'``
    (the default) each case runs in a process of its own (:func:`measure_in_subprocess`; `predict_one`
    must then be picklable by reference), so each pays the interpreter start and the imports, as FLARE's
    fresh container and a standalone ``flareseg predict`` do, and no case's memory includes this
    process's. With ``'in-process'`` the cases run here one after another (:func:`measure_case`): garbage
    is collected, and PyTorch's CUDA cache emptied, between cases; imports and the CUDA context are paid
    by the first case only, and every curve includes this process's own memory. The written table says
    which was used.

    The image size and spacing come from each image's header (:func:`flareseg.io.read_image_header`);
    no voxel is read here. A case that raises, or returns without writing its output, is recorded with
    its error and the others go on (KeyboardInterrupt stops the run).

    Writes to `out_dir`: ``efficiency.json`` (environment, per-case figures, stage seconds and curves,
    medians), ``efficiency.md`` (the table) after every case, and ``memory_curves.png`` at the end.

    Args:
        case_paths: images (files or DICOM folders), measured in this order.
        predict_one: ``(input path, output path) -> anything``; a returned ``PredictionReport``'s
            ``timings`` become the table's stage columns.
        out_dir: output folder (created).
        isolation: 'process' or 'in-process' (see :data:`flareseg.measure.ISOLATIONS`).
        progress: show a progress bar on stderr.
        interval_s, gpu, gpu_index: see :class:`MemorySampler`.

    Returns:
        One measurement per case, in order.

    Raises:
        InputError: `case_paths` is empty, `out_dir` is a file or not writable, two cases share a name, `isolation` is unknown, or
            (``'process'``) `predict_one` cannot be sent to a case's process.
    """
    paths = [Path(p) for p in case_paths]
    if not paths:
        raise InputError("benchmark_cases: no cases given")
    check_output_folder(out_dir)
    if isolation not in ISOLATIONS:
        raise InputError(f"benchmark_cases: isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    names = [case_name(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"benchmark_cases: several inputs share the case name(s) {', '.join(dupes)}")
    if isolation == "process":
        _payload(predict_one, ())  # refuse an unpicklable callable before the first case
    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    nvml = NvmlProbe.open(gpu_index) if gpu is not False else None
    device = nvml.name if nvml is not None else "cpu"

    from tqdm.auto import tqdm

    results: list[CaseMeasurement] = []
    bar = tqdm(list(zip(paths, names)), desc="benchmark", unit="case", disable=not progress)
    for path, name in bar:
        bar.set_postfix_str(name)
        shape, spacing = _header_size(path)
        output = pred_dir / f"{name}.nii.gz"
        output.unlink(missing_ok=True)
        options = dict(case=name, image_shape=shape, spacing_mm=spacing, interval_s=interval_s, gpu=gpu, gpu_index=gpu_index)
        if isolation == "process":
            m = measure_in_subprocess(predict_one, path, output, **options)
        else:
            _settle()
            m = _measure_here(predict_one, (path, output), catch=True, **options)
        if m.ok and not output.exists():
            m = replace(m, error=f"predict_one returned without writing {output}")
            log.error("case %s: %s", name, m.error)
        results.append(m)
        log.info("%s: %.2f s, peak RSS %.0f MiB, peak GPU %s MiB", name, m.wall_time_s, m.rss_peak_mib,
                 "-" if m.gpu_peak_mib is None else f"{m.gpu_peak_mib:.0f}")
        write_efficiency(results, out_dir, device=device, interval_s=interval_s, figure=False)
    write_efficiency(results, out_dir, device=device, interval_s=interval_s, figure=True)
    return results


def _header_size(path: Path) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None]:
    try:
        return read_image_header(path)
    except InputError as exc:  # the prediction will report the same problem as the case's error
        log.warning("image size of %s unknown: %s", path, exc)
        return None, None


def _settle() -> None:
    """Free what an earlier in-process case left, so that it is not counted against the next."""
    gc.collect()
    cuda = torch_cuda()
    if cuda is not None:
        cuda.synchronize()
        cuda.empty_cache()
