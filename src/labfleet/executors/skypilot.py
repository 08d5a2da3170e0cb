"""The SkyPilot executor: a pool of clusters, setup once per cluster, experiments through the job queue.

Every worker slot of the ``Fleet`` is one SkyPilot cluster (``labfleet-h100-0``, ...).
The first job on a slot launches its cluster with a *setup task* (install labfleet,
``labfleet prepare`` the target once); every experiment is then a task ``sky.exec``-ed
onto that cluster, whose ``run`` is the harness::

    mv <run name> ~/.labfleet/runs/ && cd there && git init the snapshot
    python -m labfleet.harness request.json          # writes run/run.log, run/result.json
    print run.log and result.json between marker lines (the job's log carries them home)

The experiment's files travel as the task's ``workdir``: a temp folder on the
orchestrator with ``request.json`` and ``target/`` (the target at the experiment's
commit, ``git archive``-d). When the cluster's job ends, ``sky.tail_logs`` fetches its
log; the run's ``run.log`` and ``result.json`` are cut out of it into the local run
directory, where the session (and ``adopt``) expects them. A pool with
``managed = true`` runs each experiment as a managed job instead (``sky.jobs.launch``:
SkyPilot recovers spot preemptions itself).

Why a thread per run: the SDK is asynchronous (calls return a RequestId resolved by
``sky.get``, which blocks until the API server finishes it: minutes for a launch).
``start`` returns at once; each run's thread walks launch -> exec -> watch the queue ->
collect, and ``poll`` only harvests what the threads finished. Every SkyPilot call goes
through one object, ``sdk`` (the ``sky`` module by default), so tests can put a fake
cloud at that boundary and keep the real ``sky.Task``/``sky.Resources``.

Handles are ``"<cluster>:<job name>"``: ``start`` must return before the cluster (and
so the job id) exists, and the name is unique per run; ``adopt`` finds the job by name
(or by a numeric id) in ``sky.queue``. A cluster that is gone or stopped while a run is
on it (preempted, torn down) makes the run lost: the session retries it elsewhere.
Idle clusters stop themselves (``idle_minutes_to_autostop`` with ``down=True`` at
launch), ``poll`` also takes down a slot idle past its pool's ``idle_minutes``, and
``close`` takes down every cluster it used unless ``teardown_on_close=False``.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labfleet import workspace
from labfleet.executors.base import Executor, ExecutorError, Finished, Job, Worker
from labfleet.fleet import Fleet, Pool, cluster_name
from labfleet.harness import LOG_FILE, RESULT_FILE, RunRequest, RunResult, read_result
from labfleet.target import CONFIG_FILE, parse_config

INSTALL_HINT = "SkyPilot is not installed: pip install 'labfleet[skypilot]'"
REMOTE_RUNS = "~/.labfleet/runs"  # where runs live on a cluster (outside the synced workdir)
JOB_LOG = "job.log"  # the whole SkyPilot job log, kept beside run.log in the run dir
CLUSTER_TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED"}
MANAGED_TERMINAL = {
    "SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
    "FAILED_CONTROLLER",
}
QUEUE_ERRORS_BEFORE_LOST = 3  # failed queue calls in a row on a cluster that still looks up


class _Lost(Exception):
    """A run the infrastructure lost; the message is the reason the session records."""


def import_sky() -> Any:
    """The real SDK, imported only when a SkyPilot fleet is used (it is slow and optional)."""
    try:
        import sky
    except ImportError:
        raise ExecutorError(INSTALL_HINT) from None
    return sky


def _field(record: Any, name: str) -> Any:
    """A field of an SDK record (pydantic models that also act like dicts, or plain dicts)."""
    if isinstance(record, dict):
        return record.get(name)
    return getattr(record, name, None)


def _status_name(status: Any) -> str:
    """"SUCCEEDED" from ``JobStatus.SUCCEEDED``, its value, or a string."""
    return str(getattr(status, "value", status) or "").upper()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------- the tasks


def resources_for(sky: Any, pool: Pool) -> Any:
    """The pool's ``sky.Resources``: accelerators, infra, spot."""
    return sky.Resources(accelerators=pool.accelerators, infra=pool.infra, use_spot=pool.use_spot)


def install_command(labfleet_spec: str | None) -> str:
    """Install labfleet on the cluster (skipped when the image already has it: spec None)."""
    if not labfleet_spec:
        return "python -c 'import labfleet' "
    return f"python -m pip install --quiet {shlex.quote(labfleet_spec)}"


def _git_snapshot(folder: str, message: str) -> str:
    """Shell: make an exported tree a one-commit git repo (the harness runs commits)."""
    git = f"git -C {folder} -c user.name=labfleet -c user.email=labfleet@localhost"
    return f"{git} init -q && {git} add -A && {git} commit -q --no-verify -m {shlex.quote(message)}"


def setup_script(labfleet_spec: str | None, bundle: str) -> str:
    """Once per cluster: install labfleet, then the target's own setup (cached on the cluster)."""
    return "\n".join([
        "set -e",
        install_command(labfleet_spec),
        _git_snapshot(f"{bundle}/target", "labfleet setup snapshot"),
        f"python -m labfleet prepare -C {bundle}/target",
    ])


def run_script(name: str, nonce: str, *, labfleet_spec: str | None = None, install: bool = False) -> str:
    """One experiment on the cluster: the harness, then its log and result between markers."""
    remote = f"{REMOTE_RUNS}/{name}".replace("~", "$HOME", 1)
    lines = ["set -u"]
    if install:  # managed jobs get a fresh cluster: no setup task ran there
        lines.append(install_command(labfleet_spec) + " || exit 1")
    lines += [
        f'mkdir -p "{REMOTE_RUNS.replace("~", "$HOME", 1)}" && rm -rf "{remote}" && mv {name} "{remote}" && cd "{remote}" || exit 1',
        _git_snapshot("target", name) + " || exit 1",
        "python -m labfleet.harness request.json > harness.out 2> harness.err",
        "code=$?",
        f"echo {nonce}:log-begin",
        f"cat {shlex.quote(f'run/{LOG_FILE}')} 2>/dev/null",
        f"echo; echo {nonce}:log-end",
        "tail -n 5 harness.err",
        # one line of JSON: nothing (a SkyPilot line prefix, say) can split it
        f"python -c 'import json,sys; print(\"{nonce}:result\", json.dumps(json.load(open(sys.argv[1]))))' "
        f"{shlex.quote(f'run/{RESULT_FILE}')} 2>/dev/null",
        "exit $code",
    ]
    return "\n".join(lines)


def parse_job_log(text: str, nonce: str) -> tuple[str | None, dict[str, Any] | None]:
    """The run's log and result.json from a job's log (the last result line wins)."""
    lines = text.splitlines()
    result: dict[str, Any] | None = None
    for line in lines:
        pos = line.find(f"{nonce}:result ")
        if pos >= 0:
            try:
                result = json.loads(line[pos + len(nonce) + 8:])
            except ValueError:
                pass
    begins = [i for i, line in enumerate(lines) if line.rstrip().endswith(f"{nonce}:log-begin")]
    ends = [i for i, line in enumerate(lines) if line.rstrip().endswith(f"{nonce}:log-end")]
    log = None
    if begins and ends and ends[-1] > begins[-1]:
        start = begins[-1]
        prefix = lines[start][: lines[start].rfind(f"{nonce}:log-begin")]  # e.g. "(task, pid=12) "
        body = [ln[len(prefix):] if prefix and ln.startswith(prefix) else ln for ln in lines[start + 1: ends[-1]]]
        if body and body[-1] == "":
            body.pop()  # the echo that ends a log without a final newline
        log = "\n".join(body) + ("\n" if body else "")
    return log, result


@dataclass
class Bundle:
    """A temp folder on the orchestrator that becomes a task's workdir."""

    root: Path  # the workdir
    name: str  # the one folder inside it: <name>/request.json, <name>/target/

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def export_bundle(job: Job, name: str, *, with_request: bool = True) -> tuple[Bundle, float]:
    """The target at the job's commit plus a cluster-side request; (bundle, budget seconds)."""
    request = job.request
    root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    inner = root / name
    commit = workspace.resolve(request.target_dir, request.commit)
    workspace.export_tree(request.target_dir, commit, inner / "target")
    spec = parse_config((inner / "target" / CONFIG_FILE).read_text()).target
    budget = request.budget_seconds or spec.budget_seconds
    if with_request:
        # paths relative to the run's folder on the cluster; the cluster's own setup cache
        remote = RunRequest(
            target_dir=Path("target"), run_dir=Path("run"), commit="HEAD", patch=request.patch,
            seed=request.seed, budget_seconds=request.budget_seconds, device=request.device,
            threads=request.threads, cache_root=None, frozen_hashes=request.frozen_hashes,
        )
        (inner / "request.json").write_text(json.dumps(remote.to_json(), indent=2))
    return Bundle(root, name), budget


def experiment_envs(job: Job, budget: float) -> dict[str, str]:
    """What the run is (for the cluster's logs and the target); never a secret."""
    request = job.request
    return {
        "LABFLEET_RUN_ID": str(job.run_id),
        "LABFLEET_WORKER": job.worker_id,
        "LABFLEET_SEED": str(request.seed),
        "LABFLEET_BUDGET_SECONDS": f"{budget:g}",
        "LABFLEET_DEVICE": request.device,
        "LABFLEET_THREADS": str(request.threads),
    }


# --------------------------------------------------------------------------- the executor


@dataclass
class _Slot:
    """One worker = one cluster."""

    worker: Worker
    pool: Pool
    cluster: str
    up: bool = False  # known to exist with labfleet set up (launched or found UP)
    used: bool = False  # launched or adopted by this executor: taken down by close()
    run_id: int | None = None
    idle_since: float = 0.0


@dataclass
class _Run:
    job: Job
    slot: _Slot
    name: str  # the SkyPilot job name, unique per run
    handle: str
    nonce: str = ""
    job_id: int | None = None
    adopted: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: Finished | None = None
    reported: bool = False


class SkyPilotExecutor(Executor):
    name = "skypilot"

    def __init__(
        self, fleet: Fleet, *, sdk: Any = None, cluster_prefix: str = "labfleet",
        labfleet_spec: str | None = "labfleet", teardown_on_close: bool = True,
        poll_seconds: float = 5.0, adopt_grace_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self._sdk = sdk
        self.cluster_prefix = cluster_prefix
        self.labfleet_spec = labfleet_spec
        self.teardown_on_close = teardown_on_close
        self.poll_seconds = poll_seconds  # how often a run's thread asks the cluster's queue
        self.adopt_grace_seconds = adopt_grace_seconds  # how long an adopted run's job may take to appear
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._slots = {
            w.id: _Slot(w, fleet.pool_of(w.id), cluster_name(cluster_prefix, w.id), idle_since=clock())
            for w in fleet.workers()
        }
        self._runs: dict[int, _Run] = {}
        self._launching: dict[str, threading.Lock] = {c.cluster: threading.Lock() for c in self._slots.values()}
        self._closed = False

    # ----------------------------------------------------------------- the SDK boundary

    @property
    def sky(self) -> Any:
        if self._sdk is None:
            self._sdk = import_sky()
        return self._sdk

    def setup_task(self, job: Job, bundle: Bundle) -> Any:
        """The task ``sky.launch`` runs once per cluster: install labfleet, prepare the target."""
        sky, pool = self.sky, self._slots[job.worker_id].pool
        task = sky.Task(name=f"{self.cluster_prefix}-setup", setup=setup_script(self.labfleet_spec, bundle.name),
                        workdir=str(bundle.root))
        task.set_resources(resources_for(sky, pool))
        return task

    def experiment_task(self, job: Job, bundle: Bundle, budget: float, nonce: str, *, managed: bool = False) -> Any:
        """The task of one experiment: the harness on the cluster, its files as the workdir."""
        sky, pool = self.sky, self._slots[job.worker_id].pool
        run = run_script(bundle.name, nonce, labfleet_spec=self.labfleet_spec, install=managed)
        task = sky.Task(name=bundle.name, run=run, envs=experiment_envs(job, budget), workdir=str(bundle.root))
        task.set_resources(resources_for(sky, pool))
        return task

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An SDK call resolved: ``sky.get`` of the RequestId it returns (this thread waits)."""
        return self.sky.get(fn(*args, **kwargs))

    def _cluster_status(self, cluster: str) -> str | None:
        """"UP", "STOPPED", "INIT", ... or None when the cluster does not exist."""
        records = self._call(self.sky.status, [cluster])
        for record in records or []:
            if _field(record, "name") == cluster:
                return _status_name(_field(record, "status"))
        return None

    # ----------------------------------------------------------------- contract

    def workers(self) -> list[Worker]:
        return [s.worker for s in self._slots.values()]

    def _slot(self, worker_id: str) -> _Slot:
        slot = self._slots.get(worker_id)
        if slot is None:
            raise ExecutorError(f"unknown worker {worker_id!r}")
        return slot

    def _new_run(self, job: Job, slot: _Slot, name: str, handle: str) -> _Run:
        with self._lock:
            if slot.run_id is not None:
                raise ExecutorError(f"worker {job.worker_id} is busy")
            run = _Run(job, slot, name, handle)
            slot.run_id = job.run_id
            self._runs[job.run_id] = run
        return run

    def start(self, job: Job) -> str:
        slot = self._slot(job.worker_id)
        self.sky  # noqa: B018 - a missing SkyPilot is reported here, not lost in a thread
        name = f"{self.cluster_prefix}-r{job.run_id}-{secrets.token_hex(3)}"
        prefix = "jobs" if slot.pool.managed else slot.cluster
        run = self._new_run(job, slot, name, f"{prefix}:{name}")
        run.nonce = f"LABFLEET-{secrets.token_hex(8)}"
        self._spawn(run)
        return run.handle

    def adopt(self, job: Job, handle: str) -> None:
        slot = self._slot(job.worker_id)
        where, _, name = handle.partition(":")
        run = self._new_run(job, slot, name, handle)
        run.adopted = True
        if read_result(job.request.run_dir) is not None:  # collected before the restart
            self._finish(run, Finished(job.run_id, job.worker_id, read_result(job.request.run_dir)))
            return
        expected = "jobs" if slot.pool.managed else slot.cluster
        if not name or where != expected:
            self._finish(run, Finished(job.run_id, job.worker_id, None, f"handle {handle!r} is not {expected}:<job>"))
            return
        self._spawn(run)

    def poll(self) -> list[Finished]:
        done: list[Finished] = []
        with self._lock:
            for run_id, run in list(self._runs.items()):
                if run.finished is not None and not run.reported:
                    run.reported = True
                    done.append(run.finished)
                    del self._runs[run_id]
        self._down_idle_clusters()
        return done

    def cancel(self, run_id: int) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.finished is not None:
                return
            run.cancelled.set()
            self._changed.notify_all()
            if run.job_id is None:  # nothing on a cluster yet: the thread drops it when it can
                self._finish_locked(run, Finished(run_id, run.job.worker_id, None, "cancelled"))

    def running(self) -> list[int]:
        with self._lock:
            return [rid for rid, run in self._runs.items() if not run.reported and not run.cancelled.is_set()]

    def wait(self, seconds: float) -> None:
        with self._changed:
            if not any(r.finished is not None and not r.reported for r in self._runs.values()):
                self._changed.wait(seconds)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            runs = [r for r in self._runs.values() if r.finished is None]
        for run in runs:
            self.cancel(run.job.run_id)
        deadline = time.monotonic() + 30
        for run in runs:  # the threads cancel the jobs on the clusters
            while run.job_id is not None and run.finished is None and time.monotonic() < deadline:
                with self._changed:
                    self._changed.wait(0.1)
        if self.teardown_on_close:
            self._down([s for s in self._slots.values() if s.used])
        with self._lock:
            self._runs.clear()

    # ----------------------------------------------------------------- idle teardown

    def _down_idle_clusters(self) -> None:
        """Take down slots idle past their pool's idle_minutes (autostop does it too, server-side)."""
        now = self._clock()
        idle = []
        with self._lock:
            for slot in self._slots.values():
                if slot.used and slot.up and slot.run_id is None and now - slot.idle_since >= slot.pool.idle_minutes * 60:
                    slot.up = False
                    idle.append(slot)
        if idle:
            self._down(idle, wait=False)

    def _down(self, slots: list[_Slot], wait: bool = True) -> None:
        """``sky.down`` each cluster; waits (bounded) for the requests when closing."""
        threads = []
        for slot in slots:
            slot.up = False
            thread = threading.Thread(target=self._down_one, args=(slot.cluster,), daemon=True)
            thread.start()
            threads.append(thread)
        if wait:
            deadline = time.monotonic() + 120
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _down_one(self, cluster: str) -> None:
        try:
            self._call(self.sky.down, cluster)
        except Exception:  # gone already, or the server will finish it: nothing to recover
            pass

    # ----------------------------------------------------------------- a run's thread

    def _spawn(self, run: _Run) -> None:
        threading.Thread(target=self._drive, args=(run,), name=f"skypilot-{run.name}", daemon=True).start()

    def _finish_locked(self, run: _Run, finished: Finished) -> None:
        if run.finished is None:
            run.finished = finished
        if run.slot.run_id == run.job.run_id:
            run.slot.run_id = None
            run.slot.idle_since = self._clock()
        self._changed.notify_all()

    def _finish(self, run: _Run, finished: Finished) -> None:
        with self._lock:
            self._finish_locked(run, finished)

    def _drive(self, run: _Run) -> None:
        job = run.job
        try:
            if run.slot.pool.managed:
                result = self._drive_managed(run)
            else:
                result = self._drive_cluster(run)
            finished = Finished(job.run_id, job.worker_id, result)
        except _Lost as lost:
            finished = Finished(job.run_id, job.worker_id, None, str(lost))
        except Exception as exc:  # an SDK or server error: the run is lost, the session retries it
            finished = Finished(job.run_id, job.worker_id, None, f"skypilot: {_one_line(exc)}")
        self._finish(run, finished)

    def _sleep(self, run: _Run) -> None:
        """Wait for the next look at the queue; a cancel wakes it."""
        run.cancelled.wait(self.poll_seconds)

    def _ensure_cluster(self, run: _Run) -> None:
        """Launch the slot's cluster with the setup task unless it is known (or found) to be up."""
        slot = run.slot
        with self._launching[slot.cluster]:
            if slot.up:
                return
            if self._cluster_status(slot.cluster) != "UP":
                bundle, _ = export_bundle(run.job, f"{self.cluster_prefix}-setup-{secrets.token_hex(3)}", with_request=False)
                try:
                    self._call(
                        self.sky.launch, self.setup_task(run.job, bundle), cluster_name=slot.cluster,
                        idle_minutes_to_autostop=slot.pool.idle_minutes, down=True,
                    )
                except Exception as exc:
                    raise _Lost(f"launching cluster {slot.cluster} failed: {_one_line(exc)}") from None
                finally:
                    bundle.cleanup()
            slot.up = slot.used = True

    def _drive_cluster(self, run: _Run) -> RunResult | None:
        slot, job = run.slot, run.job
        if run.adopted:
            slot.used = True
            run.job_id = self._find_job(run)
        else:
            self._ensure_cluster(run)
            if run.cancelled.is_set():
                raise _Lost("cancelled")
            bundle, budget = export_bundle(job, run.name)
            try:
                task = self.experiment_task(job, bundle, budget, run.nonce)
                try:
                    job_id, _ = self._call(self.sky.exec, task, cluster_name=slot.cluster)
                except Exception as exc:
                    slot.up = False  # autostopped or preempted while idle: launch it again, once
                    if self._cluster_status(slot.cluster) == "UP":
                        raise _Lost(f"exec on {slot.cluster} failed: {_one_line(exc)}") from None
                    self._ensure_cluster(run)
                    job_id, _ = self._call(self.sky.exec, task, cluster_name=slot.cluster)
            finally:
                bundle.cleanup()
            with self._lock:  # a cancel() from now on leaves the report to this thread
                run.job_id = int(job_id)
            if run.cancelled.is_set():  # cancelled while exec was in flight: already reported
                self._cancel_remote(run)
                raise _Lost("cancelled")
        status = self._watch(run)
        return self._collect(run, status)

    def _queue(self, run: _Run) -> list[Any]:
        """The cluster's job table; a cluster that is gone or stopped makes the run lost."""
        cluster = run.slot.cluster
        errors = 0
        while True:
            try:
                return list(self._call(self.sky.queue, cluster, all_users=True) or [])
            except Exception as exc:
                state = self._safe_status(cluster)
                if state is None or state == "STOPPED":
                    run.slot.up = False
                    what = "is gone" if state is None else "stopped"
                    raise _Lost(f"cluster {cluster} {what} (preempted or torn down)") from None
                errors += 1
                if errors >= QUEUE_ERRORS_BEFORE_LOST:
                    raise _Lost(f"cannot read the job queue of {cluster}: {_one_line(exc)}") from None
                self._sleep(run)

    def _safe_status(self, cluster: str) -> str | None:
        try:
            return self._cluster_status(cluster)
        except Exception:
            return "UNKNOWN"

    def _find_job(self, run: _Run) -> int:
        """The job id of an adopted run: its handle's name (or id) in the cluster's queue.

        The dead orchestrator's launch or exec may still be under way on the API server,
        so a cluster that is not up yet, or a job not queued yet, is waited for up to
        ``adopt_grace_seconds`` before the run counts as lost.
        """
        key, cluster = run.name, run.slot.cluster
        deadline = time.monotonic() + self.adopt_grace_seconds
        while True:
            state = self._safe_status(cluster)
            if state == "UP":
                for record in self._queue(run):
                    if _field(record, "job_name") == key or str(_field(record, "job_id")) == key:
                        run.slot.up = True
                        return int(_field(record, "job_id"))
            if run.cancelled.is_set():
                raise _Lost("cancelled")
            if time.monotonic() >= deadline:
                where = f"cluster {cluster} is {'gone' if state is None else state}" if state != "UP" else (
                    f"it is not in the queue of {cluster}")
                raise _Lost(f"cannot adopt job {key}: {where}")
            self._sleep(run)

    def _watch(self, run: _Run) -> str:
        """Wait (in this thread) until the job ends; its final status."""
        while True:
            if run.cancelled.is_set():
                self._cancel_remote(run)
                raise _Lost("cancelled")
            record = next((r for r in self._queue(run) if _field(r, "job_id") == run.job_id), None)
            if record is None:
                raise _Lost(f"job {run.job_id} vanished from the queue of {run.slot.cluster}")
            status = _status_name(_field(record, "status"))
            if status in CLUSTER_TERMINAL:
                return status
            self._sleep(run)

    def _cancel_remote(self, run: _Run) -> None:
        try:
            if run.slot.pool.managed:
                self._call(self.sky.jobs.cancel, job_ids=[run.job_id])
            else:
                self._call(self.sky.cancel, run.slot.cluster, job_ids=[run.job_id])
        except Exception:  # the cluster is gone: so is the job
            pass

    def _collect(self, run: _Run, status: str, managed: bool = False) -> RunResult | None:
        """Fetch the job's log, cut out run.log and result.json into the local run dir."""
        buffer = io.StringIO()
        try:
            if managed:
                self.sky.jobs.tail_logs(job_id=run.job_id, follow=False, output_stream=buffer)
            else:
                self.sky.tail_logs(run.slot.cluster, run.job_id, False, output_stream=buffer)
        except Exception as exc:
            raise _Lost(f"cannot fetch the log of job {run.job_id}: {_one_line(exc)}") from None
        text = buffer.getvalue()
        run_dir = run.job.request.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / JOB_LOG).write_text(text)
        log, data = parse_job_log(text, run.nonce) if run.nonce else _parse_any(text)
        (run_dir / LOG_FILE).write_text(log if log is not None else text)
        if status == "CANCELLED":
            raise _Lost("cancelled")
        if data is None:
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
            raise _Lost(f"job {run.job_id} ended {status} without a result" + (f": {last[:200]}" if last else ""))
        result = RunResult.from_json(data)
        request = run.job.request
        # the cluster ran an identical tree under its own commit id: record ours
        commit = result.commit if request.patch else workspace.resolve(request.target_dir, request.commit)
        result = replace(result, commit=commit, log_path=str(run_dir / LOG_FILE))
        tmp = run_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(run_dir / RESULT_FILE)
        return result

    # ----------------------------------------------------------------- managed jobs

    def _drive_managed(self, run: _Run) -> RunResult | None:
        job = run.job
        if run.adopted:
            run.job_id = self._find_managed_job(run)
        else:
            bundle, budget = export_bundle(job, run.name)
            try:
                task = self.experiment_task(job, bundle, budget, run.nonce, managed=True)
                job_ids, _ = self._call(self.sky.jobs.launch, task, name=run.name)
            except Exception as exc:
                raise _Lost(f"managed job launch failed: {_one_line(exc)}") from None
            finally:
                bundle.cleanup()
            with self._lock:
                run.job_id = int(job_ids[0] if isinstance(job_ids, list | tuple) else job_ids)
                run.slot.used = True
        while True:
            if run.cancelled.is_set():
                self._cancel_remote(run)
                raise _Lost("cancelled")
            records = self._call(self.sky.jobs.queue, refresh=False, job_ids=[run.job_id]) or []
            record = next((r for r in records if _field(r, "job_id") == run.job_id), None)
            if record is None:
                raise _Lost(f"managed job {run.job_id} vanished")
            status = _status_name(_field(record, "status"))
            if status in MANAGED_TERMINAL:
                return self._collect(run, status, managed=True)
            self._sleep(run)

    def _find_managed_job(self, run: _Run) -> int:
        for record in self._call(self.sky.jobs.queue, refresh=False) or []:
            if _field(record, "job_name") == run.name or str(_field(record, "job_id")) == run.name:
                return int(_field(record, "job_id"))
        raise _Lost(f"managed job {run.name} is not in the jobs queue")


def _parse_any(text: str) -> tuple[str | None, dict[str, Any] | None]:
    """For an adopted run the marker's nonce is unknown: find it in the log itself."""
    match = re.findall(r"(LABFLEET-[0-9a-f]{16}):result ", text)
    if not match:
        return None, None
    return parse_job_log(text, match[-1])
