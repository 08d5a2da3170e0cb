"""The local executor: N process slots on this machine.

Each run is a child process ``python -m labfleet.harness request.json`` in its own
session (process group), so it outlives a killed orchestrator and finishes its run;
the harness writes ``result.json`` before exiting, and a resumed orchestrator
``adopt``s the run by its pid and collects that file.

CPU slots get their own thread count; with ``devices`` (e.g. ["cuda:0", "cuda:1"], or
["mps"] on Apple silicon: ``devices.local_devices``) each slot gets one device instead.
Each slot is pinned to its own CPUs (``threads`` of them, wrapping around when slots
outnumber cores) and, with ``memory_mb``, gets an address-space limit; the harness
applies both (``sandbox``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from labfleet.executors.base import Executor, ExecutorError, Finished, Job, Worker
from labfleet.harness import KILL_GRACE_SECONDS, read_result
from labfleet.sandbox import slot_cpus

REQUEST_FILE = "request.json"
HARNESS_LOG = "harness.log"


@dataclass
class _Slot:
    job: Job
    pid: int
    proc: subprocess.Popen[bytes] | None  # None for an adopted run (not our child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent can reap it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _is_harness(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is still our harness for ``run_dir`` (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        cmdline = ""
    if not cmdline:  # no /proc, or a process between fork and exec: trust the pid
        return _pid_alive(pid)
    return "labfleet.harness" in cmdline and str(run_dir) in cmdline


def _hardware_of(device: str) -> str:
    """The default hardware class of a device: gpu for CUDA, mps for Apple silicon."""
    return "mps" if device == "mps" else "gpu"


class LocalExecutor(Executor):
    name = "local"

    def __init__(
        self, workers: int | list[Worker] = 1, *, threads: int = 1, devices: list[str] | None = None,
        hardware: str | None = None, price_per_hour: float = 0.0, memory_mb: int | None = None,
    ) -> None:
        self._slots: dict[int, _Slot] = {}  # run id -> slot
        self._memory_mb = memory_mb  # per slot; None: no limit
        self._lost: list[Finished] = []  # cancelled/failed starts waiting for poll
        if isinstance(workers, list):  # a mixed fleet: slots of several classes on one machine
            if not workers or len({w.id for w in workers}) != len(workers):
                raise ExecutorError("a local fleet needs at least one worker, with unique ids")
            self._workers = list(workers)
            return
        if workers < 1:
            raise ExecutorError("--workers must be at least 1")
        if devices and len(devices) < workers:
            raise ExecutorError(f"{workers} workers need {workers} devices, got {len(devices)}")
        if devices and len(set(devices[:workers])) < workers:
            raise ExecutorError(f"each worker needs its own device, got {', '.join(devices[:workers])}")
        self._workers = [
            Worker(
                id=f"local-{i}",
                hardware=hardware or (_hardware_of(devices[i]) if devices else "cpu"),
                device=devices[i] if devices else "cpu",
                threads=threads,
                price_per_hour=price_per_hour,
            )
            for i in range(workers)
        ]

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def _busy(self, worker_id: str) -> bool:
        return any(s.job.worker_id == worker_id for s in self._slots.values())

    def start(self, job: Job) -> str:
        if job.worker_id not in {w.id for w in self._workers}:
            raise ExecutorError(f"unknown worker {job.worker_id!r}")
        if self._busy(job.worker_id):
            raise ExecutorError(f"worker {job.worker_id} is busy")
        run_dir = job.request.run_dir
        index = [w.id for w in self._workers].index(job.worker_id)
        threads = job.request.threads
        cpus = job.request.cpus or (list(c) if (c := slot_cpus(index, threads)) else None)
        request = replace(job.request, cpus=cpus, memory_mb=job.request.memory_mb or self._memory_mb)
        # The harness wants a fresh run dir; the request and its own log sit beside it.
        meta = run_dir.parent / f"{run_dir.name}.{REQUEST_FILE}"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(request.to_json()))
        with open(run_dir.parent / f"{run_dir.name}.{HARNESS_LOG}", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "labfleet.harness", str(meta)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # survives the orchestrator; killed as a group
            )
        self._slots[job.run_id] = _Slot(job, proc.pid, proc)
        return str(proc.pid)

    def adopt(self, job: Job, handle: str) -> None:
        # A pid that is no longer our harness counts as gone: poll then collects the
        # result it left, or reports the run lost.
        pid = int(handle) if handle.isdigit() else -1
        alive = pid > 0 and _is_harness(pid, job.request.run_dir)
        self._slots[job.run_id] = _Slot(job, pid if alive else -1, None)

    def poll(self) -> list[Finished]:
        done, self._lost = self._lost, []
        for run_id, slot in list(self._slots.items()):
            if slot.proc is not None:
                if slot.proc.poll() is None:
                    continue
            elif slot.pid > 0 and _pid_alive(slot.pid):
                continue
            del self._slots[run_id]
            result = read_result(slot.job.request.run_dir)
            if result is None:
                code = slot.proc.returncode if slot.proc is not None else None
                why = f"harness exited with code {code} without a result" if code is not None else "harness process gone without a result"
                done.append(Finished(run_id, slot.job.worker_id, None, why))
            else:
                done.append(Finished(run_id, slot.job.worker_id, result))
        return done

    def cancel(self, run_id: int) -> None:
        slot = self._slots.pop(run_id, None)
        if slot is None:
            return
        _stop_harness(slot)
        self._lost.append(Finished(run_id, slot.job.worker_id, None, "cancelled"))

    def running(self) -> list[int]:
        return list(self._slots)

    def close(self) -> None:
        for run_id in list(self._slots):
            self.cancel(run_id)
        self._lost.clear()


def _stop_harness(slot: _Slot) -> None:
    """SIGTERM the harness (it kills its training run's group), then SIGKILL if it lingers."""
    if slot.pid <= 0:
        return
    try:
        os.kill(slot.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_SECONDS + 2
    while time.monotonic() < deadline:
        if slot.proc is not None and slot.proc.poll() is not None:
            return
        if slot.proc is None and not _pid_alive(slot.pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(slot.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if slot.proc is not None:
        slot.proc.wait()
