"""The session loop with real processes, real git and a real ledger (tiny budgets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from labfleet.executors.base import Worker
from labfleet.executors.local import LocalExecutor
from labfleet.ledger import Ledger
from labfleet.records import Decision, Proposal, RunStatus, SessionState
from labfleet.session import SessionConfig, SessionError, SessionLoop, _Champion, start_session
from labfleet.target import load_target
from labfleet.testing.targets import KNOB_TRAIN
from tests.conftest import Scripted, git, lab, run_session


def test_session_keeps_improvements_and_advances_the_lineage(tmp_path):
    folder = lab(tmp_path)
    researcher = Scripted([
        Proposal("lr up", knobs={"LEARNING_RATE": 3e-3}),
        Proposal("lr way down", knobs={"LEARNING_RATE": 1e-4}),
        Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
        Proposal("fewer layers", knobs={"N_LAYER": 1}),
    ])
    ledger, loop = run_session(folder, researcher, workers=2, max_experiments=10)
    sid = loop.session_id
    exps = {e.description: e for e in ledger.experiments(sid)}
    assert exps["baseline"].decision == Decision.BASELINE
    assert exps["baseline"].metric == pytest.approx(2.02)
    assert exps["lr way down"].decision == Decision.DISCARDED
    assert exps["lr best"].decision == Decision.KEPT and exps["lr best"].metric == pytest.approx(1.02)
    # the baseline ran three seeds (to measure the noise: none here), every other experiment once,
    # and a kept one once more with a fresh seed (its first run won a selection)
    for exp in exps.values():
        runs = [r for r in ledger.runs(sid) if r.experiment_id == exp.id]
        want = 3 if exp.parent_id is None else 2 if exp.decision == Decision.KEPT else 1
        assert [r.status for r in runs] == [RunStatus.DONE] * want
    assert sorted(researcher.observed) == sorted(e.id for e in exps.values())
    # the lineage branch ends at a version holding the best knob values
    branch = f"labfleet/s{sid}"
    assert "LEARNING_RATE = 0.01" in git(folder, "show", f"{branch}:train.py")
    keeps = git(folder, "log", "--first-parent", "--format=%s", branch).splitlines()
    assert any("lr best" in k for k in keeps)
    # each experiment is an immutable commit under refs/labfleet/
    refs = git(folder, "for-each-ref", "--format=%(refname)", f"refs/labfleet/s{sid}").split()
    assert len(refs) == 4
    assert git(folder, "status", "--porcelain") == ""  # the user's work tree is untouched
    assert loop.stop_reason == "the researcher has nothing more to propose"


def test_free_workers_are_filled_and_limits_stop_proposing(tmp_path):
    folder = lab(tmp_path)
    many = [Proposal(f"lr {i}", knobs={"LEARNING_RATE": 1e-3 * (1 + i / 10)}) for i in range(1, 20)]
    researcher = Scripted(many)
    ledger, loop = run_session(folder, researcher, workers=3, max_experiments=5, noise_repeats=0)
    assert len(ledger.experiments(loop.session_id)) == 6  # baseline + 5
    assert researcher.sizes[0] == 3  # two free workers (the baseline took one) and one ahead
    assert loop.stop_reason == "reached --max-experiments 5"


def test_crashes_hangs_and_bad_patches_never_stop_the_session(tmp_path):
    folder = lab(tmp_path)
    crash = (
        "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n"
        " LEARNING_RATE = 1e-3  # step size\n+raise RuntimeError('bad idea')\n N_LAYER = 2\n"
    )
    researcher = Scripted([
        Proposal("crash", patch=crash),
        Proposal("hang", knobs={"SLEEP": 30.0}),
        Proposal("does not apply", patch="diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+yes\n"),
        Proposal("good", knobs={"LEARNING_RATE": 1e-2}),
    ])
    ledger, loop = run_session(folder, researcher, workers=2)
    results = {e.description: (e.decision, [r.status for r in ledger.runs(loop.session_id) if r.experiment_id == e.id])
               for e in ledger.experiments(loop.session_id)}
    assert results["crash"] == (Decision.FAILED, [RunStatus.CRASHED])
    assert results["hang"] == (Decision.FAILED, [RunStatus.TIMEOUT])
    assert results["does not apply"] == (Decision.FAILED, [RunStatus.REJECTED])
    assert results["good"] == (Decision.KEPT, [RunStatus.DONE, RunStatus.DONE])  # + its calibration run


def test_a_lost_run_is_retried(tmp_path):
    folder = lab(tmp_path)
    researcher = Scripted([Proposal("slow", knobs={"SLEEP": 3.0, "LEARNING_RATE": 1e-2})])
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=1)
    sid = start_session(target, ledger, cfg)
    loop = SessionLoop(target, ledger, LocalExecutor(1), researcher, sid, cfg, folder / ".labfleet")

    def kill_first_slow_harness() -> None:
        reader = Ledger.for_target(folder / ".labfleet")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = reader.db.execute(
                "SELECT r.handle FROM runs r JOIN experiments e ON e.id = r.experiment_id"
                " WHERE e.description = 'slow' AND r.status = 'running' AND r.handle IS NOT NULL"
            ).fetchone()
            if row:
                time.sleep(0.5)
                os.killpg(int(row["handle"]), signal.SIGKILL)  # the worker "disappears"
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_slow_harness)
    killer.start()
    loop.run()
    killer.join()
    slow = next(e for e in ledger.experiments(sid) if e.description == "slow")
    statuses = [r.status for r in ledger.runs(sid) if r.experiment_id == slow.id]
    assert statuses == [RunStatus.LOST, RunStatus.DONE, RunStatus.DONE]  # retried; then calibrated as the champion
    assert slow.decision == Decision.KEPT


def test_failing_baseline_stops_with_a_clear_error(tmp_path):
    folder = lab(tmp_path, KNOB_TRAIN.replace("time.sleep(SLEEP)", "raise SystemExit('no GPU here')"))
    with pytest.raises(SessionError, match="the baseline run crashed"):
        run_session(folder, Scripted([]), workers=1)


def test_dirty_target_is_refused(tmp_path):
    folder = lab(tmp_path)
    (folder / "train.py").write_text("# edited\n")
    ledger = Ledger.for_target(folder / ".labfleet")
    with pytest.raises(SessionError, match=r"uncommitted changes \(train.py\)"):
        start_session(load_target(folder, check_files=False), ledger, SessionConfig())


def test_champion_is_compared_within_a_hardware_class(tmp_path):
    """An H200 runs more steps in the same budget: a result is compared with the champion's on its class."""
    folder = lab(tmp_path)
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=1)
    sid = start_session(target, ledger, cfg)
    loop = SessionLoop(target, ledger, LocalExecutor(1), Scripted([]), sid, cfg, folder / ".labfleet")
    baseline = loop.baseline()
    assert baseline is not None
    first = ledger.runs(sid)[0].id
    ledger.db.execute("UPDATE runs SET status = 'running', hardware = 'H100', budget_seconds = 1 WHERE id = ?", (first,))
    ledger.finish_run(first, RunStatus.DONE, metric=1.00)
    loop.recover()  # reads the samples, decides the baseline
    assert loop.champion.metric == 1.00
    b = baseline.id
    loop.samples[(b, "H100", 1.0)].append(1.02)
    loop.samples[(b, "H200", 1.0)] = loop.unbiased[(b, "H200", 1.0)] = [0.95]
    assert loop.champion_metrics("H100", 1.0) == [1.00, 1.02]
    assert loop.champion_metrics("H200", 1.0) == [0.95]
    assert loop.champion_metrics("A100", 1.0) == [1.00]  # never measured there: its own metric
    # a champion measured only on H100 is compared on H200 through the measured offset
    loop.champion = _Champion(replace(baseline, id=99), 0.90)
    loop.samples[(99, "H100", 1.0)] = [0.88, 0.90]  # its lucky screening run, then a fresh seed
    loop.unbiased[(99, "H100", 1.0)] = [0.90]
    assert loop.champion_metrics("H100", 1.0) == [0.90]  # the fresh seed only: no winner's luck
    assert loop.hardware_offset("H200", "H100", 1.0) == pytest.approx(0.95 - 1.01)
    assert loop.champion_metrics("H200", 1.0) == [pytest.approx(0.90 + 0.95 - 1.01)]


def test_calibration_queues_the_baseline_on_every_class_once(tmp_path):
    folder = lab(tmp_path)
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=2, noise_repeats=2)
    sid = start_session(target, ledger, cfg)
    fleet = LocalExecutor(1, hardware="H100")
    fleet._workers.append(Worker("h200-0", "H200"))
    loop = SessionLoop(target, ledger, fleet, Scripted([]), sid, cfg, folder / ".labfleet")
    loop.plan_calibration()
    loop.plan_calibration()  # a resume adds nothing
    runs = ledger.runs(sid)
    assert sorted((r.place_on, r.role, r.seed) for r in runs) == [
        ("H100", "noise", 1), ("H100", "noise", 2), ("H100", "screen", None),
        ("H200", "calibrate", 3), ("H200", "noise", 4), ("H200", "noise", 5),
    ]


class AfterBaseline(Scripted):
    """Has ideas only once the baseline's result is known."""

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or state.baseline.decision != Decision.BASELINE:
            self.sizes.append(0)
            return []
        return super().propose(state, n)


def test_a_researcher_without_ideas_is_asked_again_after_a_result(tmp_path):
    folder = lab(tmp_path)
    researcher = AfterBaseline([Proposal("lr best", knobs={"LEARNING_RATE": 1e-2})])
    ledger, loop = run_session(folder, researcher, workers=2, noise_repeats=0)
    assert researcher.sizes[0] == 0  # asked while the baseline ran: nothing yet
    assert [e.description for e in ledger.experiments(loop.session_id)] == ["baseline", "lr best"]
    assert loop.stop_reason == "the researcher has nothing more to propose"


class Metered(Scripted):
    """Reports a model call per proposal round, the way the LLM researcher does; the first call fails."""

    def __init__(self, proposals):
        super().__init__(proposals)
        self.calls: list[dict] = []
        self.asked = 0

    def propose(self, state, n):
        self.asked += 1
        if self.asked == 1:  # the provider is down: nothing proposed, nothing lost
            self.calls.append({"provider": "fake", "model": "m", "ok": False, "error": "HTTP 500",
                               "input_tokens": 0, "output_tokens": 0, "usd": 0.0})
            return []
        out = super().propose(state, n)
        self.calls.append({"provider": "fake", "model": "m", "input_tokens": 1000 if out else 10,
                           "output_tokens": 200 if out else 5, "usd": 0.01 if out else 0.0, "ok": True})
        return out

    def drain_usage(self):
        out, self.calls = self.calls, []
        return out


def test_model_calls_are_recorded_and_summed(tmp_path):
    from labfleet.views import status_view

    folder = lab(tmp_path)
    researcher = Metered([Proposal("lr best", knobs={"LEARNING_RATE": 1e-2})])
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=1, noise_repeats=0)
    sid = start_session(target, ledger, cfg)
    loop = SessionLoop(target, ledger, LocalExecutor(1), researcher, sid, cfg, folder / ".labfleet",
                       outage_waits=(1.0, 2.0))
    loop.run()
    # the failed call paused proposing (it did not end the session); the retry proposed, and it was kept
    assert [e.description for e in ledger.experiments(sid)] == ["baseline", "lr best"]
    assert ledger.experiments(sid)[1].decision == Decision.KEPT
    llm = status_view(ledger, folder / ".labfleet", sid)["llm"]
    assert llm["calls"] >= 3 and llm["failed"] == 1
    assert llm["input_tokens"] >= 1000 and llm["usd"] == pytest.approx(0.01)


class Listening(Scripted):
    """Reads the analysis in words, as the LLM researcher does."""

    wants_findings = True

    def __init__(self, proposals):
        super().__init__(proposals)
        self.findings: list[tuple[str, ...]] = []

    def propose(self, state, n):
        self.findings.append(state.findings)
        return super().propose(state, n)


def test_researchers_that_read_findings_get_the_analysis_in_words(tmp_path):
    folder = lab(tmp_path)
    researcher = Listening([Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
                            Proposal("fewer layers", knobs={"N_LAYER": 1})])
    run_session(folder, researcher, workers=1, noise_repeats=0)
    last = researcher.findings[-1]
    assert any(line.startswith("phase 1") and "val_bpb improved by" in line for line in last), last
    assert Scripted([]).wants_findings is False  # others never pay for it


# ----------------------------------------------------------------------------- the researcher off the loop


class Sleepy(Scripted):
    """Takes ``seconds`` of real time per propose call, as a model call does."""

    def __init__(self, proposals, seconds: float) -> None:
        super().__init__(proposals)
        self.seconds = seconds

    def propose(self, state, n):
        time.sleep(self.seconds)
        return super().propose(state, n)


def test_a_slow_researcher_never_leaves_the_workers_waiting(tmp_path):
    """propose() takes 1.5 s, runs ~2.5 s: calls run while both workers train, one call feeds several runs."""
    folder = lab(tmp_path)
    proposals = [Proposal(f"lr {k}", knobs={"LEARNING_RATE": 1e-3 * (1 + k / 10), "SLEEP": 2.0}) for k in range(10)]
    researcher = Sleepy(proposals, 1.5)
    ledger, loop = run_session(folder, researcher, workers=2, noise_repeats=0, keep="margin", max_experiments=10)
    runs = [r for r in ledger.runs(loop.session_id) if r.started_at and r.ended_at]
    assert len([r for r in runs if r.role == "screen" and r.experiment_id != loop.baseline().id]) == 10
    # per worker, the time between one run's end and the next one's start (screens, and the
    # champions' calibration runs): a blocking call would leave a worker waiting >= 1.5 s for
    # every proposal; queued proposals start at once
    gaps = []
    for worker in {r.worker for r in runs}:
        mine = sorted((r for r in runs if r.worker == worker), key=lambda r: r.started_at)
        gaps += [b.started_at - a.ended_at for a, b in zip(mine, mine[1:])]
    gaps.sort()
    assert gaps and gaps[len(gaps) // 2] < 1.0, gaps  # median gap (slack for a loaded 2-core machine)
    first, last = min(r.started_at for r in runs), max(r.ended_at for r in runs)
    busy = sum(r.ended_at - r.started_at for r in runs)
    assert busy / (2 * (last - first)) > 0.7
    calls = [json.loads(r["data"]) for r in ledger.db.execute(
        "SELECT data FROM events WHERE session_id = ? AND kind = 'researcher_call'", (loop.session_id,))]
    assert sum(c["got"] for c in calls) == 10 and len(calls) < 10  # never one call per freed worker
    assert max(c["asked"] for c in calls) >= 2


class Troubled(Scripted):
    """The first call raises, the second hangs past the timeout (then answers late), then fine."""

    def __init__(self, proposals) -> None:
        super().__init__(proposals)
        self.calls = 0

    def propose(self, state, n):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the model provider is down")
        if self.calls == 2:
            time.sleep(2.5)
        return super().propose(state, n)


def test_a_researcher_that_raises_or_hangs_is_backed_off_and_nothing_is_lost(tmp_path):
    folder = lab(tmp_path)
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=2, noise_repeats=0, keep="margin", researcher_timeout=1.0)
    sid = start_session(target, ledger, cfg)
    proposals = [Proposal(f"lr {k}", knobs={"LEARNING_RATE": 1e-3 * (2 + k)}) for k in range(4)]
    researcher = Troubled(proposals)
    events = []
    loop = SessionLoop(target, ledger, LocalExecutor(2), researcher, sid, cfg, folder / ".labfleet",
                       on_event=events.append, outage_waits=(0.3, 0.6))
    assert loop.run() == "the researcher has nothing more to propose"
    descriptions = [e.description for e in ledger.experiments(sid)]
    assert sorted(descriptions[1:]) == sorted(p.description for p in proposals)  # each exactly once
    assert all(e.decision != Decision.PENDING for e in ledger.experiments(sid))
    kinds = [r["kind"] for r in ledger.db.execute("SELECT kind FROM events WHERE session_id = ?", (sid,))]
    assert "researcher_timeout" in kinds
    errors = [json.loads(r["data"])["error"] for r in ledger.db.execute(
        "SELECT data FROM events WHERE session_id = ? AND kind = 'researcher_call'", (sid,))]
    assert any("the model provider is down" in e for e in errors)
    assert any(e.kind == "researcher_error" for e in events)


def test_kill_9_during_a_pending_model_call_then_resume(tmp_path):
    """The orchestrator dies while the model thinks: on resume it asks again; nothing is lost or run twice."""
    from tests.conftest import run_cli
    from tests.fake_llm import FakeLLM, Reply

    folder = lab(tmp_path)
    first_call = threading.Event()
    release = threading.Event()
    wave = [{"description": f"LEARNING_RATE 1e-3 -> {v}", "hypothesis": "a larger step",
             "edits": [{"file": "train.py", "search": "LEARNING_RATE = 1e-3", "replace": f"LEARNING_RATE = {v}"}]}
            for v in ("3e-3", "5e-3")]
    answered: list[int] = []

    def model(request):
        if not first_call.is_set():
            first_call.set()
            release.wait(60)  # the orchestrator is killed while this call is pending
            return Reply(wave)
        answered.append(1)
        return Reply(wave if len(answered) == 1 else [])

    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-test-kill", "COLUMNS": "200"}
    args = ["--researcher", "llm", "--provider", "anthropic", "--model", "fake-model", "--workers", "2",
            "--max-experiments", "2", "--keep", "margin", "--noise-repeats", "0"]
    with FakeLLM() as fake:
        fake.responder = model
        proc = subprocess.Popen([sys.executable, "-m", "labfleet", "run", "-C", str(folder), *args,
                                 "--base-url", fake.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        assert first_call.wait(120), "the model was never asked"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        release.set()
        again = run_cli("run", "-C", str(folder), "--base-url", fake.url, env={"ANTHROPIC_API_KEY": "sk-test-kill"})
    assert again.returncode == 0, again.stdout + again.stderr
    ledger = Ledger(folder / ".labfleet" / "ledger.sqlite")
    exps = ledger.experiments(1)
    assert sorted(e.description for e in exps[1:]) == sorted(w["description"] for w in wave)  # once each
    for exp in exps[1:]:
        screens = [r for r in ledger.runs_of(exp.id) if r.role == "screen" and r.status != RunStatus.LOST]
        assert len(screens) == 1 and screens[0].status == RunStatus.DONE
        assert exp.decision in (Decision.KEPT, Decision.DISCARDED)
    ledger.close()
