"""The Ray runner: a local 2-CPU cluster (started once for the module) predicting folders with tiny models.

Checked against a serial run of the same models in this process: identical label maps; finished cases
skipped; a bad case reported by name while the others finish (exit code 2 from the command line); a
worker killed with SIGKILL in the middle of a case, after which every case is still written correctly
and nothing partial is left.
"""

import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from flareseg.cli import main
from flareseg.errors import ConfigError, ModelFolderError
from flareseg.inference import InferenceConfig, TwoStepPredictor, run_folder
from flareseg.inference.distributed import LOCAL_OBJECT_STORE_BYTES, CaseWorker, PoolShape, RayRunner, pool_shape
from flareseg.io import Volume, read_label, write_volume

from conftest import phantom_ct
from test_pipeline import write_random_model

CASES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs: two 1-thread CPU workers."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_models")
    return write_random_model(root / "organ", "organ", 0), write_random_model(root / "tumor", "tumor", 1)


def _write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for seed, name in enumerate(CASES):
        image, _ = phantom_ct(shape=(64, 60, 40), seed=seed)
        write_volume(Volume(image.array.astype(np.int16), image.spacing, image.origin, image.direction), folder / f"{name}_0000.nii.gz")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _write_inputs(tmp_path_factory.mktemp("ray_cases") / "in")


@pytest.fixture(scope="module")
def serial(models, inputs, tmp_path_factory):
    """The reference: the same models and cases predicted one after the other in this process, one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ray_serial")
    batch = run_folder(TwoStepPredictor(*models), inputs, out, progress=False)
    torch.set_num_threads(before)
    assert sorted(r.case for r in batch.predicted) == list(CASES)
    return out


def _assert_same_outputs(folder: Path, reference: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [f"{n}.nii.gz" for n in CASES]  # no temporary, no lock left
    for name in CASES:
        got, want = read_label(folder / f"{name}.nii.gz"), read_label(reference / f"{name}.nii.gz")
        assert got.same_grid(want), name
        np.testing.assert_array_equal(got.array, want.array, err_msg=name)


def test_pool_shape():
    assert pool_shape(2, 0, device="cpu", workers=2) == PoolShape(2, 1, 0)
    assert pool_shape(16, 0, device="cpu") == PoolShape(4, 4, 0)
    assert pool_shape(2, 0, device="auto") == PoolShape(1, 2, 0)
    assert pool_shape(32, 4, device="cuda") == PoolShape(4, 8, 1) and PoolShape(4, 8, 1).device == "cuda"
    assert pool_shape(32, 4, device="cpu", workers=2) == PoolShape(2, 16, 0)
    assert pool_shape(64, 0, device="cpu", workers=2, largest_node_cpus=16) == PoolShape(2, 16, 0)  # each fits on a node
    for kwargs, words in [
        (dict(cpus=8, gpus=0, device="cuda"), "no GPU"),
        (dict(cpus=8, gpus=2, device="cuda", workers=3), "2 GPU"),
        (dict(cpus=2, gpus=0, device="cpu", workers=3), "2 CPU"),
        (dict(cpus=8, gpus=1, device="cuda:1"), "cuda:1"),
    ]:
        with pytest.raises(ConfigError, match=words):
            pool_shape(**kwargs)


def _lock_holder(lock: Path) -> int | None:
    """The pid holding an flock on `lock` (from /proc/locks, where waiters' lines start with '->'), or None."""
    try:
        inode = lock.stat().st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def _with_a_broken_case(inputs: Path, tmp_path: Path) -> Path:
    """A folder of the cases of `inputs` (links) plus ``broken_0000.nii.gz``, which is not a NIfTI file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in inputs.iterdir():
        os.symlink(p, folder / p.name)
    (folder / "broken_0000.nii.gz").write_bytes(b"not a nifti at all")
    return folder


class TestOnePool:
    """Runs on one pool of two 1-thread workers (it holds the cluster's 2 CPUs until the class ends)."""

    @pytest.fixture(scope="class")
    def runner(self, cluster, models):
        with RayRunner(*models, workers=2) as runner:
            yield runner

    def test_ray_run_equals_serial_run_and_skips_finished_cases(self, runner, serial, inputs, tmp_path):
        out = tmp_path / "out"
        batch = runner.predict_folder(inputs, out, progress=True)
        assert batch.ok and sorted(r.case for r in batch.predicted) == list(CASES) and not batch.skipped
        assert len({r.device for r in batch.predicted}) == 1
        _assert_same_outputs(out, serial)

        # finished cases are skipped: a truncated output is redone, the others are left alone
        mtimes = {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in CASES}
        whole = (out / "b.nii.gz").read_bytes()
        (out / "b.nii.gz").write_bytes(whole[: len(whole) // 2])
        again = runner.predict_folder(inputs, out, progress=False)
        assert [r.case for r in again.predicted] == ["b"] and sorted(again.skipped) == ["a", "c", "d"]
        assert all((out / f"{n}.nii.gz").stat().st_mtime_ns == mtimes[n] for n in "acd")
        _assert_same_outputs(out, serial)

    def test_a_worker_killed_mid_case_loses_and_corrupts_nothing(self, runner, serial, inputs, tmp_path):
        out = tmp_path / "out"
        result = {}
        run = threading.Thread(target=lambda: result.update(batch=runner.predict_folder(inputs, out, progress=False)))
        run.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and run.is_alive() and time.monotonic() < deadline:
            for name in ("c", "d"):  # a case that starts after the workers have warmed up
                pid = _lock_holder(out / f".{name}.lock")
                if pid is not None and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed = (name, pid)
                    break
            time.sleep(0.002)
        run.join(120)
        assert killed is not None, "no case was caught in flight"
        batch = result["batch"]
        assert batch.ok, batch.summary()
        assert sorted([r.case for r in batch.predicted] + batch.skipped) == list(CASES)
        _assert_same_outputs(out, serial)
        with pytest.raises(ProcessLookupError):
            os.kill(killed[1], 0)

    def test_a_bad_case_is_reported_by_name_and_the_others_finish(self, runner, serial, inputs, tmp_path):
        folder, out = _with_a_broken_case(inputs, tmp_path), tmp_path / "out"
        batch = runner.predict_folder(folder, out, progress=False)
        assert not batch.ok and list(batch.failed) == ["broken"] and "broken_0000.nii.gz" in batch.failed["broken"]
        assert sorted(r.case for r in batch.predicted) == list(CASES)
        _assert_same_outputs(out, serial)


@pytest.mark.slow  # its own pool: two more workers importing torch (the class above covers the runner)
def test_a_bad_case_is_reported_by_name_and_the_others_finish_exit_2(cluster, models, inputs, serial, tmp_path, capsys):
    folder, out = _with_a_broken_case(inputs, tmp_path), tmp_path / "out"
    code = main(["-q", "predict", "-i", str(folder), "-o", str(out), "--organ-model", str(models[0]), "--tumor-model", str(models[1]), "--ray", "--workers", "2"])
    printed = capsys.readouterr().out
    assert code == 2
    assert "FAILED broken" in printed and "broken_0000.nii.gz" in printed and "4 predicted" in printed
    _assert_same_outputs(out, serial)


def test_model_folder_errors_are_named(models, tmp_path):
    with pytest.raises(ModelFolderError, match="nowhere"):  # before Ray starts
        RayRunner(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    threads = torch.get_num_threads()
    error, module, pid = CaseWorker(str(tmp_path / "empty"), None, InferenceConfig(), "cpu", 1).ready()  # what a worker reports
    torch.set_num_threads(threads)
    assert isinstance(error, ModelFolderError) and "empty" in str(error) and pid == os.getpid()


def test_ray_options_are_refused_where_they_mean_nothing(models, inputs, tmp_path, capsys):
    image = next(inputs.iterdir())
    for argv, words in [
        (["-i", str(image), "-o", str(tmp_path / "x.nii.gz"), "--ray"], "--ray needs a folder"),
        (["-i", str(inputs), "-o", str(tmp_path / "out"), "--workers", "2"], "--workers needs --ray"),
    ]:
        code = main(["-q", "predict", *argv, "--organ-model", str(models[0])])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.nii.gz").exists()
