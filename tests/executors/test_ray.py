"""The Ray executor against a real two-node Ray cluster started on this machine.

A head node with one H100 unit and a worker node with one H200 unit (one CPU each),
started with the ``ray start`` CLI, with their own RAY_TMPDIR and ports, and torn
down by killing only the processes this module started. Each node gets a marker
(LABFLEET_TEST_NODE) and its own setup cache (LABFLEET_CACHE) in its environment,
so a run shows where it ran. The tests that kill the worker node's raylet run last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'labfleet[ray]')")

from labfleet import workspace  # noqa: E402
from labfleet.executors import conformance  # noqa: E402
from labfleet.executors import ray as ray_executor  # noqa: E402
from labfleet.executors.base import ExecutorError, Job  # noqa: E402
from labfleet.executors.ray import RayExecutor, owner_name  # noqa: E402
from labfleet.harness import Outcome, RunRequest, read_result  # noqa: E402
from labfleet.ledger import Ledger  # noqa: E402
from labfleet.records import Decision, Proposal, RunStatus, SessionState  # noqa: E402
from labfleet.session import SessionConfig, SessionLoop, start_session  # noqa: E402
from labfleet.target import load_target  # noqa: E402
from labfleet.testing.targets import KNOB_TRAIN, KNOBS_TOML, SEARCH_TOML  # noqa: E402
from tests.conftest import Scripted, make_target  # noqa: E402

RAY_CLI = Path(sys.executable).parent / "ray"
PRICES = {"H100": 2.5, "H200": 3.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry)] = (ppid, cmd)
    return out


class Cluster:
    """A Ray cluster of this module's own: its processes are found by its folder and port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.nodes: dict[str, str] = {}  # marker -> node id
        self.address = f"127.0.0.1:{self.port}"

    def start(self, name: str, resources: dict[str, float], *, head: bool = False) -> str:
        node_port = _free_port()
        env = {
            **os.environ, "RAY_TMPDIR": str(self.root / name), "LABFLEET_CACHE": str(self.root / name / "cache"),
            "LABFLEET_TEST_NODE": name, "RAY_USAGE_STATS_ENABLED": "0",
            # a killed node is declared dead in about 2 s instead of about 10
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
        }
        (self.root / name).mkdir(parents=True, exist_ok=True)
        ports = [f"--{opt}={_free_port()}" for opt in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "object-manager-port")]
        cmd = [str(RAY_CLI), "start", "--num-cpus=1", f"--resources={json.dumps(resources)}",
               f"--node-manager-port={node_port}", "--disable-usage-stats", *ports]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)  # slow when the machine is loaded
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {proc.stderr[-2000:]}")
        pid, node_id = self._raylet(f"--node_manager_port={node_port} ")
        self.nodes[name] = node_id
        return node_id

    def _raylet(self, needle: str) -> tuple[int, str]:
        for pid, (_, cmd) in _processes().items():
            if "raylet/raylet " in cmd and needle in cmd + " ":
                return pid, cmd.split("--node_id=", 1)[1].split()[0]
        raise RuntimeError(f"no raylet with {needle!r}")

    def kill_raylet(self, name: str) -> None:
        pid, _ = self._raylet(f"--node_id={self.nodes[name]} ")
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill this cluster's processes and their descendants, nothing else."""
        procs = _processes()
        mine = {pid for pid, (_, cmd) in procs.items()
                if str(self.root) in cmd or (f":{self.port} " in cmd + " " and "ray" in cmd)}
        mine.discard(os.getpid())
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in procs.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in mine:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM:
                time.sleep(1.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not RAY_CLI.exists():
        pytest.skip(f"no ray CLI at {RAY_CLI}")
    root = Path(tempfile.mkdtemp(prefix="lfr", dir="/tmp"))  # short: Ray's socket paths are limited
    c = Cluster(root)
    try:
        c.start("head", {"H100": 1}, head=True)
        c.start("worker", {"H200": 1})
        # one executor held open for the module: the connection it opened stays up
        keeper = RayExecutor(c.address)
        yield c
        keeper.close()
    finally:
        ray.shutdown()
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _by_class(executor: RayExecutor) -> dict[str, str]:
    return {w.hardware: w.id for w in executor.workers()}


# --------------------------------------------------------------------------- slots and contract


def test_slots_are_discovered_by_hardware_class(cluster: Cluster) -> None:
    executor = RayExecutor(cluster.address, price_per_hour=PRICES)
    try:
        workers = executor.workers()
        assert [(w.hardware, w.price_per_hour, w.device, w.threads) for w in workers] == [
            ("H100", 2.5, "cpu", 1), ("H200", 3.5, "cpu", 1),  # no GPUs on these nodes: cpu device
        ]
        head, worker = cluster.nodes["head"], cluster.nodes["worker"]
        assert workers[0].id.startswith("ray-") and workers[0].id.endswith(f"{head[:8]}-H100-0")
        assert workers[1].id.endswith(f"{worker[:8]}-H200-0")  # both nodes share one IP here
        assert executor.available() == workers
        again = RayExecutor(cluster.address)  # the same ids from a new executor; no prices given: 0
        assert again.workers() == [replace(w, price_per_hour=0.0) for w in workers]
        again.close()
    finally:
        executor.close()


def test_an_unreachable_address_is_one_clear_error(cluster: Cluster) -> None:
    # in a fresh process: importing labfleet does not import ray; a dead address fails fast, in one line
    code = (
        "import sys, labfleet.cli, labfleet.executors.ray as r\n"
        "assert 'ray' not in sys.modules\n"
        "try:\n"
        f"    r.RayExecutor('127.0.0.1:{_free_port()}')\n"
        "except r.ExecutorError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("ERROR no Ray cluster at 127.0.0.1:") and out.count("\n") == 1, out
    assert time.monotonic() - started < 20
    # this process is connected to the fixture's cluster: another address is refused, not ignored
    with pytest.raises(ExecutorError, match="already connected"):
        RayExecutor(f"127.0.0.1:{_free_port()}")


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_ray_executor_conformance(check, tmp_path, cluster: Cluster) -> None:
    check(lambda workers: RayExecutor(cluster.address), tmp_path)


PLACED_TRAIN = """\
import os
data = open(os.path.join(os.environ["LABFLEET_CACHE_DIR"], "data.txt")).read()
print("---")
print("val_bpb: 1.0")
print(f"node: {os.environ.get('LABFLEET_TEST_NODE')}")
print(f"cache: {os.environ['LABFLEET_CACHE_DIR']}")
print(f"threads: {os.environ['OMP_NUM_THREADS']}")
print(f"data: {data}")
"""
PLACED_TOML = """\
[target]
name = "placed"
editable = ["train.py"]
frozen = ["prepare.py"]
setup = "python prepare.py"
run = "python train.py"
metric = "val_bpb"
budget_seconds = 1
timeout_seconds = 20
"""
PREPARE = """\
import os, pathlib
pathlib.Path(os.environ["LABFLEET_CACHE_DIR"], "data.txt").write_text(os.environ["LABFLEET_TEST_NODE"] + "-data")
"""


def test_jobs_run_on_the_node_of_their_class(cluster: Cluster, tmp_path: Path) -> None:
    folder = tmp_path / "placed"
    folder.mkdir()
    (folder / "labfleet.toml").write_text(PLACED_TOML)
    (folder / "train.py").write_text(PLACED_TRAIN)
    (folder / "prepare.py").write_text(PREPARE)
    commit = workspace.init_repo(folder, "placed")
    executor = RayExecutor(cluster.address, threads=1)
    try:
        slots = _by_class(executor)
        jobs = {cls: Job(i + 1, slots[cls], RunRequest(folder, tmp_path / "runs" / cls, commit=commit, threads=1))
                for i, cls in enumerate(("H100", "H200"))}
        for job in jobs.values():
            executor.start(job)
        finished = conformance._wait(executor, 2, timeout=30)
    finally:
        executor.close()
    by_worker = {f.worker_id: f.result for f in finished}
    for cls, node in (("H100", "head"), ("H200", "worker")):
        result = by_worker[slots[cls]]
        assert result is not None and result.outcome == Outcome.OK, result
        assert result.figures["node"] == node
        # setup ran on that node, into that node's own cache
        assert str(result.figures["cache"]).startswith(str(cluster.root / node / "cache"))
        assert result.figures["data"] == f"{node}-data" and result.figures["threads"] == 1.0
        assert result.commit == commit  # named as in the target repo, not the node's copy
        run_dir = tmp_path / "runs" / cls  # the log and the result came back to the orchestrator
        assert f"node: {node}" in (run_dir / "run.log").read_text()
        assert read_result(run_dir) == result and result.log_path == str(run_dir / "run.log")


def _lab(tmp_path: Path) -> Path:
    return make_target(tmp_path / "lab", KNOB_TRAIN, extra_toml=KNOBS_TOML, budget=1, timeout=30)


def _session(folder: Path, researcher: Scripted, address: str) -> tuple[Ledger, SessionLoop]:
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=2, noise_repeats=0)
    sid = start_session(target, ledger, cfg)
    executor = RayExecutor(address, price_per_hour=PRICES)
    loop = SessionLoop(target, ledger, executor, researcher, sid, cfg, folder / ".labfleet")
    return ledger, loop


def test_a_session_runs_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    folder = _lab(tmp_path)
    researcher = Scripted([
        Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
        Proposal("lr way down", knobs={"LEARNING_RATE": 1e-4}),
    ])
    ledger, loop = _session(folder, researcher, cluster.address)
    try:
        loop.run()
        owners = loop.executor.owners()  # type: ignore[attr-defined]
    finally:
        loop.executor.close()
    assert owners == [owner_name(folder / ".labfleet" / "runs" / f"s{loop.session_id}")]
    assert not _owner_alive(owners[0])  # the session's end ended the owner of its runs
    sid = loop.session_id
    exps = {e.description: e for e in ledger.experiments(sid)}
    assert exps["baseline"].decision == Decision.BASELINE and exps["baseline"].metric == pytest.approx(2.02)
    assert exps["lr best"].decision == Decision.KEPT and exps["lr best"].metric == pytest.approx(1.02)
    assert exps["lr way down"].decision == Decision.DISCARDED
    runs = ledger.runs(sid)
    assert {r.hardware for r in runs} == {"H100", "H200"}  # the baseline calibrated on both classes
    for run in runs:
        assert run.status == RunStatus.DONE
        run_dir = Path(run.run_dir or "")
        assert "val_bpb:" in (run_dir / "run.log").read_text()
        assert read_result(run_dir) is not None
    assert loop.stop_reason == "the researcher has nothing more to propose"


def test_cancel_and_close_leave_no_training_process(cluster: Cluster, tmp_path: Path) -> None:
    folder = conformance.make_target(tmp_path / "target")
    executor = RayExecutor(cluster.address)
    slots = _by_class(executor)
    jobs = [conformance._job(folder, tmp_path, i + 1, slots[cls], sleep=30.0) for i, cls in enumerate(("H100", "H200"))]
    for job in jobs:
        executor.start(job)
    for job in jobs:
        _until(lambda: _node_local_processes(job.request.run_dir, training=True), 60, "training to start")  # noqa: B023 - called at once  # slow when loaded
    executor.cancel(1)  # returns once the task has ended (or its stop call timed out, on a loaded machine)
    _until(lambda: _node_local_processes(jobs[0].request.run_dir) == [], 30, "the cancelled run's processes to go")
    assert executor.running() == [2]
    executor.close()  # stops the other one the same way
    _until(lambda: _node_local_processes(jobs[1].request.run_dir) == [], 30, "the closed run's processes to go")
    assert executor.poll() == [] and executor.running() == []  # close drops what was not reported yet


# --------------------------------------------------------------------------- orchestrator restarts


def _owner_alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace="labfleet")
    except ValueError:
        return False
    return True


# each node sleeps its own time: the head's run ends while no orchestrator is alive, the worker's outlasts it
NODE_TRAIN = KNOB_TRAIN.replace(
    "time.sleep(SLEEP)", "time.sleep(SLEEP + {'head': 2.0, 'worker': 12.0}.get(os.environ.get('LABFLEET_TEST_NODE'), 0.0))")


def test_runs_outlive_a_killed_orchestrator_and_are_adopted(cluster: Cluster, tmp_path: Path) -> None:
    folder = make_target(tmp_path / "lab", NODE_TRAIN, extra_toml=SEARCH_TOML, budget=1, timeout=30)
    state = folder / ".labfleet"
    owner = owner_name(state / "runs" / "s1")
    cmd = [sys.executable, "-m", "labfleet", "run", "-C", str(folder), "--executor", "ray",
           "--ray-address", cluster.address, "--researcher", "random", "--max-experiments", "1", "--noise-repeats", "0"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def running() -> dict[str, Path]:  # hardware -> run dir of the runs the ledger says are running and that train
        if not (state / "ledger.sqlite").exists():
            return {}
        try:
            reader = Ledger.for_target(state)
            try:
                rows = reader.db.execute("SELECT hardware, run_dir FROM runs WHERE status = 'running'").fetchall()
            finally:
                reader.close()
        except Exception:  # the orchestrator is still making the ledger
            return {}
        dirs = {r["hardware"]: Path(r["run_dir"]) for r in rows}
        return dirs if all(_node_local_processes(d, training=True) for d in dirs.values()) else {}

    try:
        _until(lambda: len(running()) == 2 or first.poll() is not None, 120, "both baseline runs to train")
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        found = running()
        first.kill()  # SIGKILL: no close, no cleanup
        killed = time.time()
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    short, long = found["H100"], found["H200"]  # the head's run, the worker's
    dirs = [short, long]
    time.sleep(1.0)
    assert _owner_alive(owner), "the runs' owner died with the orchestrator"
    assert _node_local_processes(long, training=True), "the run died with the orchestrator"
    _until(lambda: not _node_local_processes(short), 30, "the head's run to end with no orchestrator alive")
    assert _node_local_processes(long, training=True)  # the next orchestrator finds one finished, one running

    again = subprocess.run([*cmd[:6], "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming session 1" in again.stdout
    ledger = Ledger.for_target(state)
    try:
        runs = ledger.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        adopted = [json.loads(e["data"])["run"] for e in ledger.db.execute("SELECT data FROM events WHERE kind = 'run_adopted'")]
        exps = ledger.db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
    finally:
        ledger.close()
    assert [r["status"] for r in runs] == ["done"] * len(runs), [dict(r) for r in runs]  # nothing lost, nothing run twice
    assert len({(r["experiment_id"], r["seed"], r["hardware"]) for r in runs}) == len(runs)
    assert len(exps) == 2 and exps[0]["decision"] == "baseline" and exps[1]["decision"] in ("kept", "discarded")
    by_dir = {Path(r["run_dir"]): r for r in runs}
    assert sorted(adopted) == sorted(by_dir[d]["id"] for d in dirs)
    for d in dirs:  # collected from the runs that started before the kill, not from new ones
        result = read_result(d)
        assert result is not None and result.outcome == Outcome.OK and result.started_at < killed
    assert read_result(long).ended_at > killed + 1  # it went on while no orchestrator was alive
    assert not _owner_alive(owner), "the session ended but its owner actor is still alive"


def test_an_owner_reports_unknown_runs_and_ends_itself_when_idle(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ray_executor, "OWNER_IDLE_SECONDS", 1.0)
    folder = conformance.make_target(tmp_path / "target")
    executor = RayExecutor(cluster.address)
    owner = owner_name(tmp_path / "runs")
    try:
        worker = executor.workers()[0].id
        ghost = conformance._job(folder, tmp_path, 2, worker)
        executor.adopt(ghost, f"ray:{owner}:2-0000")  # no owner yet
        [gone] = executor.poll()
        assert gone.result is None and "owner" in gone.reason and "gone" in gone.reason
        handle = executor.start(conformance._job(folder, tmp_path, 1, worker, sleep=2.0))
        assert handle.startswith(f"ray:{owner}:1-")
        executor.adopt(ghost, f"ray:{owner}:2-0000")  # the owner exists but never heard of this run
        finished = {f.run_id: f for f in conformance._wait(executor, 2)}
        assert finished[2].result is None and "never reached" in finished[2].reason
        assert finished[1].result is not None and finished[1].result.outcome == Outcome.OK
        # holding nothing and told nothing for OWNER_IDLE_SECONDS, the owner ends itself
        _until(lambda: not _owner_alive(owner), 30, "the idle owner to end")
    finally:
        executor.close()


# --------------------------------------------------------------------------- node death (last: kills the worker node)


def _node_local_processes(run_dir: Path, *, training: bool = False) -> list[int]:
    """The guard, harness and training processes of a run on this machine.

    The node-local run dir mirrors the orchestrator's path: the guard and harness name
    it on their command line, the training processes run inside it.
    """
    found = []
    for pid, (_, cmd) in _processes().items():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        inside = f"labfleet-ray/runs{run_dir}/" in cwd + "/"
        if pid != os.getpid() and (inside or (str(run_dir) in cmd and not training)):
            found.append(pid)
    return found


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_run_on_a_node_that_dies_is_lost(cluster: Cluster, tmp_path: Path) -> None:
    folder = conformance.make_target(tmp_path / "target")
    executor = RayExecutor(cluster.address)
    try:
        slot = _by_class(executor)["H200"]
        job = conformance._job(folder, tmp_path, 1, slot, sleep=30.0)
        executor.start(job)
        _until(lambda: _node_local_processes(job.request.run_dir, training=True), 20, "training on the worker node")
        killed = time.monotonic()
        cluster.kill_raylet("worker")
        [lost] = conformance._wait(executor, 1, timeout=20)
        assert lost.result is None and "died" in lost.reason, lost
        assert time.monotonic() - killed < 10
        # nothing of the run survives its node
        _until(lambda: not _node_local_processes(job.request.run_dir), 15, "the run's processes to end")
        # the slot stays listed; a job placed there is reported lost at once, never submitted
        assert slot in {w.id for w in executor.workers()} and slot not in {w.id for w in executor.available()}
        executor.start(conformance._job(folder, tmp_path, 2, slot))
        [again] = executor.poll()
        assert again.result is None and "dead" in again.reason
    finally:
        executor.close()
    # the cluster notices too (the next test starts a fresh worker node)
    _until(lambda: cluster.nodes["worker"] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}, 30,
           "the cluster to declare the node dead")


class TwoAtOnce(Scripted):
    """Proposes only once the baseline is decided and both workers are free: a quick and a slow run."""

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or state.baseline.decision != Decision.BASELINE or state.free_workers < 2:
            self.sizes.append(0)
            return []
        return super().propose(state, n)


def test_a_session_retries_a_run_lost_with_its_node_on_the_other_node(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("worker2", {"H200": 1})
    folder = _lab(tmp_path)
    researcher = TwoAtOnce([
        Proposal("quick", knobs={"LEARNING_RATE": 1e-4}),  # H100 (the first free slot); discarded
        Proposal("slow", knobs={"LEARNING_RATE": 2e-4, "SLEEP": 4.0}),  # H200, whose node then dies
    ])
    ledger, loop = _session(folder, researcher, cluster.address)
    slots = _by_class(loop.executor)  # type: ignore[arg-type]
    assert slots["H200"].endswith(cluster.nodes["worker2"][:8] + "-H200-0")

    def kill_the_node_under_slow() -> None:
        reader = Ledger.for_target(folder / ".labfleet")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = {r["description"]: r for r in reader.db.execute(
                "SELECT e.description, r.status, r.worker, r.run_dir FROM runs r"
                " JOIN experiments e ON e.id = r.experiment_id WHERE e.description IN ('quick', 'slow')")}
            slow, quick = rows.get("slow"), rows.get("quick")
            if (slow and quick and quick["status"] == "done" and slow["status"] == "running"
                    and _node_local_processes(Path(slow["run_dir"]))):
                cluster.kill_raylet("worker2")
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_node_under_slow)
    killer.start()
    try:
        loop.run()
    finally:
        killer.join()
        loop.executor.close()
    sid = loop.session_id
    exps = {e.description: e for e in ledger.experiments(sid)}
    slow_runs = [r for r in ledger.runs(sid) if r.experiment_id == exps["slow"].id]
    assert [(r.status, r.worker) for r in slow_runs] == [(RunStatus.LOST, slots["H200"]), (RunStatus.DONE, slots["H100"])]
    assert "died" in (slow_runs[0].reason or "")
    assert exps["slow"].decision == Decision.DISCARDED and exps["quick"].decision == Decision.DISCARDED
    assert "val_bpb:" in (Path(slow_runs[1].run_dir or "") / "run.log").read_text()
    assert loop.stop_reason == "the researcher has nothing more to propose"
