"""Folder runs on a Ray cluster: a pool of actors, each holding both models, predicting the cases of a folder.

:class:`RayRunner` (and :func:`predict_folder_ray`: one folder, with a pool of its own) gives the
guarantees of :func:`~flareseg.inference.folder.predict_folder` (the same
:func:`~flareseg.inference.folder.plan_folder` decides which cases are done, the same
:func:`~flareseg.inference.folder.predict_one` predicts each case under its lock and writes it
atomically, a bad case is reported by name while the others go on) with the cases spread over Ray
actors. Each actor (:class:`CaseWorker`) loads the organ and tumour models once, in its own process,
and keeps them for every case it is given:

- on CUDA (``device`` ``"cuda"``, or ``"auto"`` on a cluster with GPUs) one actor per GPU, each
  reserving ``num_gpus=1`` (Ray sets its ``CUDA_VISIBLE_DEVICES``), the cluster's CPUs shared out
  among them;
- on CPU, ``workers`` actors (default: one per :data:`DEFAULT_CPU_THREADS` CPUs), each reserving an
  equal share of the cluster's CPUs and running torch with that many threads.

Ray does the scheduling, the transport and the fault handling: the driver keeps one case in flight
per actor and waits with ``ray.wait`` for whichever finishes first. An actor whose process dies
mid-case (``kill -9``, the kernel's OOM killer, a lost node) is restarted by Ray, which loads the
models again and retries the case on it (``max_restarts=-1``, ``max_task_retries=TASK_RETRIES``).
Nothing the dead process wrote can be mistaken for a result: its output was a temporary file (removed
when the case is redone, see :func:`~flareseg.io.remove_stale_temporaries`) and its case lock died with
it. A case that kills its worker on every attempt is reported failed by name, and the restarted actor
goes on with the next case. (Ray's own ``ActorPool`` is not used: its ``get_next_unordered`` raises a
task's error without saying which case it belonged to.)

Ray is an optional dependency (``pip install 'flareseg[distributed]'``), imported only when a pool
starts. Without an address a local cluster is started for the pool and shut down with it (Ray's
start-up, about 5 s on a 2-core machine, plus each actor's import of torch and model loading); with an
address (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``) the run joins that cluster, whose nodes
must have flareseg installed and see the input, output and model folders at the same paths. A process
already connected to Ray (``ray.init`` called before) uses that connection and leaves it open.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import flareseg
from flareseg.errors import ConfigError, FlaresegError
from flareseg.inference.config import InferenceConfig
from flareseg.inference.folder import plan_folder, predict_one
from flareseg.inference.pipeline import TwoStepPredictor
from flareseg.inference.reports import BatchReport
from flareseg.model.folder import require_folder
from flareseg.io import CaseInput

log = logging.getLogger(__name__)

TASK_RETRIES = 2
"""How often a case whose worker process died is tried again (on the restarted worker) before it is reported failed."""

DEFAULT_CPU_THREADS = 4
"""CPUs (torch threads) per CPU actor when the number of workers is not given."""

LOCAL_OBJECT_STORE_BYTES = 100 * 1024**2
"""Object store of a local cluster: only case names and reports travel through it (Ray's minimum is 75 MiB)."""


@dataclass(frozen=True)
class PoolShape:
    """The actor pool of a run: how many actors and what each reserves.

    Attributes:
        workers: number of actors.
        cpus: CPUs each actor reserves, also its torch threads.
        gpus: GPUs each actor reserves (0 or 1).
    """

    workers: int
    cpus: int
    gpus: int

    @property
    def device(self) -> str:
        """The torch device inside each actor (Ray makes the reserved GPU the actor's only one)."""
        return "cuda" if self.gpus else "cpu"


def pool_shape(cpus: float, gpus: float, *, device: str, workers: int | None = None, largest_node_cpus: float | None = None) -> PoolShape:
    """The actor pool for a cluster of `cpus` CPUs and `gpus` GPUs.

    Args:
        cpus, gpus: the cluster's resources (``ray.cluster_resources()``).
        device: ``"cpu"``; ``"cuda"`` (one actor per GPU); ``"auto"`` (``"cuda"`` when the cluster has GPUs).
        workers: number of actors (default: one per GPU on CUDA, ``cpus // DEFAULT_CPU_THREADS`` on CPU).
        largest_node_cpus: the CPUs of the cluster's largest node; an actor's share is capped at it so
            that every actor fits on some node (default: `cpus`, one node).

    Raises:
        ConfigError: `device` is not one of those three, CUDA is asked for on a cluster without GPUs, or
            more workers are asked for than the cluster has GPUs (CUDA) or CPUs (CPU): those actors could
            never start.
    """
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"device {device!r} with Ray: use 'cpu', 'cuda' (one worker per GPU, Ray assigns it) or 'auto'")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    n_cpus, n_gpus = int(cpus), int(gpus)
    node_cpus = int(largest_node_cpus if largest_node_cpus is not None else cpus)
    if device == "cuda" and n_gpus == 0:
        raise ConfigError("device 'cuda' requested but the Ray cluster has no GPU (use 'cpu' or 'auto')")
    if device != "cpu" and n_gpus > 0:
        if workers is not None and workers > n_gpus:
            raise ConfigError(f"{workers} workers requested but the Ray cluster has {n_gpus} GPU(s): one worker per GPU at most")
        count = workers or n_gpus
        return PoolShape(count, max(1, min(n_cpus // count, node_cpus)), 1)
    if n_cpus < 1:
        raise ConfigError("the Ray cluster has no CPU to run a worker on")
    if workers is not None and workers > n_cpus:
        raise ConfigError(f"{workers} workers requested but the Ray cluster has {n_cpus} CPU(s): one CPU per worker at least")
    count = workers or max(1, n_cpus // DEFAULT_CPU_THREADS)
    return PoolShape(count, max(1, min(n_cpus // count, node_cpus)), 0)


class CaseWorker:
    """The body of one Ray actor: both models, loaded once in the actor's process, predicting cases.

    Args:
        organ_model, tumor_model: model folders (absolute paths, as every node sees them).
        config: the inference settings.
        device: the torch device inside the actor (``"cpu"`` or ``"cuda"``).
        threads: torch threads.

    A model that cannot be loaded does not kill the actor: :meth:`ready` returns the error, so the
    driver can raise it as it is (a :class:`~flareseg.errors.ModelFolderError` naming the folder).
    """

    def __init__(self, organ_model: str, tumor_model: str | None, config: InferenceConfig, device: str, threads: int):
        torch.set_num_threads(threads)
        self.error: FlaresegError | None = None
        try:
            self.predictor = TwoStepPredictor(organ_model, tumor_model, config=config, device=device)
        except FlaresegError as exc:
            self.error = exc

    def ready(self) -> tuple[FlaresegError | None, str, int]:
        """(the model-loading error or None, the file flareseg was imported from, the process id)."""
        return self.error, flareseg.__file__, os.getpid()

    def predict(self, case: CaseInput, output_dir: str, overwrite: bool, suffix: str) -> tuple[str, object]:
        """:func:`~flareseg.inference.folder.predict_one` of `case` into ``output_dir / (case.name + suffix)``: ``(status, report or message)``."""
        return predict_one(self.predictor, case, Path(output_dir), overwrite=overwrite, suffix=suffix)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray runner needs Ray: pip install 'flareseg[distributed]'") from None
    return ray


def _connect(ray, address: str | None, local_cpus: int | None) -> bool:
    """Connect to Ray; returns whether this call started the connection (and must shut it down)."""
    if ray.is_initialized():
        if address:
            raise ConfigError(f"this process is already connected to a Ray cluster; cannot join {address!r} as well")
        return False
    start = time.perf_counter()
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s in %.1f s", address, time.perf_counter() - start)
    else:
        cpus = local_cpus or len(os.sched_getaffinity(0))
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
        log.info("started a local Ray cluster (%d CPUs) in %.1f s", cpus, time.perf_counter() - start)
    return True


def _start_pool(ray, shape: PoolShape, organ_model: str, tumor_model: str | None, config: InferenceConfig, *, local: bool) -> list:
    """Start `shape.workers` actors and wait until each holds its models.

    Raises:
        FlaresegError: the first model-loading error an actor reports.
    """
    start = time.perf_counter()
    actor_class = ray.remote(CaseWorker).options(
        num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=-1, max_task_retries=TASK_RETRIES
    )
    actors = [actor_class.remote(organ_model, tumor_model, config, shape.device, shape.cpus) for _ in range(shape.workers)]
    answers = ray.get([a.ready.remote() for a in actors])
    errors = [error for error, _, _ in answers if error is not None]
    if errors:
        for actor in actors:
            ray.kill(actor)
        raise errors[0]
    modules = {module for _, module, _ in answers}
    if local and modules != {flareseg.__file__}:
        log.warning("the Ray workers import flareseg from %s, this process from %s: set PYTHONPATH alike", ", ".join(sorted(modules)), flareseg.__file__)
    log.info("%d Ray worker(s) (%d CPU, %d GPU each) loaded the models in %.1f s", shape.workers, shape.cpus, shape.gpus, time.perf_counter() - start)
    return actors


class RayRunner:
    """An actor pool on a Ray cluster, each actor holding both models, predicting any number of folders.

    The cluster is joined (or a local one started) and the actors load their models at the first
    folder with something to predict, and are kept until :meth:`close` (or the end of a ``with``
    block), so several folders pay the start-up once::

        with RayRunner("models/organ", "models/tumor", workers=2) as runner:
            for site in ("siteA", "siteB"):
                print(runner.predict_folder(f"{site}/imagesTs", f"{site}/preds").summary())

    Args:
        organ_model, tumor_model: model folders (paths every node sees; a loaded predictor cannot
            travel to other processes); ``tumor_model=None`` predicts organs only.
        config: the inference settings (default: the ``fast`` preset).
        device: ``"cpu"``, ``"cuda"`` (one worker per GPU) or ``"auto"`` (CUDA when the cluster has GPUs).
        address: a Ray cluster to join (``ray.init``'s address); None: a local cluster, shut down by :meth:`close`.
        workers: number of actors (see :func:`pool_shape`).
        local_cpus: CPUs of a local cluster (default: those this process may use).

    Raises:
        ModelFolderError: a model folder does not exist (checked here, before Ray starts).
    """

    def __init__(
        self,
        organ_model: str | os.PathLike,
        tumor_model: str | os.PathLike | None = None,
        *,
        config: InferenceConfig | None = None,
        device: str = "cpu",
        address: str | None = None,
        workers: int | None = None,
        local_cpus: int | None = None,
    ):
        models = [Path(organ_model).resolve(), None if tumor_model is None else Path(tumor_model).resolve()]
        for folder in models:
            if folder is not None:
                require_folder(folder)
        self.models = tuple(None if m is None else str(m) for m in models)
        self.config = config if config is not None else InferenceConfig()
        self.device, self.address, self.workers, self.local_cpus = device, address, workers, local_cpus
        self.shape: PoolShape | None = None
        self._ray = None
        self._owns_connection = False
        self._actors: list = []

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _pool(self) -> list:
        """The actors, started at the first call (see :func:`pool_shape` and :class:`CaseWorker`)."""
        if self._ray is None:
            self._ray = _import_ray()
            self._owns_connection = _connect(self._ray, self.address, self.local_cpus)
        if not self._actors:
            resources = self._ray.cluster_resources()
            node_cpus = max((n["Resources"].get("CPU", 0) for n in self._ray.nodes() if n["Alive"]), default=0)
            self.shape = pool_shape(resources.get("CPU", 0), resources.get("GPU", 0), device=self.device, workers=self.workers, largest_node_cpus=node_cpus)
            self._actors = _start_pool(self._ray, self.shape, *self.models, self.config, local=self.address is None)
        return self._actors

    def close(self) -> None:
        """Stop the actors, and the local cluster if this runner started it."""
        if self._ray is None:
            return
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._owns_connection:
            self._ray.shutdown()
        self._ray = None

    def predict_folder(
        self, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True, part: tuple[int, int] | None = None,
        output_type: str | None = None,
    ) -> BatchReport:
        """Predict every case of `input_dir` into `output_dir` (arguments as for :func:`~flareseg.inference.folder.predict_folder`).

        Returns:
            The :class:`~flareseg.inference.reports.BatchReport`: cases predicted (in the order they
            finished), skipped (already done), failed (name -> reason, including a worker that died on
            every attempt); ``seconds`` includes the pool's start-up when this call started it.

        Raises:
            InputError: the input folder is missing or holds no case; the output folder is the input, a
                file, or not writable (checked before Ray starts).
            ModelFolderError: a model folder is invalid (as a worker reads it).
            ConfigError: Ray is not installed, or the pool cannot be placed (:func:`pool_shape`).
        """
        start = time.perf_counter()
        output_dir = Path(output_dir).resolve()
        plan = plan_folder(input_dir, output_dir, overwrite=overwrite, part=part, output_type=output_type)
        batch = BatchReport(str(input_dir), str(output_dir), skipped=plan.skipped, failed=plan.failed)
        if plan.todo:
            output_dir.mkdir(parents=True, exist_ok=True)
            actors = self._pool()
            _run_cases(self._ray, actors, plan.todo, output_dir, batch, overwrite=overwrite, progress=progress, suffix=plan.suffix)
        batch.seconds = time.perf_counter() - start
        log.info("%s", batch.summary())
        return batch


def predict_folder_ray(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    organ_model: str | os.PathLike,
    tumor_model: str | os.PathLike | None,
    config: InferenceConfig | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    part: tuple[int, int] | None = None,
    output_type: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    local_cpus: int | None = None,
) -> BatchReport:
    """Predict every case of a folder on a Ray cluster: one :meth:`RayRunner.predict_folder` (see there), then the pool stops.

    The outputs equal a serial run's; ``BatchReport.seconds`` includes the cluster's start-up.
    """
    with RayRunner(organ_model, tumor_model, config=config, device=device, address=address, workers=workers, local_cpus=local_cpus) as runner:
        return runner.predict_folder(input_dir, output_dir, overwrite=overwrite, progress=progress, part=part, output_type=output_type)


def _run_cases(ray, actors: list, cases: list[CaseInput], output_dir: Path, batch: BatchReport, *, overwrite: bool, progress: bool, suffix: str) -> None:
    """Keep one case in flight per actor until every case is predicted or reported; fill `batch`."""
    todo = iter(cases)
    in_flight: dict = {}  # ObjectRef -> (case, actor)

    def hand_next_case(actor) -> None:
        case = next(todo, None)
        if case is not None:
            in_flight[actor.predict.remote(case, str(output_dir), overwrite, suffix)] = (case, actor)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), desc=f"cases ({len(actors)} Ray workers)", unit="case")
    try:
        for actor in actors:
            hand_next_case(actor)
        while in_flight:
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            case, actor = in_flight.pop(done)
            try:
                status, result = ray.get(done)
            except ray.exceptions.RayActorError as exc:
                status = "failed"
                result = f"{case.path}: its worker process died on each of {TASK_RETRIES + 1} attempts (killed, or out of memory?)"
                log.error("%s: %s (%s)", case.name, result, type(exc).__name__)
                if isinstance(exc, ray.exceptions.ActorDiedError):  # for good: Ray will not restart it
                    actors.remove(actor)
                    actor = None
            if status == "predicted":
                batch.predicted.append(result)
            elif status == "skipped":
                batch.skipped.append(case.name)
            else:
                batch.failed[case.name] = result
            if bar is not None:
                bar.set_postfix_str(case.name)
                bar.update(1)
            if actor is not None:
                hand_next_case(actor)
            elif not in_flight and not actors:
                for left in todo:
                    batch.failed[left.name] = f"{left.path}: not predicted, no Ray worker is left"
    finally:
        if bar is not None:
            bar.close()
