"""A fake SkyPilot cloud at the SDK boundary: clusters are local folders, jobs local processes.

``FakeSky`` stands in for the ``sky`` module inside ``SkyPilotExecutor`` (its ``sdk``).
It keeps SkyPilot's shape: the real ``sky.Task``/``sky.Resources`` and record types,
calls that return a request id resolved by ``get`` (run on a thread, as the API server
would), ``tail_logs`` that writes the job's log to a stream and returns an exit code.
A cluster is a folder standing for its disk, with its own ``HOME`` (so the setup
cache and ``~/.labfleet/runs`` are per cluster); ``launch`` copies the workdir there
and runs ``setup``; ``exec`` runs ``run`` as a local process with the task's envs and
nothing else from this environment (no secrets can leak through it). ``preempt``
kills a cluster's processes and makes it vanish, as a spot preemption does.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import sky
from sky.schemas.api.responses import ClusterJobRecord, ManagedJobRecord, StatusResponse

VENV_BIN = str(Path(sys.executable).parent)


@dataclass
class FakeJob:
    job_id: int
    name: str
    log: Path
    proc: subprocess.Popen[bytes]
    status: str = "RUNNING"
    envs: dict[str, str] = field(default_factory=dict)

    def refresh(self) -> str:
        if self.status == "RUNNING" and self.proc.poll() is not None:
            self.status = "SUCCEEDED" if self.proc.returncode == 0 else "FAILED"
        return self.status

    def exit_code(self) -> int:
        return {"SUCCEEDED": 0, "CANCELLED": 103, "RUNNING": 101}.get(self.refresh(), 100)


@dataclass
class FakeCluster:
    name: str
    home: Path
    jobs: dict[int, FakeJob] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    status: str = "UP"  # INIT while launching
    autostop_minutes: int | None = None
    down_when_idle: bool = False
    setup_runs: int = 0

    @property
    def workdir(self) -> Path:
        return self.home / "sky_workdir"


def _kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 8.0) -> None:
    """Signal a job's process group, wait for every descendant (SkyPilot kills the tree)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace if sig != signal.SIGKILL else 2.0)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


class FakeManagedJobs:
    """``sky.jobs``: each managed job gets a fresh cluster of its own."""

    def __init__(self, cloud: FakeSky) -> None:
        self.cloud = cloud
        self.ids = itertools.count(1)
        self.jobs: dict[int, FakeJob] = {}

    def launch(self, task: Any, name: str | None = None, **kwargs: Any) -> str:
        def launch() -> tuple[list[int], None]:
            time.sleep(self.cloud.launch_seconds)
            job_id = next(self.ids)
            cluster = self.cloud._new_cluster(f"managed-{job_id}")
            self.jobs[job_id] = self.cloud._spawn(cluster, job_id, name or task.name, task)
            return [job_id], None

        return self.cloud._request("jobs.launch", (name,), launch)

    def queue(self, refresh: bool, skip_finished: bool = False, all_users: bool = False,
              job_ids: list[int] | None = None, **kwargs: Any) -> str:
        def queue() -> list[ManagedJobRecord]:
            return [
                ManagedJobRecord(job_id=j.job_id, job_name=j.name, status=sky.ManagedJobStatus(j.refresh()))
                for j in self.jobs.values() if job_ids is None or j.job_id in job_ids
            ]

        return self.cloud._request("jobs.queue", (), queue)

    def tail_logs(self, name: str | None = None, job_id: int | None = None, follow: bool = True,
                  output_stream: Any = None, **kwargs: Any) -> int:
        job = self.jobs[job_id]  # type: ignore[index]
        (output_stream or sys.stdout).write(job.log.read_text(errors="replace"))
        return job.exit_code()

    def cancel(self, name: str | None = None, job_ids: list[int] | None = None, **kwargs: Any) -> str:
        def cancel() -> None:
            for job_id in job_ids or []:
                job = self.jobs[job_id]
                if job.refresh() == "RUNNING":
                    _kill_tree(job.proc)
                    job.status = "CANCELLED"

        return self.cloud._request("jobs.cancel", tuple(job_ids or ()), cancel)


class FakeSky:
    """The ``sky`` module's client calls over local folders and processes."""

    Task = sky.Task
    Resources = sky.Resources
    JobStatus = sky.JobStatus
    ClusterStatus = sky.ClusterStatus
    exceptions = sky.exceptions

    def __init__(self, root: Path, *, launch_seconds: float = 0.2) -> None:
        self.root = root
        self.launch_seconds = launch_seconds  # "provisioning" time, in the request's thread
        self.clusters: dict[str, FakeCluster] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []  # (call, key arguments), in order
        self.launched_tasks: list[Any] = []
        self.history: list[FakeCluster] = []  # every cluster ever created, gone ones too
        self.exec_tasks: list[Any] = []
        self.jobs = FakeManagedJobs(self)
        self._requests: dict[str, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- requests

    def _request(self, call: str, key: tuple[Any, ...], fn: Any) -> str:
        """Run ``fn`` as the API server would (on its own thread); return the request id."""
        rid = f"req-{next(self._ids)}"
        future: Future[Any] = Future()
        with self._lock:
            self.calls.append((call, key))
            self._requests[rid] = future

        def work() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever calls get()
                future.set_exception(exc)

        threading.Thread(target=work, daemon=True).start()
        return rid

    def get(self, request_id: str) -> Any:
        return self._requests[request_id].result(timeout=120)

    def count(self, call: str, *key: Any) -> int:
        return sum(1 for c, k in self.calls if c == call and k[: len(key)] == key)

    # ----------------------------------------------------------------- clusters

    def _new_cluster(self, name: str) -> FakeCluster:
        home = self.root / name
        shutil.rmtree(home, ignore_errors=True)  # a new cluster has a new disk
        home.mkdir(parents=True)
        cluster = FakeCluster(name, home)
        with self._lock:
            self.clusters[name] = cluster
            self.history.append(cluster)
        return cluster

    def _cluster(self, name: str) -> FakeCluster:
        with self._lock:
            cluster = self.clusters.get(name)
        if cluster is None:
            raise sky.exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        return cluster

    def _up(self, name: str) -> FakeCluster:
        cluster = self._cluster(name)
        if cluster.status != "UP":
            raise sky.exceptions.ClusterNotUpError(f"Cluster {name!r} is not up ({cluster.status}).",
                                                   cluster_status=sky.ClusterStatus(cluster.status))
        return cluster

    def _env(self, cluster: FakeCluster, task: Any) -> dict[str, str]:
        return {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(cluster.home),
                "LANG": "C.UTF-8", **(task.envs or {})}

    def _sync_workdir(self, cluster: FakeCluster, task: Any) -> None:
        cluster.workdir.mkdir(parents=True, exist_ok=True)
        if task.workdir:
            shutil.copytree(task.workdir, cluster.workdir, dirs_exist_ok=True)

    def _spawn(self, cluster: FakeCluster, job_id: int, name: str, task: Any) -> FakeJob:
        self._sync_workdir(cluster, task)
        log = cluster.home / "sky_logs" / f"job-{job_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", task.run], cwd=cluster.workdir, env=self._env(cluster, task),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return FakeJob(job_id, name, log, proc, envs=dict(task.envs or {}))

    def launch(self, task: Any, cluster_name: str | None = None, idle_minutes_to_autostop: int | None = None,
               down: bool = False, **kwargs: Any) -> str:
        assert cluster_name, "labfleet names its clusters"

        with self._lock:  # the API server records the cluster (INIT) as soon as the launch starts
            cluster = self.clusters.get(cluster_name) or self._new_cluster(cluster_name)
            if not cluster.jobs:
                cluster.status = "INIT"

        def launch() -> tuple[int | None, None]:
            time.sleep(self.launch_seconds)
            with self._lock:
                cluster.autostop_minutes, cluster.down_when_idle = idle_minutes_to_autostop, down
                self.launched_tasks.append(task)
            self._sync_workdir(cluster, task)
            if task.setup:
                cluster.setup_runs += 1
                with (cluster.home / "setup.log").open("ab") as log:
                    code = subprocess.run(["/bin/bash", "-c", task.setup], cwd=cluster.workdir, env=self._env(cluster, task),
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT).returncode
                if code != 0:
                    raise RuntimeError(f"setup on {cluster_name} exited with code {code}")
            cluster.status = "UP"
            if task.run:
                return self.exec_now(cluster, task), None
            return None, None

        return self._request("launch", (cluster_name,), launch)

    def exec_now(self, cluster: FakeCluster, task: Any) -> int:
        job_id = next(cluster.ids)
        job = self._spawn(cluster, job_id, task.name or "", task)
        with self._lock:
            cluster.jobs[job_id] = job
            self.exec_tasks.append(task)
        return job_id

    def exec(self, task: Any, cluster_name: str | None = None, **kwargs: Any) -> str:
        return self._request("exec", (cluster_name,), lambda: (self.exec_now(self._up(cluster_name), task), None))

    def queue(self, cluster_name: str, skip_finished: bool = False, all_users: bool = False) -> str:
        def queue() -> list[ClusterJobRecord]:
            cluster = self._up(cluster_name)
            return [
                ClusterJobRecord(job_id=j.job_id, job_name=j.name, username="fake", user_hash="0",
                                 submitted_at=0.0, resources="1x", status=sky.JobStatus(j.refresh()), log_path=str(j.log))
                for j in cluster.jobs.values() if not (skip_finished and j.refresh() != "RUNNING")
            ]

        return self._request("queue", (cluster_name,), queue)

    def job_status(self, cluster_name: str, job_ids: list[int] | None = None) -> str:
        def job_status() -> dict[int, Any]:
            cluster = self._cluster(cluster_name)
            return {i: sky.JobStatus(j.refresh()) for i, j in cluster.jobs.items() if job_ids is None or i in job_ids}

        return self._request("job_status", (cluster_name,), job_status)

    def tail_logs(self, cluster_name: str, job_id: int | None, follow: bool, tail: int = 0,
                  output_stream: Any = None, **kwargs: Any) -> int:
        with self._lock:
            self.calls.append(("tail_logs", (cluster_name, job_id)))
        job = self._cluster(cluster_name).jobs[job_id]  # type: ignore[index]
        (output_stream or sys.stdout).write(job.log.read_text(errors="replace"))
        return job.exit_code()

    def cancel(self, cluster_name: str, all: bool = False, all_users: bool = False,
               job_ids: list[int] | None = None, **kwargs: Any) -> str:
        def cancel() -> None:
            cluster = self._cluster(cluster_name)
            for job_id in job_ids or []:
                job = cluster.jobs.get(job_id)
                if job is not None and job.refresh() == "RUNNING":
                    _kill_tree(job.proc)
                    job.status = "CANCELLED"

        return self._request("cancel", (cluster_name, *(job_ids or ())), cancel)

    def _remove(self, cluster_name: str, sig: int) -> FakeCluster:
        with self._lock:
            cluster = self.clusters.pop(cluster_name, None)
        if cluster is None:
            raise sky.exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
        for job in cluster.jobs.values():
            if job.refresh() == "RUNNING":
                _kill_tree(job.proc, sig)
        return cluster

    def down(self, cluster_name: str, purge: bool = False, **kwargs: Any) -> str:
        return self._request("down", (cluster_name,), lambda: self._remove(cluster_name, signal.SIGKILL) and None)

    def autostop(self, cluster_name: str, idle_minutes: int, down: bool = False, **kwargs: Any) -> str:
        def autostop() -> None:
            cluster = self._cluster(cluster_name)
            cluster.autostop_minutes, cluster.down_when_idle = idle_minutes, down

        return self._request("autostop", (cluster_name,), autostop)

    def status(self, cluster_names: list[str] | None = None, refresh: Any = None, all_users: bool = False,
               **kwargs: Any) -> str:
        def status() -> list[StatusResponse]:
            with self._lock:
                clusters = [c for n, c in self.clusters.items() if cluster_names is None or n in cluster_names]
            return [
                StatusResponse(name=c.name, launched_at=0, status=sky.ClusterStatus(c.status), autostop=-1, to_down=False,
                               cluster_hash="0", cluster_ever_up=True, user_hash="0", user_name="fake",
                               workspace="default", is_managed=False, nodes=1)
                for c in clusters
            ]

        return self._request("status", tuple(cluster_names or ()), status)

    # ----------------------------------------------------------------- test controls

    def preempt(self, cluster_name: str) -> None:
        """The cloud takes the cluster away: its processes die, it no longer exists."""
        with self._lock:
            self.calls.append(("preempt", (cluster_name,)))
        self._remove(cluster_name, signal.SIGKILL)

    def running_jobs(self) -> list[tuple[str, int]]:
        with self._lock:
            clusters = list(self.clusters.values())
        return [(c.name, j.job_id) for c in clusters for j in c.jobs.values() if j.refresh() == "RUNNING"]

    def shutdown(self) -> None:
        """Kill whatever a test left running."""
        with self._lock:
            names = list(self.clusters)
        for name in names:
            try:
                self._remove(name, signal.SIGKILL)
            except sky.exceptions.ClusterDoesNotExist:
                pass
        for job in self.jobs.jobs.values():
            if job.refresh() == "RUNNING":
                _kill_tree(job.proc, signal.SIGKILL)
