"""Devices: cpu, cuda, cuda:N and mps (Apple silicon). MPS cannot run here: its selection is tested,
and tinygpt refuses to pretend (no MPS device: a clear crash, never a CPU run reported as MPS)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labfleet import devices
from labfleet.errors import LabfleetError
from labfleet.executors.base import ExecutorError, Job
from labfleet.executors.local import LocalExecutor
from labfleet.harness import Outcome, RunRequest
from labfleet.scaffold import bundled_path
from tests.conftest import run_cli


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_a_run_can_get(name):
    assert devices.check_device(name) == name


@pytest.mark.parametrize("name", ["gpu", "mps:0", "cuda:", "CUDA", "metal", ""])
def test_unknown_device_names_are_one_line_errors(name):
    with pytest.raises(LabfleetError, match=r"^--device .*: use cpu, cuda, cuda:N or mps$"):
        devices.check_device(name)


def test_local_devices_one_per_worker():
    assert devices.local_devices("cpu", 3) is None
    assert devices.local_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert devices.local_devices("mps", 1) == ["mps"]
    with pytest.raises(LabfleetError, match="one MPS device, so one worker"):
        devices.local_devices("mps", 2)
    with pytest.raises(LabfleetError, match="use cpu, cuda or mps"):
        devices.local_devices("tpu", 1)


def test_an_mps_worker_is_its_own_hardware_class():
    (worker,) = LocalExecutor(1, devices=["mps"]).workers()
    assert (worker.device, worker.hardware) == ("mps", "mps")
    gpus = LocalExecutor(2, devices=["cuda:0", "cuda:1"]).workers()
    assert [(w.device, w.hardware) for w in gpus] == [("cuda:0", "gpu"), ("cuda:1", "gpu")]
    with pytest.raises(ExecutorError, match="each worker needs its own device"):
        LocalExecutor(2, devices=["mps", "mps"])


def test_detect_prefers_cuda_then_mps():
    # here: torch on CPU, no accelerator
    assert devices.detect() == "cpu"


def test_the_harness_passes_mps_to_the_run(target_factory, tmp_path):
    folder = target_factory()
    executor = LocalExecutor(1, devices=["mps"])
    (worker,) = executor.workers()
    request = RunRequest(folder, tmp_path / "run", device=worker.device)
    executor.start(Job(1, worker.id, request))
    from labfleet.executors.conformance import _wait

    (finished,) = _wait(executor, 1, timeout=60)
    assert finished.result is not None and finished.result.outcome == Outcome.OK
    assert finished.result.device == "mps" and finished.result.figures["device"] == "mps"


def test_cli_accepts_device_mps(target_factory, tmp_path):
    folder = target_factory()
    proc = run_cli("baseline", "-C", str(folder), "--device", "mps", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["device"] == "mps" and result["figures"]["device"] == "mps"
    bad = run_cli("baseline", "-C", str(folder), "--device", "metal")
    assert bad.returncode != 0 and "--device 'metal': use cpu, cuda, cuda:N, mps or auto" in bad.stderr
    two = run_cli("run", "-C", str(folder), "--device", "mps", "--workers", "2", "--max-experiments", "1")
    assert two.returncode != 0 and "one MPS device, so one worker (got --workers 2)" in two.stderr


def test_tinygpt_on_mps_without_mps_is_a_clear_crash_not_a_cpu_run(tmp_path, tinygpt_cache):
    pytest.importorskip("torch")
    folder = tmp_path / "tinygpt"
    shutil.copytree(bundled_path("tinygpt"), folder)
    env = {**os.environ, "LABFLEET_DEVICE": "mps", "LABFLEET_CACHE_DIR": str(tmp_path / "empty"),
           "LABFLEET_BUDGET_SECONDS": "1"}
    proc = subprocess.run([sys.executable, "train.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "LABFLEET_DEVICE=mps but torch sees no MPS device" in proc.stderr
    assert "val_bpb" not in proc.stdout
    assert not Path(tmp_path / "empty" / "train.bin").exists()  # it stopped before touching data
