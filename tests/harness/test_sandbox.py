"""Every run in a box: each test makes an attack from train.py and asserts the defence.

Tests that need the box (bubblewrap on Linux) are skipped, with the reason, where it
cannot be built; the fallback's tests run everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labfleet import frozen, harness, sandbox, workspace
from labfleet.executors.base import Job
from labfleet.executors.local import LocalExecutor
from labfleet.harness import Outcome, RunRequest, eval_allowance, run_experiment
from labfleet.ledger import Ledger
from labfleet.records import Decision, Proposal, RunStatus
from labfleet.session import SessionConfig, start_session
from labfleet.target import load_target, parse_config, unified_diff
from tests.conftest import Scripted, git, make_target, processes_with, run_cli, run_session

BOX = sandbox.support()
boxed = pytest.mark.skipif(not BOX.boxed, reason=f"the box cannot be built here: {BOX.detail}")


def run(target: Path, tmp_path: Path, name: str = "run", **kwargs) -> harness.RunResult:
    return run_experiment(RunRequest(target_dir=target, run_dir=tmp_path / "runs" / name, **kwargs))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- budget


OVER_TRAIN = """\
import os, time, evalkit
BUDGET = float(os.environ["LABFLEET_BUDGET_SECONDS"])
started = time.process_time()
while time.process_time() - started < 5 * BUDGET:  # "a better schedule": trains five times its budget
    pass
evalkit.report(0.5, training_seconds=BUDGET)  # and says it trained for the budget
"""


def test_a_run_that_trains_five_times_its_budget_is_over_budget(target_factory, tmp_path):
    target = target_factory(OVER_TRAIN, budget=1, timeout=30, extra_toml="eval_allowance_seconds = 1.5\n")
    started = time.monotonic()
    result = run(target, tmp_path)
    assert result.outcome == Outcome.OVER_BUDGET
    assert "measured by the harness" in result.reason and "1.5 s evaluation allowance" in result.reason
    assert "CPU-s per thread" in result.reason
    assert result.metric is None  # never compared
    assert time.monotonic() - started < 25  # stopped at budget + allowance, not at the 30 s timeout
    assert 2.5 <= result.cpu_seconds < 4.5  # stopped soon after it passed 1 s + 1.5 s
    assert RunStatus.from_outcome(result.outcome) == RunStatus.OVER_BUDGET
    # the honest script under the same allowance is fine
    honest = make_target(tmp_path / "honest", budget=1, timeout=30, extra_toml="eval_allowance_seconds = 1.5\n")
    assert run(honest, tmp_path, "honest").outcome == Outcome.OK


def test_the_default_allowance_is_stated_and_capped_by_the_timeout(target_factory, tmp_path):
    spec = parse_config(
        '[target]\nname="t"\neditable=["a.py"]\nrun="x"\nmetric="m"\nbudget_seconds=30\ntimeout_seconds=90\n'
    ).target
    assert eval_allowance(spec, 30) == 15 and eval_allowance(spec, 300) == 150
    # a run past the hard timeout before the allowance is a timeout, as before
    target = target_factory(OVER_TRAIN, budget=1, timeout=3)
    assert run(target, tmp_path).outcome == Outcome.TIMEOUT


EXTRA_TRAIN = """\
import math, time, evalkit

LEARNING_RATE = 1e-3  # step size
EXTRA = 0.0  # CPU seconds of training beyond the budget
started = time.process_time()
while time.process_time() - started < EXTRA:
    pass
evalkit.report(1.0 + (math.log10(LEARNING_RATE) + 2) ** 2)
"""
EXTRA_TOML = """eval_allowance_seconds = 2

[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
EXTRA = { file = "train.py", low = 0.0, high = 30.0 }
"""


def test_an_over_budget_experiment_is_never_kept(tmp_path):
    folder = make_target(tmp_path / "lab", EXTRA_TRAIN, extra_toml=EXTRA_TOML, budget=1, timeout=40)
    # the best learning rate, plus 8 s of extra training: the best metric, if it counted
    researcher = Scripted([Proposal("lr best, trained longer", knobs={"LEARNING_RATE": 1e-2, "EXTRA": 8.0})])
    ledger, loop = run_session(folder, researcher, workers=2, noise_repeats=0)
    exp = next(e for e in ledger.experiments(loop.session_id) if e.description.startswith("lr best"))
    assert exp.decision == Decision.FAILED
    assert [r.status for r in ledger.runs_of(exp.id)] == [RunStatus.OVER_BUDGET]
    branch = f"labfleet/s{loop.session_id}"
    assert "EXTRA = 0.0" in git(folder, "show", f"{branch}:train.py")  # the lineage did not move


# --------------------------------------------------------------------------- escapes


DAEMON_TRAIN = """\
import os, subprocess, sys, evalkit
forge = '''
import json, os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()  # double-forked, its own session: not in the run's process group
time.sleep(1.5)
forged = {"outcome": "ok", "metric": 0.001}
open("../result.json", "w").write(json.dumps(forged))
open("../forged.marker", "w").write("the daemon outlived the run")
time.sleep(60)
'''
subprocess.Popen([sys.executable, "-c", forge, "TOKEN"], start_new_session=True).wait()
evalkit.report(1.5)
"""


@boxed
def test_a_double_forked_daemon_dies_with_the_run(target_factory, tmp_path):
    token = f"daemon-{os.getpid()}-{time.monotonic_ns()}"
    target = target_factory(DAEMON_TRAIN.replace("TOKEN", token))
    result = run(target, tmp_path)
    assert result.outcome == Outcome.OK and result.metric == pytest.approx(1.5)
    assert not processes_with(token)  # the box's PID namespace is gone: the daemon with it
    time.sleep(2.0)  # past the moment the daemon would have forged the result
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "forged.marker").exists()
    assert harness.read_result(run_dir).metric == pytest.approx(1.5)


@boxed
def test_a_daemon_is_gone_at_the_hard_timeout_too(target_factory, tmp_path):
    token = f"hang-{os.getpid()}-{time.monotonic_ns()}"
    train = DAEMON_TRAIN.replace("TOKEN", token).replace("evalkit.report(1.5)", "import time; time.sleep(60)")
    result = run(target_factory(train, budget=0.5, timeout=2.5), tmp_path)
    assert result.outcome == Outcome.TIMEOUT
    assert not processes_with(token)


# --------------------------------------------------------------------------- writes outside the run


ESCAPE_TRAIN = """\
import json, os, pathlib, evalkit
target = pathlib.Path(TARGET)
cache = pathlib.Path(os.environ["LABFLEET_CACHE_DIR"])
attempts = {}
def attempt(name, fn):
    try:
        fn()
        attempts[name] = "written"
    except OSError as exc:
        attempts[name] = type(exc).__name__
attempt("ledger", lambda: (target / ".labfleet" / "ledger.sqlite").open("r+b").write(b"forged"))
attempt("cache", lambda: (cache / "data.txt").write_text("poisoned"))
attempt("git", lambda: (target / ".git" / "config").open("a").write("[core]\\n\\tfsmonitor = touch /tmp/x\\n"))
attempt("work tree", lambda: (target / "prepare.py").write_text("print('edited')"))
attempt("run.log", lambda: os.replace("../run.log", "../moved.log"))
# a symlink where the harness writes its result: written through, it would rewrite the ledger
os.symlink(target / ".labfleet" / "ledger.sqlite", "../result.json.tmp")
pathlib.Path("attempts.json").write_text(json.dumps(attempts))
evalkit.report(1.5)
"""


@boxed
def test_a_run_cannot_write_the_ledger_the_setup_cache_or_the_target_git(tmp_path):
    folder = tmp_path / "lab"
    target = make_target(folder, ESCAPE_TRAIN.replace("TARGET", repr(str(folder))))
    ledger = Ledger.for_target(target / ".labfleet")
    sid = start_session(load_target(target), ledger, SessionConfig())
    ledger.close()
    cache_dir, _, _ = harness.prepare(target)
    watched = [target / ".labfleet" / "ledger.sqlite", cache_dir / "data.txt", target / ".git" / "config",
               target / "prepare.py", target / ".labfleet" / "frozen.json"]
    before = {p: sha(p) for p in watched}
    result = run(target, tmp_path)
    assert result.outcome == Outcome.OK, result.reason
    attempts = json.loads((tmp_path / "runs" / "run" / "src" / "attempts.json").read_text())
    assert "written" not in attempts.values(), attempts
    assert {p: sha(p) for p in watched} == before
    assert (tmp_path / "runs" / "run" / "run.log").is_file()
    result_file = tmp_path / "runs" / "run" / "result.json"
    assert not result_file.is_symlink() and json.loads(result_file.read_text())["metric"] == pytest.approx(1.5)
    assert Ledger.for_target(target / ".labfleet").session(sid) is not None  # still a sound ledger


def test_a_planted_result_symlink_is_never_written_through_even_unboxed(target_factory, tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.BOX_ENV, "off")
    sandbox.support.cache_clear()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    train = f"import os, evalkit\nos.symlink({str(victim)!r}, '../result.json.tmp')\nevalkit.report(1.5)\n"
    try:
        result = run(target_factory(train), tmp_path)
    finally:
        monkeypatch.delenv(sandbox.BOX_ENV)
        sandbox.support.cache_clear()
    assert result.outcome == Outcome.OK
    assert victim.read_text() == "precious"
    assert any("NOT boxed" in flag for flag in result.flags)  # the fallback says so on the result


def test_orchestrator_git_runs_no_repository_hooks_or_fsmonitor(target_factory, tmp_path):
    target = target_factory()
    marker = tmp_path / "executed"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    # what a run without the box could plant in the target's .git
    git(target, "config", "core.fsmonitor", str(script))
    hook = target / ".git" / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    (target / "train.py").write_text((target / "train.py").read_text() + "\n")  # a modified file for status
    assert workspace.dirty_files(target) == ["train.py"]
    head = workspace.resolve(target)
    workspace.update_ref(target, "refs/heads/probe", head)  # would run the reference-transaction hook
    workspace.export_tree(target, head, tmp_path / "export")
    assert not marker.exists()
    # the planted config is real: plain git does run it
    subprocess.run(["git", "-C", str(target), "status", "--porcelain"], capture_output=True)
    assert marker.exists()


# --------------------------------------------------------------------------- logs


FLOOD_TRAIN = """\
import os, sys, evalkit
line = b"x" * 1023 + b"\\n"
chunk = line * 1024  # 1 MiB
for _ in range(300):
    os.write(1, chunk)
evalkit.report(1.5)
"""

MEASURE = """\
import sys
from pathlib import Path
from labfleet.harness import RunRequest, run_experiment
result = run_experiment(RunRequest(target_dir=Path(sys.argv[1]), run_dir=Path(sys.argv[2]), cache_root=Path(sys.argv[3])))
# VmHWM is this process's own peak (reset by exec); ru_maxrss is not: Linux carries the
# forking parent's RSS over exec, so inside a big pytest process it measured pytest
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(result.outcome, result.metric, peak_kb // 1024)
"""


def test_a_300_mb_flood_leaves_a_capped_log_and_a_bounded_harness(target_factory, tmp_path):
    target = target_factory(FLOOD_TRAIN, timeout=60, extra_toml="eval_allowance_seconds = 50\n")
    run_dir = tmp_path / "runs" / "flood"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(target), str(run_dir), str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outcome, metric, peak_mb = proc.stdout.split()
    assert (outcome, float(metric)) == ("ok", 1.5)  # the metric block at the end survives the cut
    log = run_dir / "run.log"
    assert log.stat().st_size < harness.logs.LOG_HEAD_BYTES + harness.logs.LOG_TAIL_BYTES + 4096
    text = harness.logs.read_bounded(log)
    assert "bytes of output cut here" in text
    cut = int(text.split("[labfleet: ")[1].split(" bytes")[0])
    assert cut > 290 * 1024 * 1024
    assert int(peak_mb) < 150, f"harness peak RSS {peak_mb} MiB"  # 300 MB passed through it


def test_every_log_reader_is_bounded(tmp_path):
    from labfleet import agents, logs
    from labfleet.executors import ray as ray_executor
    from labfleet.researchers.view import Sources

    big = tmp_path / "big.log"
    with big.open("wb") as f:
        f.seek(2 * 1024**3)  # 2 GiB of zeros before it (sparse: costs no disk)
        f.write(b"\nlast line\n")
    for tail in (agents._tail(str(big)), Sources(tmp_path, (), (), "m", "minimize").log_tail(str(big), 30), harness._log_tail(big),
                 ray_executor._tail(big, 1024)):
        assert tail.splitlines()[-1] == "last line"
    text = logs.read_bounded(big, limit=1024)
    assert len(text) < 2048 and "bytes not read here" in text and text.endswith("last line\n")


# --------------------------------------------------------------------------- resources


RESOURCES_TRAIN = """\
import os, tempfile, evalkit
with tempfile.NamedTemporaryFile() as f:  # /tmp is read-only in the box: TMPDIR is in the run dir
    f.write(b"scratch")
evalkit.report(1.5, cpus=len(os.sched_getaffinity(0)), cpu_list="cpu" + ",".join(map(str, sorted(os.sched_getaffinity(0)))),
               omp=os.environ["OMP_NUM_THREADS"], openblas=os.environ["OPENBLAS_NUM_THREADS"],
               visible=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), device=os.environ["LABFLEET_DEVICE"])
"""


def test_a_slot_gets_its_cpus_threads_and_one_gpu(target_factory, tmp_path):
    target = target_factory(RESOURCES_TRAIN)
    last = max(os.sched_getaffinity(0))
    result = run(target, tmp_path, cpus=[last], threads=1)
    assert (result.figures["cpus"], result.figures["cpu_list"]) == (1, f"cpu{last}")
    assert (result.figures["omp"], result.figures["openblas"]) == (1, 1)
    gpu = run(target, tmp_path, "gpu", device="cuda:1", threads=2)  # the env only: no GPU is used
    assert (gpu.figures["visible"], gpu.figures["device"], gpu.figures["omp"]) == (1, "cuda:0", 2)


def test_local_slots_are_pinned_to_their_own_cpus(target_factory, tmp_path):
    target = target_factory(RESOURCES_TRAIN)
    executor = LocalExecutor(2, threads=1)
    try:
        for i, worker in enumerate(executor.workers()):
            executor.start(Job(i + 1, worker.id, RunRequest(target_dir=target, run_dir=tmp_path / f"r{i}", threads=1)))
        done = []
        deadline = time.monotonic() + 60
        while len(done) < 2 and time.monotonic() < deadline:
            done += executor.poll()
            time.sleep(0.1)
    finally:
        executor.close()
    lists = sorted(f.result.figures["cpu_list"] for f in done)
    assert all(f.result.figures["cpus"] == 1 for f in done)
    if len(os.sched_getaffinity(0)) >= 2:
        assert len(set(lists)) == 2  # two slots, two different cores


# --------------------------------------------------------------------------- network


NET_TRAIN = """\
import socket, evalkit
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
    reached = 1
except OSError:
    reached = 0
evalkit.report(1.5, reached=reached)
"""


@boxed
def test_no_network_unless_the_target_asks(target_factory, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        train = NET_TRAIN.replace("PORT", str(port))
        closed = run(target_factory(train), tmp_path, "closed")
        opened = run(target_factory(train, extra_toml="network = true\n"), tmp_path, "open")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert closed.figures["reached"] == 0
    assert opened.figures["reached"] == 1


# --------------------------------------------------------------------------- frozen pin


def test_a_committed_edit_to_a_frozen_file_is_refused_until_accepted(tmp_path):
    folder = make_target(tmp_path / "lab")
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    start_session(target, ledger, SessionConfig())  # the first session pins the frozen files
    pin = frozen.pinned(target)
    assert pin is not None and set(pin["hashes"]) == set(target.spec.frozen)
    # a coding agent with a shell in the target halves the scores, and commits it
    (folder / "evalkit.py").write_text((folder / "evalkit.py").read_text().replace("text = f", "value /= 2\n    text = f"))
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "better evaluation")
    with pytest.raises(frozen.FrozenChanged, match="frozen file evalkit.py differs"):
        start_session(target, ledger, SessionConfig())
    assert git(folder, "status", "--porcelain") == ""
    train = (folder / "train.py").read_text()
    patch = tmp_path / "p.diff"
    patch.write_text(unified_diff("train.py", train, train.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")))
    for args in (["run", "-C", str(folder), "--new", "--max-experiments", "1"],  # a new session
                 ["run", "-C", str(folder), "--max-experiments", "1"],  # resuming the pinned one
                 ["serve", "-C", str(folder), "--hours", "0.001"],
                 ["submit", str(patch), "-C", str(folder)]):
        proc = run_cli(*args)
        assert proc.returncode == 1 and "frozen file evalkit.py differs" in proc.stderr, (args, proc.stderr)
    assert len(ledger.experiments(1)) == 1  # nothing was recorded: the baseline only
    # the explicit, logged user command
    proc = run_cli("target", "accept-frozen", "-C", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "evalkit.py" in proc.stdout
    history = frozen.pinned(target)["history"]
    assert history[-1]["changed"] == ["evalkit.py"]
    events = ledger.db.execute("SELECT data FROM events WHERE kind = 'frozen_accepted'").fetchall()
    assert json.loads(events[-1]["data"])["changed"] == ["evalkit.py"]
    start_session(target, ledger, SessionConfig())  # a new session now runs on the accepted file
    # the old session still holds the old hashes: resuming it is refused
    with pytest.raises(frozen.FrozenChanged, match="session 1 was started with a different evalkit.py"):
        frozen.check(target, json.loads(ledger.session(1)["frozen_hashes"]), 1)


def test_init_pins_and_doctor_reports(tmp_path):
    folder = tmp_path / "tg"
    assert run_cli("init", str(folder)).returncode == 0
    assert frozen.pinned(load_target(folder)) is not None
    assert git(folder, "status", "--porcelain") == ""  # the pin never dirties the repo
    report = json.loads(run_cli("doctor", "-C", str(folder), "--json").stdout)
    assert report["boxed"] == BOX.boxed and report["frozen"]["pinned"]
    assert {r["protection"] for r in report["protections"]} >= {"box (bubblewrap)", "CPU affinity per slot"}


def test_the_fallback_is_loud(tmp_path):
    proc = run_cli("doctor", "-C", str(tmp_path), env={sandbox.BOX_ENV: "off"})
    assert proc.returncode == 0
    assert "OFF" in proc.stdout and "NOT boxed" in proc.stderr


def test_a_shared_writable_folder_cannot_expose_the_target(target_factory, tmp_path):
    target = target_factory(extra_toml=f"writable = [{str(tmp_path)!r}]\n")
    result = run(target, tmp_path / "elsewhere")
    assert result.outcome == Outcome.REJECTED and "would let runs write the target" in result.reason


def test_a_slot_memory_limit_stops_a_greedy_run(target_factory, tmp_path):
    train = "import evalkit\nhog = bytearray(1024**3)\nevalkit.report(1.5)\n"
    target = target_factory(train, timeout=60)
    limited = run(target, tmp_path, "limited", memory_mb=256)
    assert limited.outcome == Outcome.CRASHED and "MemoryError" in limited.log_tail
    assert run(target, tmp_path, "free").outcome == Outcome.OK  # 1 GiB is fine without the limit


def test_a_swapped_log_is_suspect_even_unboxed(target_factory, tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.BOX_ENV, "off")
    sandbox.support.cache_clear()
    forged = "---\nval_bpb:          0.100000\n"
    train = f"import os\nopen('../forged.log', 'w').write({forged!r})\nos.replace('../forged.log', '../run.log')\n"
    try:
        result = run(target_factory(train, signed=False), tmp_path)
    finally:
        monkeypatch.delenv(sandbox.BOX_ENV)
        sandbox.support.cache_clear()
    assert result.outcome == Outcome.SUSPECT and "run.log was replaced" in result.reason


def test_an_unboxed_session_says_so_once_in_status_and_the_report(tmp_path, monkeypatch):
    from labfleet.analysis.report import build_report

    monkeypatch.setenv(sandbox.BOX_ENV, "off")  # the harness processes inherit it: no box for them
    sandbox.support.cache_clear()
    try:
        folder = make_target(tmp_path / "lab", budget=1, timeout=40)
        researcher = Scripted([Proposal("lr up", knobs={"LEARNING_RATE": 3e-3})])
        ledger, loop = run_session(folder, researcher, workers=2, noise_repeats=0)
    finally:
        monkeypatch.delenv(sandbox.BOX_ENV)
        sandbox.support.cache_clear()
    said = ledger.events_of(loop.session_id, "runs_unboxed")
    assert len(said) == 1 and said[0]["warning"].startswith(sandbox.UNBOXED_PREFIX)  # once, not per run
    status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
    assert status["box"]["runs_unboxed"] is True
    if sandbox.support().boxed:  # this machine boxes, but the session's runs were not: still said
        assert status["box"]["warning"].startswith("this session's runs were not all boxed")
    build_report(ledger, loop.session_id, tmp_path / "report", metric="val_bpb", direction="minimize")
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("WARNING: runs are NOT boxed") == 1 and 'class="alarm"' in page
