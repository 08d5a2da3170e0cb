"""The SkyPilot executor and fleet.toml: real sky.Task/Resources, a fake cloud at the SDK boundary.

The fake (``tests/fake_sky.py``) runs the tasks' setup and run commands as local
processes in one folder per cluster, so the harness, git, the setup cache and the
log/result round trip through ``tail_logs`` are all real.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

sky = pytest.importorskip("sky", reason="SkyPilot is not installed (pip install 'labfleet[skypilot]')")

from labfleet.errors import ConfigError  # noqa: E402
from labfleet.executors import conformance  # noqa: E402
from labfleet.executors.base import ExecutorError, Job  # noqa: E402
from labfleet.executors.skypilot import SkyPilotExecutor, export_bundle, parse_job_log  # noqa: E402
from labfleet.fleet import Fleet, load_fleet, parse_fleet_toml  # noqa: E402
from labfleet.harness import Outcome, RunRequest, read_result  # noqa: E402
from labfleet.ledger import Ledger  # noqa: E402
from labfleet.records import Proposal, RunStatus  # noqa: E402
from labfleet.session import SessionConfig, SessionLoop, start_session  # noqa: E402
from labfleet.target import load_target  # noqa: E402
from labfleet.testing.targets import KNOB_TRAIN  # noqa: E402
from tests.conftest import Scripted, lab  # noqa: E402
from tests.fake_sky import FakeSky  # noqa: E402

SEED_FLEET = """\
[[pool]]
name = "h100"              # optional; default from the accelerator
accelerators = "H100:1"    # per cluster
count = 13                 # clusters (= worker slots) in this pool
infra = "k8s"
price_per_hour = 2.49
idle_minutes = 10
use_spot = false
managed = false
[[pool]]
accelerators = "H200:1"
count = 3
infra = "k8s"
price_per_hour = 3.59
"""

KEY_LIKE = re.compile(r"(sk-|key|token|secret|password)", re.IGNORECASE)


def small_fleet(h100: int = 1, h200: int = 0, **extra: object) -> Fleet:
    text = f'[[pool]]\naccelerators = "H100:1"\ncount = {h100}\nprice_per_hour = 2.49\n'
    text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    if h200:
        text += f'[[pool]]\naccelerators = "H200:1"\ncount = {h200}\nprice_per_hour = 3.59\n'
    return parse_fleet_toml(text)


@pytest.fixture
def cloud(tmp_path):
    fake = FakeSky(tmp_path / "cloud", launch_seconds=0.1)
    yield fake
    fake.shutdown()


# --------------------------------------------------------------------------- fleet.toml


def test_seed_fleet_loads_with_workers_prices_and_cost(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(SEED_FLEET)
    fleet = load_fleet(path)
    workers = fleet.workers()
    assert len(workers) == 16
    assert [w.id for w in workers[:2]] == ["h100-0", "h100-1"] and workers[-1].id == "h200-2"
    assert {w.hardware for w in workers} == {"H100", "H200"}
    assert {(w.hardware, w.price_per_hour) for w in workers} == {("H100", 2.49), ("H200", 3.59)}
    assert fleet.cost_per_hour() == pytest.approx(43.14)
    text = "\n".join(fleet.describe())
    assert "pool h100: 13 x H100:1 on k8s" in text and "pool h200: 3 x H200:1 on k8s" in text
    assert "labfleet-h100-0 .. labfleet-h100-12" in text
    assert "labfleet-h200-0, labfleet-h200-1, labfleet-h200-2" in text
    assert "$32.37/h for the pool" in text and "$10.77/h for the pool" in text
    assert fleet.describe()[-1] == "total: 16 clusters, $43.14/h"


@pytest.mark.parametrize("text, message", [
    ('[[pool]]\ncount = 2\n', "pool.0.accelerators: Field required"),
    ('[[pool]]\naccelerators = "H100:1"\ncount = 0\n', "pool.0.count: Input should be greater than 0"),
    ('[[pool]]\naccelerators = "H100:1"\ncount = 1\ngpus = 2\n', "pool.0.gpus: unknown key"),
    ('[[pool]\naccelerators = "H100:1"\n', "invalid TOML"),
    ('[[pool]]\naccelerators = "H100 x1"\ncount = 1\n', "pool.0.accelerators"),
    ('[[pool]]\naccelerators = "H100:1"\ncount = 1\n[[pool]]\naccelerators = "H100:2"\ncount = 1\n',
     "pool name 'h100' is used twice"),
    ("", "pool: Field required"),
])
def test_bad_fleet_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_fleet(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_missing_fleet_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read fleet file"):
        load_fleet(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- real Task / Resources


def _job(tmp_path: Path, run_id: int = 5, worker: str = "h100-0") -> Job:
    folder = lab(tmp_path)
    request = RunRequest(target_dir=folder, run_dir=tmp_path / "runs" / f"r{run_id}", seed=3,
                         budget_seconds=2.0, device="cuda", threads=2)
    return Job(run_id=run_id, worker_id=worker, request=request)


def test_tasks_are_real_skypilot_objects(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-leak")
    fleet = small_fleet(h100=1, infra="gcp/us-central1", use_spot=True)
    executor = SkyPilotExecutor(fleet, sdk=sky, labfleet_spec="labfleet==0.1.0")
    job = _job(tmp_path)
    bundle, budget = export_bundle(job, "labfleet-r5-abc")
    try:
        task = executor.experiment_task(job, bundle, budget, "LABFLEET-0123456789abcdef")
        assert isinstance(task, sky.Task)
        [resources] = list(task.resources)
        assert isinstance(resources, sky.Resources)
        assert resources.accelerators == {"H100": 1} and resources.use_spot
        assert str(resources.cloud) == "GCP" and resources.region == "us-central1"
        assert task.workdir == str(bundle.root)
        assert (bundle.root / "labfleet-r5-abc" / "target" / "train.py").read_text() == KNOB_TRAIN
        remote = json.loads((bundle.root / "labfleet-r5-abc" / "request.json").read_text())
        assert remote["target_dir"] == "target" and remote["run_dir"] == "run" and remote["commit"] == "HEAD"
        assert remote["seed"] == 3 and remote["device"] == "cuda" and remote["cache_root"] is None
        assert "python -m labfleet.harness request.json" in task.run
        assert "mv labfleet-r5-abc" in task.run and "LABFLEET-0123456789abcdef:result" in task.run
        assert task.envs["LABFLEET_BUDGET_SECONDS"] == "2" and task.envs["LABFLEET_SEED"] == "3"
        assert task.envs["LABFLEET_DEVICE"] == "cuda" and task.envs["LABFLEET_THREADS"] == "2"
        assert not any(KEY_LIKE.search(k) or KEY_LIKE.search(v) for k, v in task.envs.items())
        config = task.to_yaml_config()
        assert config["resources"]["infra"] == "gcp/us-central1" and config["resources"]["use_spot"] is True
        assert "sk-ant" not in json.dumps(config)

        setup = executor.setup_task(job, bundle)
        assert "python -m pip install --quiet labfleet==0.1.0" in setup.setup
        assert "python -m labfleet prepare -C labfleet-r5-abc/target" in setup.setup
        assert setup.run is None and setup.to_yaml_config()["resources"]["accelerators"] == {"H100": 1}
    finally:
        bundle.cleanup()


def test_job_log_round_trip_strips_prefixes_and_takes_the_last_result():
    nonce = "LABFLEET-00000000deadbeef"
    text = (
        f"(task, pid=7) {nonce}:result {{\"fake\": 1}}\n"  # printed by the experiment: superseded
        f"(task, pid=7) {nonce}:log-begin\n(task, pid=7) step 1\n(task, pid=7) ---\n(task, pid=7) \n"
        f"(task, pid=7) {nonce}:log-end\n(task, pid=7) {nonce}:result {{\"outcome\": \"ok\"}}\n"
    )
    log, result = parse_job_log(text, nonce)
    assert log == "step 1\n---\n" and result == {"outcome": "ok"}


def test_missing_skypilot_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sky(name, *args, **kwargs):
        if name == "sky":
            raise ImportError("no sky")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sky)
    executor = SkyPilotExecutor(small_fleet())
    with pytest.raises(ExecutorError, match=r"pip install 'labfleet\[skypilot\]'"):
        executor.sky  # noqa: B018


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_skypilot_executor_conformance(check, tmp_path, cloud):
    # one fake cloud shared by every executor a check builds: the adopt check restarts the orchestrator
    def factory(workers: int) -> SkyPilotExecutor:
        return SkyPilotExecutor(small_fleet(h100=workers), sdk=cloud, labfleet_spec=None, poll_seconds=0.1)

    check(factory, tmp_path)


# --------------------------------------------------------------------------- the cluster life cycle


def _poll_until(executor: SkyPilotExecutor, count: int, timeout: float = 40.0) -> list:
    finished: list = []
    deadline = time.monotonic() + timeout
    while len(finished) < count:
        assert time.monotonic() < deadline, f"only {len(finished)} of {count} finished"
        finished += executor.poll()
        executor.wait(0.05)
    return finished


def test_setup_once_per_cluster_and_preemption_is_a_loss(tmp_path, cloud):
    folder = lab(tmp_path)
    executor = SkyPilotExecutor(small_fleet(h100=1), sdk=cloud, labfleet_spec=None, poll_seconds=0.1)
    try:
        def job(run_id: int, sleep: float = 0.0) -> Job:
            request = RunRequest(target_dir=folder, run_dir=tmp_path / "runs" / f"r{run_id}", seed=run_id)
            if sleep:
                from labfleet.target import knob_patch
                from labfleet.target import load_target as load
                request = RunRequest(target_dir=folder, run_dir=request.run_dir, seed=run_id,
                                     patch=knob_patch(load(folder), {"SLEEP": sleep}))
            return Job(run_id=run_id, worker_id="h100-0", request=request)

        t0 = time.monotonic()
        handle = executor.start(job(1))
        assert time.monotonic() - t0 < 0.5, "start must not wait for the launch"
        assert handle.startswith("labfleet-h100-0:labfleet-r1-")
        [first] = _poll_until(executor, 1)
        executor.start(job(2))
        [second] = _poll_until(executor, 1)
        for f, run_id in ((first, 1), (second, 2)):
            assert f.result is not None and f.result.outcome == Outcome.OK, f
            run_dir = tmp_path / "runs" / f"r{run_id}"
            assert "val_bpb:" in (run_dir / "run.log").read_text()
            assert read_result(run_dir).metric == f.result.metric
            assert f.result.log_path == str(run_dir / "run.log")
        assert cloud.count("launch", "labfleet-h100-0") == 1 and cloud.count("exec", "labfleet-h100-0") == 2
        setup_counts = list((cloud.root / "labfleet-h100-0" / ".cache" / "labfleet").glob("*/setup-count"))
        assert [p.read_text() for p in setup_counts] == ["1"]  # labfleet prepare at launch; runs reuse it

        executor.start(job(3, sleep=30.0))
        deadline = time.monotonic() + 20
        while not cloud.running_jobs():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        cloud.preempt("labfleet-h100-0")
        [lost] = _poll_until(executor, 1)
        assert lost.result is None and "labfleet-h100-0 is gone" in lost.reason
        # the next job on the slot launches a fresh cluster
        executor.start(job(4))
        [again] = _poll_until(executor, 1)
        assert again.result is not None and again.result.outcome == Outcome.OK
        assert cloud.count("launch", "labfleet-h100-0") == 2
    finally:
        executor.close()
    assert ("down", ("labfleet-h100-0",)) in cloud.calls and cloud.clusters == {}


def test_idle_clusters_are_taken_down_by_poll(tmp_path, cloud):
    folder = lab(tmp_path)
    now = [1000.0]
    executor = SkyPilotExecutor(small_fleet(h100=1, idle_minutes=2), sdk=cloud, labfleet_spec=None,
                                poll_seconds=0.1, clock=lambda: now[0], teardown_on_close=False)
    try:
        executor.start(Job(1, "h100-0", RunRequest(target_dir=folder, run_dir=tmp_path / "r1")))
        _poll_until(executor, 1)
        assert [c for c, _ in cloud.calls if c == "launch"] == ["launch"]
        launch_task = cloud.launched_tasks[0]
        assert launch_task.setup and ("launch", ("labfleet-h100-0",)) in cloud.calls
        now[0] += 119
        executor.poll()
        assert cloud.count("down") == 0
        now[0] += 2
        executor.poll()
        deadline = time.monotonic() + 10
        while "labfleet-h100-0" in cloud.clusters:
            assert time.monotonic() < deadline, "idle cluster was not taken down"
            time.sleep(0.05)
    finally:
        executor.close()
    assert cloud.count("down") == 1  # teardown_on_close=False: close leaves the rest to autostop


def test_managed_pool_runs_experiments_as_managed_jobs(tmp_path, cloud):
    folder = lab(tmp_path)
    executor = SkyPilotExecutor(small_fleet(h100=1, managed=True, use_spot=True), sdk=cloud,
                                labfleet_spec=None, poll_seconds=0.1)
    try:
        job = Job(1, "h100-0", RunRequest(target_dir=folder, run_dir=tmp_path / "r1", seed=1))
        handle = executor.start(job)
        assert handle.startswith("jobs:labfleet-r1-")
        [f] = _poll_until(executor, 1)
        assert f.result is not None and f.result.outcome == Outcome.OK, f
        assert cloud.count("jobs.launch") == 1 and cloud.count("launch") == 0
        # a restarted orchestrator adopts the managed job by its handle
        other = SkyPilotExecutor(small_fleet(h100=1, managed=True), sdk=cloud, labfleet_spec=None, poll_seconds=0.1)
        (tmp_path / "r1" / "result.json").unlink()
        other.adopt(job, handle)
        [g] = _poll_until(other, 1)
        assert g.result is not None and g.result.metric == f.result.metric
        other.close()
    finally:
        executor.close()


# --------------------------------------------------------------------------- a real session


def test_session_over_a_two_pool_fleet(tmp_path, cloud):
    folder = lab(tmp_path)
    fleet = small_fleet(h100=2, h200=1)
    executor = SkyPilotExecutor(fleet, sdk=cloud, labfleet_spec=None, poll_seconds=0.1)
    preempted: list[str] = []

    def on_event(event) -> None:
        # the first run of "slow" gets its cluster preempted under it
        if event.kind == "started" and "slow" in event.message and not preempted:
            cluster = "labfleet-" + event.message.split(" started on ")[1].split()[0]
            preempted.append(cluster)
            threading.Thread(target=_preempt_soon, args=(cloud, cluster), daemon=True).start()

    researcher = Scripted([
        Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
        Proposal("slow", knobs={"SLEEP": 3.0, "LEARNING_RATE": 2e-3}),
        Proposal("fewer layers", knobs={"N_LAYER": 1}),
    ])
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    config = SessionConfig(workers=len(fleet.workers()), noise_repeats=0)
    sid = start_session(target, ledger, config)
    loop = SessionLoop(target, ledger, executor, researcher, sid, config, folder / ".labfleet", on_event=on_event)
    loop.run()
    executor.close()  # the CLI closes the executor when the session ends

    runs = ledger.runs(sid)
    exps = {e.id: e for e in ledger.experiments(sid)}
    by_desc = {e.description: e for e in exps.values()}
    assert set(by_desc) == {"baseline", "lr best", "slow", "fewer layers"}
    slow_runs = [r for r in runs if r.experiment_id == by_desc["slow"].id]
    assert [r.status for r in slow_runs] == [RunStatus.LOST, RunStatus.DONE], slow_runs
    assert all(e.metric is not None for e in exps.values())
    done = [r for r in runs if r.status == RunStatus.DONE]
    for r in done:  # logs came back from the clusters into the local run dirs
        assert "val_bpb:" in Path(r.log_path).read_text()
    assert {r.hardware for r in done} <= {"H100", "H200"}
    # setup ran once per cluster launch (the preempted one was launched again if it ran more)
    calls = [c for c in cloud.calls if c[0] not in ("queue", "status")]
    assert all(c.setup_runs == 1 for c in cloud.history), calls
    launched = {k[0] for c, k in cloud.calls if c == "launch"}
    assert cloud.count("exec") >= len(runs) - 1
    # every cluster this session used is torn down at the end
    downs = {k[0] for c, k in cloud.calls if c == "down"}
    assert launched - set(preempted) <= downs and cloud.clusters == {}
    assert loop.stop_reason


def _preempt_soon(cloud: FakeSky, cluster: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(c == cluster for c, _ in cloud.running_jobs()):
            time.sleep(0.3)
            cloud.preempt(cluster)
            return
        time.sleep(0.05)

