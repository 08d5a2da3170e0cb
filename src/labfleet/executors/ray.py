"""The Ray executor: each run is a Ray task pinned to one node and one hardware class.

Slots come from the cluster at construction: every unit of a hardware-class custom
resource on an alive node (``ray start --resources='{"H100": 8}'``: eight H100
slots) is one worker; a node with GPUs but no class resource gives one slot per GPU
(labelled by Ray's ``accelerator_type:X`` resource, else "gpu"); a CPU-only node
gives ``floor(CPUs / threads)`` "cpu" slots. Ids are ``ray-<node>-<class>-<i>``,
where ``<node>`` is the node's IP (plus a short node id when several nodes share one
IP), so they stay the same across orchestrator restarts.

No shared file system is assumed. ``start`` packs the version (``git archive`` of
the commit, gzipped: targets are small) with the request and submits a task with
``max_retries=0``, pinned by node affinity and the class resource. On the node the
task unpacks the tree once per commit into a git repo under the node's temp dir
(``$RAY_TMPDIR`` or the system temp dir, ``labfleet-ray/``), runs the ordinary harness
there as a grandchild (``python -m labfleet.harness`` under a small guard process,
see ``guard``; frozen hashes are checked
as usual, setup is cached once per node in ``$LABFLEET_CACHE`` or
``~/.cache/labfleet`` of that node), and returns the result and ``run.log``;
``poll`` writes both into the job's run directory on the orchestrator's disk.
labfleet must be installed on every node (the same version).

Faults: a node that dies, a crashed Ray worker, a lost object or a cancelled task is
a run lost to the infrastructure (``Finished(result=None)``): the session retries it.
Cancel interrupts the task (the harness kills its training process group), then
force-kills the Ray worker if it lingers; when a Ray worker dies for any reason the
guard between it and the harness makes the harness kill its training group, so no
training run outlives its task.

Ownership: a Ray task belongs to the process that submitted it and dies with it, so
the orchestrator does not submit run tasks itself. A detached, named actor (``RunOwner``,
one per folder of run dirs, i.e. per session: ``owner_name``) on the head node submits
them and holds their results until the orchestrator has written them into the run dir;
the orchestrator borrows each task's ObjectRef from it. The handle recorded in the
ledger names the owner and the run (``ray:<owner>:<key>``), so after a ``kill -9`` a new
orchestrator's ``adopt`` finds the owner with ``ray.get_actor`` and follows the run:
one that finished meanwhile is collected at once, one still running is followed, one
the owner never heard of (or whose owner is gone) is reported lost and run again.
``close`` (the end of a session) stops what still runs and kills the owners it used; an
owner nobody talks to ends itself once it holds nothing (``OWNER_IDLE_SECONDS``), or,
holding only results nobody collected, after ``OWNER_ABANDON_SECONDS``.

A node that dies keeps its slots listed (ids stay stable); a job started there is
reported lost by the next ``poll`` without being submitted, and ``available()``
lists the slots the session could still use.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from labfleet import logs, workspace
from labfleet.errors import LabfleetError
from labfleet.executors.base import Executor, ExecutorError, Finished, Job, Worker
from labfleet.harness import KILL_GRACE_SECONDS, LOG_FILE, RESULT_FILE, RunRequest, RunResult, read_result

# Custom resource names that are hardware classes (any others given in ``classes`` too).
KNOWN_CLASSES = ("A10", "A100", "A10G", "B200", "GB200", "GH200", "H100", "H200", "L4", "L40S", "MI300X", "T4", "V100")
HEAD_RESOURCE = "node:__internal_head__"  # every head node has one unit: the owners live there
INSTALL_HINT = "pip install 'labfleet[ray]'"
LOG_LIMIT = 8 * 1024 * 1024  # bytes of run.log shipped back (the tail)
NODE_CHECK_SECONDS = 2.0  # how long a view of which nodes are alive is trusted
CONNECT_TIMEOUT = 5.0
OWNER_PREFIX = "labfleet-owner-"
OWNER_IDLE_SECONDS = 600.0  # an owner holding nothing, with no orchestrator talking to it, ends itself
OWNER_ABANDON_SECONDS = 86400.0  # ... and one holding only results nobody came back for
HEARTBEAT_SECONDS = 30.0  # how often a polling orchestrator tells its owners it is there
OWNER_CALL_TIMEOUT = 30.0  # seconds to wait for an owner's answer before calling it gone

_OPEN: weakref.WeakSet[RayExecutor] = weakref.WeakSet()
_CONNECTION = {"ours": False}  # whether labfleet (not the caller) called ray.init
_ACTOR: dict[str, Any] = {}  # the owner actor class, made once per process
_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Place:
    """Where a slot's tasks go: the node and the resources each task asks for."""

    node_id: str
    resource: str | None  # the class resource (one unit per task), or None
    num_cpus: float
    num_gpus: float


@dataclass
class _Slot:
    job: Job
    handle: str
    commit: str  # the version as the orchestrator names it (result.commit)
    owner: str = ""  # the owner actor's name ("": none, e.g. a handle of an older labfleet)
    key: str = ""  # the run's key at its owner
    answer: Any = None  # the owner's pending answer: ObjectRef of [task ref], or of None (unknown run)
    ref: Any = None  # the run task's ObjectRef, borrowed from the owner
    gone: str = ""  # nothing on the cluster to follow (why): poll reads result.json or reports it lost


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"the Ray executor needs Ray: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """ray.init waits minutes on an address nobody listens at: fail fast with one line."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"Ray address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ExecutorError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


def _connect(ray: Any, address: str, namespace: str) -> None:
    with _LOCK:
        if ray.is_initialized():
            if address not in ("auto", "local"):
                current = ray.get_runtime_context().gcs_address
                if current.rpartition(":")[2] != address.rpartition(":")[2]:
                    raise ExecutorError(f"this process is already connected to the Ray cluster at {current}, not {address}")
            return
        _check_reachable(address)
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False, ignore_reinit_error=True,
                     configure_logging=False)
        except Exception as exc:  # ConnectionError, RuntimeError, ...: one line for the user
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {line}") from None
        _CONNECTION["ours"] = True


def _alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def discover(
    nodes: Sequence[Mapping[str, Any]], *, threads: int = 1, classes: Sequence[str] = (),
    price_per_hour: Mapping[str, float] | float | None = None,
) -> list[tuple[Worker, _Place]]:
    """The worker slots of a cluster (``ray.nodes()``), each with where its tasks go.

    ``price_per_hour`` per class, or one number for every class.
    """
    names = set(KNOWN_CLASSES) | set(classes)
    prices = dict(price_per_hour) if isinstance(price_per_hour, Mapping) else {}
    every = float(price_per_hour) if isinstance(price_per_hour, int | float) else 0.0
    ips = [str(n.get("NodeManagerAddress", "")) for n in nodes]
    slots: list[tuple[Worker, _Place]] = []
    for node, ip in zip(nodes, ips):
        node_id = str(node["NodeID"])
        label = ip if ips.count(ip) == 1 and ip else f"{ip}-{node_id[:8]}".lstrip("-")
        res: Mapping[str, float] = node.get("Resources", {})
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        units = {name: int(res[name]) for name in sorted(names) if int(res.get(name, 0)) >= 1}
        if units:
            total = sum(units.values())
            per_cpu = min(float(threads), cpus / total) if cpus else 0.0
            per_gpu = min(1.0, gpus / total) if gpus else 0.0
            made = [(cls, per_cpu, per_gpu, cls) for cls, n in units.items() for _ in range(n)]
        elif gpus >= 1:
            accel = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), "gpu")
            n = int(gpus)
            made = [(accel, min(float(threads), cpus / n) if cpus else 0.0, 1.0, None)] * n
        else:
            made = [("cpu", float(threads), 0.0, None)] * int(cpus // max(threads, 1))
        counts: dict[str, int] = {}
        for cls, ncpu, ngpu, resource in made:
            i = counts[cls] = counts.get(cls, -1) + 1
            worker = Worker(
                id=f"ray-{label}-{cls}-{i}", hardware=cls, device="cuda" if ngpu > 0 else "cpu",
                threads=threads, price_per_hour=float(prices.get(cls, every)),
            )
            slots.append((worker, _Place(node_id, resource, ncpu, ngpu)))
    return sorted(slots, key=lambda s: (s[0].hardware, s[0].id))


class RayExecutor(Executor):
    """Runs experiments as Ray tasks on a running cluster (see the module docstring)."""

    name = "ray"

    def __init__(
        self, address: str = "auto", *, threads: int = 1, classes: Sequence[str] | None = None,
        price_per_hour: Mapping[str, float] | float | None = None, namespace: str = "labfleet",
    ) -> None:
        if threads < 1:
            raise ExecutorError("--threads must be at least 1")
        self._ray = _import_ray()
        _connect(self._ray, address, namespace)
        self.address = address
        self.threads = threads
        found = discover(_alive_nodes(self._ray), threads=threads, classes=classes or (), price_per_hour=price_per_hour)
        if not found:
            raise ExecutorError(f"the Ray cluster at {address} has no worker slots (no class resources, GPUs or CPUs)")
        self._workers = [w for w, _ in found]
        self._places = {w.id: p for w, p in found}
        self._slots: dict[int, _Slot] = {}  # run id -> slot
        self._lost: list[Finished] = []  # cancelled or never submitted, waiting for poll
        self._dead: set[str] = set()  # node ids known dead (a task there died with its node)
        self._alive_at = (0.0, frozenset[str]())
        self._packs: dict[str, bytes] = {}  # commit -> gzipped tar, the last few
        self.namespace = namespace
        self._owners: dict[str, Any] = {}  # owner actor name -> handle, those this executor uses
        self._used: list[str] = []  # every owner's name it used, kept after close
        self._beat = time.monotonic()
        _OPEN.add(self)

    # ----------------------------------------------------------------- slots

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def available(self) -> list[Worker]:
        """The slots whose node is alive now (a dead node's slots stay in ``workers()``)."""
        return [w for w in self._workers if self._node_alive(self._places[w.id].node_id)]

    def _node_alive(self, node_id: str) -> bool:
        if node_id in self._dead:
            return False
        at, alive = self._alive_at
        if time.monotonic() - at > NODE_CHECK_SECONDS:
            alive = frozenset(str(n["NodeID"]) for n in _alive_nodes(self._ray))
            self._alive_at = (time.monotonic(), alive)
        return node_id in alive

    def _died(self, node_id: str) -> bool:
        """Whether the cluster has declared this node dead (asked now, not from the cached view)."""
        self._alive_at = (0.0, frozenset[str]())
        return not self._node_alive(node_id)

    # ----------------------------------------------------------------- running

    def start(self, job: Job) -> str:
        place = self._places.get(job.worker_id)
        if place is None:
            raise ExecutorError(f"unknown worker {job.worker_id!r}")
        if any(s.job.worker_id == job.worker_id for s in self._slots.values()):
            raise ExecutorError(f"worker {job.worker_id} is busy")
        if not self._node_alive(place.node_id):
            # submitting would only fail later ("unschedulable"); report it lost now
            self._lost.append(Finished(job.run_id, job.worker_id, None, f"Ray node {place.node_id[:8]} is dead"))
            return f"ray:dead:{place.node_id}"
        request = job.request
        try:
            commit = workspace.resolve(request.target_dir, request.commit)
            tree = self._pack(request.target_dir, commit)
        except LabfleetError as exc:  # the harness would die the same way: lost, with the reason
            self._lost.append(Finished(job.run_id, job.worker_id, None, f"cannot ship the version: {exc}"))
            return "ray:unsent"
        payload = {
            "commit": commit, "tree": tree, "run_dir": str(request.run_dir),
            "request": request.to_json(),
        }
        options: dict[str, Any] = {"num_cpus": place.num_cpus, "node_id": place.node_id, "name": f"labfleet-run-{job.run_id}"}
        if place.resource:
            options["resources"] = {place.resource: 1}
        if place.num_gpus:
            options["num_gpus"] = place.num_gpus
        name = owner_name(request.run_dir.parent)
        key = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        answer = self._owner(name, create=True).submit.remote(key, payload, options)  # returns at once
        handle = f"ray:{name}:{key}"
        self._slots[job.run_id] = _Slot(job, handle, commit, name, key, answer)
        return handle

    def _owner(self, name: str, *, create: bool = False) -> Any:
        """The owner actor called ``name`` (made on the head node when ``create``), or None if there is none."""
        if name not in self._owners:
            if create:
                self._owners[name] = _owner_class(self._ray).options(
                    name=name, namespace=self.namespace, get_if_exists=True, lifetime="detached",
                    num_cpus=0, resources={HEAD_RESOURCE: 0.001}, max_restarts=0,
                ).remote(OWNER_IDLE_SECONDS, OWNER_ABANDON_SECONDS)
            else:
                try:
                    self._owners[name] = self._ray.get_actor(name, namespace=self.namespace)
                except ValueError:
                    return None
            if name not in self._used:
                self._used.append(name)
        return self._owners[name]

    def _pack(self, repo: Path, commit: str) -> bytes:
        """The version's files as a gzipped tar (cached: seeds and retries reuse it)."""
        if commit not in self._packs:
            proc = subprocess.run([*workspace.GIT, "-C", str(repo), "archive", "--format=tar", commit],
                                  capture_output=True)
            if proc.returncode != 0:
                raise LabfleetError(f"git archive {commit[:12]}: {proc.stderr.decode(errors='replace').strip()}")
            while len(self._packs) >= 16:
                self._packs.pop(next(iter(self._packs)))
            self._packs[commit] = gzip.compress(proc.stdout, compresslevel=6)
        return self._packs[commit]

    def adopt(self, job: Job, handle: str) -> None:
        """Follow a run an earlier orchestrator (or executor) started, through its owner on the cluster."""
        request = job.request
        try:
            commit = workspace.resolve(request.target_dir, request.commit)
        except LabfleetError:
            commit = ""
        slot = _Slot(job, handle, commit)
        kind, _, rest = handle.partition(":")
        name, _, key = rest.partition(":")
        if kind == "ray" and name.startswith(OWNER_PREFIX) and key:
            slot.owner, slot.key = name, key
        if read_result(request.run_dir) is not None:  # collected before the restart, not yet recorded
            slot.gone = "collected before the restart"
            self._forget([slot])
        elif not slot.owner:
            slot.gone = "no owner on the cluster recorded for this run (started by an older labfleet?)"
        elif (owner := self._owner(slot.owner)) is None:
            slot.gone = f"its owner on the Ray cluster ({slot.owner}) is gone"
        else:
            slot.answer = owner.lookup.remote(slot.key)
        self._slots[job.run_id] = slot

    def poll(self) -> list[Finished]:
        done, self._lost = self._lost, []
        self._heartbeat()
        slots = list(self._slots.values())
        answers = [s.answer for s in slots if s.answer is not None]
        if answers:
            ready = set(self._ray.wait(answers, num_returns=len(answers), timeout=0)[0])
            for slot in slots:
                if slot.answer in ready:
                    self._read_answer(slot)
        refs = list(dict.fromkeys(s.ref for s in slots if s.ref is not None))
        ready = set(self._ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        ended: list[_Slot] = []
        for slot in slots:
            run_id = slot.job.run_id
            if slot.gone:
                result = read_result(slot.job.request.run_dir)
                done.append(Finished(run_id, slot.job.worker_id, result, "" if result else slot.gone))
            elif slot.ref is not None and slot.ref in ready:
                done.append(self._collect(slot))
                ended.append(slot)
            else:
                continue
            del self._slots[run_id]
        self._forget(ended)  # result.json is written: the owner may drop them
        return done

    def _read_answer(self, slot: _Slot) -> None:
        """The owner's answer about a run: its task's ref, or that it never heard of it."""
        try:
            got = self._ray.get(slot.answer, timeout=OWNER_CALL_TIMEOUT)
        except Exception as exc:
            got, why = None, f"its owner on the Ray cluster is gone ({type(exc).__name__})"
            self._owners.pop(slot.owner, None)  # the next start makes a new one
        else:
            why = "the run never reached its owner on the Ray cluster (the orchestrator died while starting it)"
        slot.answer = None
        if got:
            slot.ref = got[0]
        else:
            slot.gone = why

    def _heartbeat(self) -> None:
        """Tell the owners this orchestrator is alive (an owner nobody talks to ends itself)."""
        now = time.monotonic()
        if now - self._beat < HEARTBEAT_SECONDS:
            return
        self._beat = now
        for owner in self._owners.values():
            try:
                owner.touch.remote()
            except Exception:
                pass

    def _forget(self, slots: list[_Slot]) -> None:
        """Let the owners drop these runs (their results are in the run dirs, or not wanted)."""
        by_owner: dict[str, list[str]] = {}
        for slot in slots:
            if slot.owner and slot.key:
                by_owner.setdefault(slot.owner, []).append(slot.key)
        calls = []
        for name, keys in by_owner.items():
            owner = self._owner(name)
            if owner is not None:
                calls.append(owner.forget.remote(keys))
        if calls:  # waited for: a result recorded as done must not stay held after a crash
            try:
                self._ray.get(calls, timeout=OWNER_CALL_TIMEOUT)
            except Exception:
                pass

    def _collect(self, slot: _Slot) -> Finished:
        """A finished task: its result written into the run dir here, or why it was lost."""
        job = slot.job
        try:
            out = self._ray.get(slot.ref, timeout=60)
        except Exception as exc:
            if isinstance(exc, self._ray.exceptions.OwnerDiedError):
                self._owners.pop(slot.owner, None)  # the next start makes a new one
            return Finished(job.run_id, job.worker_id, None, self._lost_reason(exc, job.worker_id))
        result = RunResult.from_json(out["result"])
        run_dir = job.request.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LOG_FILE).write_text(out["log"])
        result = dataclasses.replace(result, log_path=str(run_dir / LOG_FILE))
        if result.commit:
            result = dataclasses.replace(
                result, commit=self._orchestrator_commit(job.request, slot.commit, result.commit))
        tmp = run_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, run_dir / RESULT_FILE)  # last: result.json means the run dir is complete
        return Finished(job.run_id, job.worker_id, result)

    def _orchestrator_commit(self, request: RunRequest, parent: str, node_commit: str) -> str:
        """The version that ran, named in the target repo (the node's shas differ)."""
        if not request.patch or not parent:
            return parent or node_commit
        try:
            paths = workspace.patch_paths(request.target_dir, request.patch)
            return workspace.commit_patch(request.target_dir, parent, request.patch, "labfleet experiment", paths)
        except LabfleetError:
            return node_commit

    def _lost_reason(self, exc: Exception, worker_id: str) -> str:
        ex = self._ray.exceptions
        node = self._places[worker_id].node_id if worker_id in self._places else ""
        if isinstance(exc, ex.TaskCancelledError):
            return "cancelled"
        if isinstance(exc, (ex.NodeDiedError, ex.TaskUnschedulableError)) or (node and self._died(node)):
            self._dead.add(node)
            return f"Ray node {node[:8]} died ({type(exc).__name__})"
        if isinstance(exc, ex.OwnerDiedError):
            return f"the run's owner on the Ray cluster died ({type(exc).__name__})"
        cause = getattr(exc, "cause", None)
        text = str(cause if isinstance(cause, BaseException) else exc).strip()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return f"{type(cause or exc).__name__}: {lines[-1][:300] if lines else 'no message'}"

    def cancel(self, run_id: int) -> None:
        slot = self._slots.pop(run_id, None)
        if slot is None:
            return
        self._stop([slot])
        self._lost.append(Finished(run_id, slot.job.worker_id, None, "cancelled"))

    def _stop(self, slots: list[_Slot]) -> None:
        """Have the owners stop these runs (the harness kills its training group) and drop them.

        Returns once the tasks have ended (or were force-killed after the grace period).
        """
        by_owner: dict[str, list[str]] = {}
        for slot in slots:
            if slot.owner and slot.key and not slot.gone:
                by_owner.setdefault(slot.owner, []).append(slot.key)
        calls = []
        for name, keys in by_owner.items():
            owner = self._owner(name)
            if owner is not None:
                calls.append(owner.stop.remote(keys, KILL_GRACE_SECONDS + 3))
        if calls:
            try:
                self._ray.get(calls, timeout=KILL_GRACE_SECONDS + 3 + OWNER_CALL_TIMEOUT)
            except Exception:
                pass

    def running(self) -> list[int]:
        return list(self._slots)

    def owners(self) -> list[str]:
        """Names of the owner actors this executor started runs on or adopted runs from (also after close)."""
        return list(self._used)

    def close(self) -> None:
        """Stop this executor's runs and end their owners; disconnect only a connection labfleet opened.

        A cluster is never shut down: ``ray.shutdown()`` only disconnects this driver.
        """
        slots = list(self._slots.values())
        self._slots.clear()
        self._lost.clear()
        self._stop(slots)
        for owner in self._owners.values():
            try:
                self._ray.kill(owner)
            except Exception:  # already gone
                pass
        self._owners.clear()
        _OPEN.discard(self)
        with _LOCK:
            if _CONNECTION["ours"] and not _OPEN and self._ray.is_initialized():
                self._ray.shutdown()
                _CONNECTION["ours"] = False


# --------------------------------------------------------------------------- the runs' owner


def owner_name(run_root: Path) -> str:
    """The owner actor of the runs whose run dirs are in ``run_root`` (one session's runs).

    Stable across orchestrator restarts on this machine; another machine's or another
    session's folder gets another owner.
    """
    where = f"{socket.gethostname()}:{Path(run_root).resolve()}"
    return OWNER_PREFIX + hashlib.sha256(where.encode()).hexdigest()[:20]


class RunOwner:
    """The detached actor that submits a session's run tasks and holds their results.

    Ray ties a task (and its result) to the process that submitted it; this actor is
    that process, and it outlives the orchestrator. Runs are known by key; the
    orchestrator borrows each task's ObjectRef (``submit`` and ``lookup`` return it in a
    list, so Ray does not resolve it) and calls ``forget`` once it has the result. Every
    call counts as contact; a watchdog ends the actor when nobody has been in contact for
    ``idle`` seconds and it holds nothing, or for ``abandon`` seconds and nothing runs.
    """

    def __init__(self, idle: float, abandon: float) -> None:
        import ray

        self._ray = ray
        self._task = ray.remote(max_retries=0)(run_on_node)
        self._refs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._contact = time.monotonic()
        threading.Thread(target=self._watch, args=(idle, abandon), daemon=True).start()

    def _touch(self) -> None:
        self._contact = time.monotonic()

    def submit(self, key: str, payload: dict[str, Any], options: dict[str, Any]) -> list[Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts = dict(options)
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(opts.pop("node_id"), soft=False)
        ref = self._task.options(**opts).remote(payload)
        with self._lock:
            self._refs[key] = ref
            self._touch()
        return [ref]

    def lookup(self, key: str) -> list[Any] | None:
        with self._lock:
            self._touch()
            ref = self._refs.get(key)
        return None if ref is None else [ref]

    def forget(self, keys: list[str]) -> None:
        with self._lock:
            self._touch()
            for key in keys:
                self._refs.pop(key, None)

    def stop(self, keys: list[str], grace: float) -> None:
        """Interrupt these runs' tasks (the harness kills its training group), force what lingers, drop them."""
        with self._lock:
            self._touch()
            refs = [self._refs.pop(k) for k in keys if k in self._refs]
        for ref in refs:
            try:
                self._ray.cancel(ref, force=False)
            except Exception:
                pass
        if refs:
            _, rest = self._ray.wait(refs, num_returns=len(refs), timeout=grace)
            for ref in rest:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:
                    pass

    def touch(self) -> int:
        """An orchestrator is alive; returns how many runs are held."""
        with self._lock:
            self._touch()
            return len(self._refs)

    def _watch(self, idle: float, abandon: float) -> None:
        while True:
            time.sleep(max(0.2, min(30.0, idle / 4)))
            with self._lock:
                refs = list(self._refs.values())
                quiet = time.monotonic() - self._contact
            running = bool(refs) and len(self._ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs)
            if (quiet >= idle and not refs) or (quiet >= abandon and not running):
                self._ray.get_runtime_context().current_actor.__ray_terminate__.remote()
                return


def _owner_class(ray: Any) -> Any:
    """``RunOwner`` as a Ray actor class (made once).

    One call at a time, in the order each caller sent them: a ``stop`` never overtakes
    the ``submit`` before it.
    """
    if "owner" not in _ACTOR:
        _ACTOR["owner"] = ray.remote(RunOwner)
    return _ACTOR["owner"]


# --------------------------------------------------------------------------- on the node


def node_root() -> Path:
    """This node's labfleet folder: unpacked versions and runs in progress."""
    base = os.environ.get("LABFLEET_RAY_DIR") or os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    return Path(base) / "labfleet-ray"


def _unpacked(root: Path, commit: str, tree: bytes) -> tuple[Path, str]:
    """A git repo holding ``commit``'s files on this node (made once per commit); (repo, its sha)."""
    dest = root / "trees" / commit
    if not (dest / ".git").is_dir():
        tmp = root / "trees" / f".{commit}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tree)), mode="r:") as tar:
            tar.extractall(tmp, filter="data")
        workspace.git(tmp, "init", "--quiet")
        workspace.git(tmp, "add", "--all", "--force")
        workspace.git(tmp, "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "--allow-empty",
                      "-m", f"labfleet {commit}")
        try:
            os.rename(tmp, dest)
        except OSError:  # another task on this node made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, workspace.resolve(dest, "HEAD")


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux ``PR_SET_PDEATHSIG``)."""

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # it died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def guard(request_file: str) -> int:
    """``python -m labfleet.executors.ray REQUEST.json``: the harness's parent on a node.

    Ray SIGKILLs the direct children of a worker that exits (node lost, force cancel,
    driver gone), and a SIGKILLed harness leaves its training group running. So the
    task starts this guard, and the guard starts the harness: when the guard is
    killed, the harness gets SIGTERM (PDEATHSIG) and kills its training group; when
    the guard is told to stop (SIGTERM, or its worker died), it passes SIGTERM on.
    """
    stop: list[float] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(time.monotonic()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "labfleet.harness", request_file], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
    )
    told = False
    while proc.poll() is None:
        if stop and not told:
            proc.send_signal(signal.SIGTERM)
            told = True
        if told and time.monotonic() - stop[0] > KILL_GRACE_SECONDS + 2:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    return proc.returncode


def _tail(path: Path, limit: int) -> str:
    return logs.tail_bytes(path, limit)


def run_on_node(payload: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: unpack the version, run the harness as a child, return its result and log.

    The node-local run dir mirrors the orchestrator's path under ``node_root()/runs``
    (which also lets a test find the run's processes by that path).
    """
    root = node_root()
    repo, local = _unpacked(root, payload["commit"], payload["tree"])
    run_dir = root / "runs" / payload["run_dir"].lstrip("/")
    if run_dir.exists():  # a leftover of a run killed with its node
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    asked = RunRequest.from_json(payload["request"])
    request = replace(asked, target_dir=repo, run_dir=run_dir, commit=local, cache_root=None)
    request_file = run_dir.parent / f"{run_dir.name}.request.json"
    harness_log = run_dir.parent / f"{run_dir.name}.harness.log"
    request_file.write_text(json.dumps(request.to_json()))
    threads = str(request.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}  # Ray workers default to 1
    with harness_log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labfleet.executors.ray", str(request_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
        )
    try:
        while proc.poll() is None:  # short sleeps: a cancel's KeyboardInterrupt lands here
            time.sleep(0.05)
    except BaseException:
        _stop_child(proc)
        _cleanup(run_dir, request_file, harness_log)
        raise
    result = read_result(run_dir)
    log = _tail(run_dir / LOG_FILE, LOG_LIMIT)
    why = _tail(harness_log, 2000).strip().splitlines()
    _cleanup(run_dir, request_file, harness_log)
    if result is None:
        raise RuntimeError(f"the harness exited with code {proc.returncode} without a result"
                           + (f": {why[-1]}" if why else ""))
    return {"result": result.to_json(), "log": log}


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the guard (the harness then kills its training group); SIGKILL it if it lingers."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_SECONDS + 4)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    except ProcessLookupError:
        pass


def _cleanup(run_dir: Path, *files: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    for path in files:
        path.unlink(missing_ok=True)


__all__ = ["KNOWN_CLASSES", "RayExecutor", "RunOwner", "discover", "guard", "node_root", "owner_name", "run_on_node"]


if __name__ == "__main__":
    sys.exit(guard(*sys.argv[1:]))
