"""The simulated executor: conformance, the surrogate, the fleet parser, and a real session on a virtual clock."""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from labfleet import workspace
from labfleet.executors import conformance
from labfleet.executors.base import ExecutorError, Job, Worker
from labfleet.executors.simulated import (
    DEFAULT_EPOCH,
    SimOutcome,
    SimulatedExecutor,
    SimulatedWorld,
    Surrogate,
    VirtualClock,
    parse_fleet,
)
from labfleet.harness import Outcome, RunRequest, read_result
from labfleet.ledger import Ledger
from labfleet.records import RunStatus
from labfleet.researchers import make_researcher
from labfleet.session import SessionConfig, SessionLoop, start_session
from labfleet.target import Knob, load_target
from tests.conftest import make_target

KNOBS = {
    "LEARNING_RATE": Knob(file="train.py", low=1e-4, high=1e-1, log=True),
    "N_LAYER": Knob(file="train.py", choices=[1, 2, 3, 4]),
    "WARMUP": Knob(file="train.py", low=0.0, high=0.4),
    "BATCH": Knob(file="train.py", low=4, high=64, integer=True, log=True),
}
START = {"LEARNING_RATE": 1e-3, "N_LAYER": 2, "WARMUP": 0.1, "BATCH": 8}


# --------------------------------------------------------------------------- conformance


def conformance_model(job: Job, worker: Worker) -> SimOutcome:
    """What the conformance target's train.py does: sleep SLEEP s, crash if CRASH, else 1 + seed/100."""
    source = workspace.show_file(job.request.target_dir, job.request.commit, "train.py")
    constants = {m[1]: ast.literal_eval(m[2]) for m in re.finditer(r"^(SLEEP|CRASH) = (.+)$", source, re.MULTILINE)}
    sleep, crash = float(constants["SLEEP"]), bool(constants["CRASH"])
    if crash:
        return SimOutcome(Outcome.CRASHED, duration=sleep, log="Traceback (most recent call last):\ncrashed on purpose")
    metric = round(1.0 + job.request.seed / 100, 4)  # printed with 4 decimals, parsed back
    return SimOutcome(Outcome.OK, metric=metric, duration=sleep, log=f"---\nval_bpb: {metric:.4f}")


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_simulated_executor_conformance(check, tmp_path):
    world = SimulatedWorld()  # shared by every executor the check makes, so adopt finds the run
    check(lambda n: SimulatedExecutor(parse_fleet(f"H100:{n}"), model=conformance_model, world=world), tmp_path)


# --------------------------------------------------------------------------- helpers


def quiet(**overrides) -> Surrogate:
    """A surrogate over KNOBS without faults (and without noise unless asked)."""
    settings = dict(noise_sd=0.0, crash_rate=0.0, hang_rate=0.0, start=START)
    return Surrogate.for_target(KNOBS, seed=1, **{**settings, **overrides})


def sim_job(tmp: Path, run_id: int, worker: str, knobs=START, seed: int = 0, budget: float = 300.0) -> Job:
    request = RunRequest(target_dir=tmp / "no-target", run_dir=tmp / "runs" / f"r{run_id}", seed=seed, budget_seconds=budget)
    return Job(run_id=run_id, worker_id=worker, request=request, knobs=dict(knobs))


def run_all(executor: SimulatedExecutor) -> list:
    """Wait (virtually) until nothing is running; every Finished in order."""
    finished = []
    while executor.running():
        executor.wait(math.inf)
        finished += executor.poll()
    return finished


# --------------------------------------------------------------------------- the clock and wait


def test_virtual_clock_is_a_monotonic_callable():
    clock = VirtualClock()
    assert clock() == clock.now() == DEFAULT_EPOCH
    clock.advance_to(DEFAULT_EPOCH + 10)
    clock.advance_to(DEFAULT_EPOCH + 5)  # the past is ignored
    assert clock() == DEFAULT_EPOCH + 10
    with pytest.raises(ValueError):
        clock.advance_to(math.inf)


def test_wait_jumps_to_the_next_finish_and_never_to_infinity(tmp_path):
    clock = VirtualClock(0.0)
    executor = SimulatedExecutor(parse_fleet("H100:2"), quiet(setup_seconds=0, overhead_seconds=20), clock=clock)
    executor.wait(math.inf)  # nothing running: stays put
    assert clock() == 0.0
    executor.wait(7.0)  # nothing running, finite: advances
    assert clock() == 7.0
    executor.start(sim_job(tmp_path, 1, "H100-0", budget=100))
    executor.start(sim_job(tmp_path, 2, "H100-1", budget=300))
    assert executor.poll() == []
    executor.wait(50.0)
    assert clock() == 57.0 and executor.poll() == []
    executor.wait(math.inf)
    assert clock() == 127.0
    [first] = executor.poll()
    assert first.run_id == 1 and first.result.started_at == 7.0 and first.result.ended_at == 127.0
    executor.wait(math.inf)
    assert clock() == 327.0 and [f.run_id for f in executor.poll()] == [2]
    # the run directory holds what a real harness leaves
    assert read_result(tmp_path / "runs" / "r1").metric == first.result.metric
    assert "val_bpb" in (tmp_path / "runs" / "r1" / "run.log").read_text()


def test_busy_or_unknown_worker_is_refused(tmp_path):
    executor = SimulatedExecutor("H100:1", quiet())
    executor.start(sim_job(tmp_path, 1, "H100-0"))
    with pytest.raises(ExecutorError, match="busy"):
        executor.start(sim_job(tmp_path, 2, "H100-0"))
    with pytest.raises(ExecutorError, match="unknown worker"):
        executor.start(sim_job(tmp_path, 3, "H200-0"))


# --------------------------------------------------------------------------- the surrogate


def test_surrogate_is_deterministic_and_seeds_change_only_the_noise():
    surrogate = Surrogate.for_target(KNOBS, seed=3, start=START, crash_rate=0.0, hang_rate=0.0)
    again = Surrogate.for_target(KNOBS, seed=3, start=START, crash_rate=0.0, hang_rate=0.0)
    one = surrogate.evaluate(START, 1.0, seed=0, run_id=5, budget_seconds=300)
    assert one == again.evaluate(START, 1.0, seed=0, run_id=5, budget_seconds=300)
    other_seed = surrogate.evaluate(START, 1.0, seed=1, run_id=5, budget_seconds=300)
    other_run = surrogate.evaluate(START, 1.0, seed=0, run_id=6, budget_seconds=300)
    assert one[1] != other_seed[1] and one[1] != other_run[1]
    expected = surrogate.expected(START)
    assert abs(one[1] - expected) < 5 * surrogate.noise_sd and abs(other_seed[1] - expected) < 5 * surrogate.noise_sd
    # another surrogate seed: another landscape
    assert Surrogate.for_target(KNOBS, seed=4, start=START).resolved_optimum != surrogate.resolved_optimum


def test_surrogate_is_sized_like_autoresearch():
    surrogate = quiet()
    best = surrogate.best_knobs()
    # the start config is about default_gap (0.03) worse than the optimum (base 0.97)
    assert 0.985 < surrogate.expected(START) < 1.02
    assert surrogate.expected(best) < surrogate.expected(START) - 0.015
    assert surrogate.expected(best) == pytest.approx(0.97, abs=0.01)
    # a given optimum and weights are used as given; interactions {} means none
    plain = Surrogate.for_target(
        {"LR": KNOBS["LEARNING_RATE"]}, optimum={"LR": 0.5}, weights={"LR": 0.1}, interactions={}, base=1.0
    )
    assert plain.expected({"LR": 10 ** -2.5}) == pytest.approx(1.0)
    assert plain.expected({"LR": 1e-4}) == pytest.approx(1.0 + 0.1 * 0.25)
    with pytest.raises(ValueError, match="unknown knob"):
        Surrogate.for_target(KNOBS, weights={"NOPE": 1.0})


def test_h200_runs_more_steps_and_reaches_a_better_metric(tmp_path):
    surrogate = quiet(speed_gain=0.02)
    executor = SimulatedExecutor(parse_fleet("H100:1,H200:1"), surrogate)
    executor.start(sim_job(tmp_path, 1, "H100-0"))
    executor.start(sim_job(tmp_path, 2, "H200-0"))
    by_class = {f.worker_id: f.result for f in run_all(executor)}
    h100, h200 = by_class["H100-0"], by_class["H200-0"]
    assert h200.figures["steps"] / h100.figures["steps"] == pytest.approx(1.09, abs=0.005)
    assert h200.figures["tokens_per_second"] / h100.figures["tokens_per_second"] == pytest.approx(1.09)
    assert h100.figures["elapsed_seconds"] == h200.figures["elapsed_seconds"] == 300
    assert h100.metric - h200.metric == pytest.approx(0.02 * math.log(1.09))
    # speeds can be overridden per class
    fast = SimulatedExecutor(parse_fleet("H200:1"), surrogate, speeds={"H200": 1.5})
    fast.start(sim_job(tmp_path / "fast", 1, "H200-0"))
    [f] = run_all(fast)
    assert f.result.figures["steps"] == round(1.5 * surrogate.steps_per_budget_unit * 300)


def test_crash_and_hang_rates_are_honoured():
    surrogate = Surrogate.for_target(KNOBS, seed=0, crash_rate=0.2, hang_rate=0.1)
    outcomes = Counter(surrogate.evaluate(START, 1.0, seed=0, run_id=i, budget_seconds=300)[0] for i in range(3000))
    assert outcomes[Outcome.CRASHED] / 3000 == pytest.approx(0.2, abs=0.03)
    assert outcomes[Outcome.TIMEOUT] / 3000 == pytest.approx(0.1, abs=0.03)
    assert outcomes[Outcome.OK] / 3000 == pytest.approx(0.7, abs=0.03)


def test_a_hang_runs_until_the_hard_timeout_and_a_crash_stops_early(tmp_path):
    target = make_target(tmp_path / "lab", budget=300, timeout=400)  # timeout = budget + 100
    clock = VirtualClock(0.0)
    hangs = SimulatedExecutor("H100:1", quiet(hang_rate=1.0, setup_seconds=0), clock=clock)
    request = RunRequest(target_dir=target, run_dir=tmp_path / "runs" / "hang", budget_seconds=600)
    hangs.start(Job(1, "H100-0", request))
    [f] = run_all(hangs)
    assert f.result.outcome == Outcome.TIMEOUT and f.result.metric is None
    assert f.result.ended_at - f.result.started_at == 700  # a larger budget keeps the same allowance
    assert "hard timeout" in f.result.reason
    crashes = SimulatedExecutor("H100:1", quiet(crash_rate=1.0, setup_seconds=0), clock=clock)
    crashes.start(sim_job(tmp_path, 2, "H100-0"))
    [c] = run_all(crashes)
    assert c.result.outcome == Outcome.CRASHED and c.result.exit_code == 1
    assert c.result.run_seconds < 320 and "out of memory" in c.result.log_tail


def test_setup_is_paid_once_per_worker(tmp_path):
    clock = VirtualClock(0.0)
    world = SimulatedWorld(clock)
    executor = SimulatedExecutor("H100:2", quiet(setup_seconds=180, overhead_seconds=20), world=world)
    results = []
    for round_ in range(3):
        for i, worker in enumerate(["H100-0", "H100-1"]):
            executor.start(sim_job(tmp_path, 10 * round_ + i + 1, worker))
        results += [f.result for f in run_all(executor)]
    setups = [(r.setup_seconds, r.setup_cached) for r in results]
    assert setups == [(180, False)] * 2 + [(0, True)] * 4
    assert clock() == 180 + 3 * 320
    # a worker stays set up for a new orchestrator over the same world
    later = SimulatedExecutor("H100:2", quiet(setup_seconds=180), world=world)
    later.start(sim_job(tmp_path, 99, "H100-0"))
    [f] = run_all(later)
    assert f.result.setup_seconds == 0


# --------------------------------------------------------------------------- the fleet


def test_parse_fleet():
    workers = parse_fleet("H100:13,H200:3")
    assert len(workers) == 16
    assert [w.id for w in workers[:2]] == ["H100-0", "H100-1"] and workers[-1].id == "H200-2"
    assert {w.hardware: w.price_per_hour for w in workers} == {"H100": 2.49, "H200": 3.59}
    assert parse_fleet("h100:2@2.10, cpu:1")[0].price_per_hour == 2.10
    assert [w.device for w in parse_fleet("H100:1,cpu:1")] == ["cuda", "cpu"]
    assert [(w.id, w.price_per_hour) for w in parse_fleet({"A100": 1, "L4": (1, 0.5)})] == [("A100-0", 1.29), ("L4-0", 0.5)]
    assert parse_fleet("TPU:2", speeds={"TPU": 2.0})[0].hardware == "TPU"


@pytest.mark.parametrize("spec, message", [
    ("B200:4", "unknown hardware class 'B200'"),
    ("H100", "bad fleet entry 'H100'"),
    ("H100:x", "bad fleet entry"),
    ("H100:0", "at least one worker"),
    ("H100:1,H100:2", "listed twice"),
    ("", "bad fleet entry"),
    ("H100:2@cheap", "bad fleet entry"),
])
def test_parse_fleet_rejects_bad_input_in_one_line(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_fleet(spec)
    assert "\n" not in str(info.value) and "CLASS:COUNT" in str(info.value)


# --------------------------------------------------------------------------- the real session on a virtual clock

TRAIN = """\
LEARNING_RATE = 1e-3
N_LAYER = 2
WARMUP = 0.1
BATCH = 8
raise SystemExit("the simulator never runs this")
"""
KNOBS_TOML = """
[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
N_LAYER = { file = "train.py", choices = [1, 2, 3, 4] }
WARMUP = { file = "train.py", low = 0.0, high = 0.4 }
BATCH = { file = "train.py", low = 4, high = 64, integer = true, log = true }
"""


def simulate(folder: Path, experiments: int = 40, fleet: str = "H100:3,H200:1") -> tuple[Ledger, SessionLoop, VirtualClock]:
    clock = VirtualClock()
    target = load_target(folder)
    ledger = Ledger(folder / ".labfleet" / "ledger.sqlite", clock=clock)
    workers = parse_fleet(fleet)
    config = SessionConfig(researcher="random", workers=len(workers), max_experiments=experiments, seed=0)
    session_id = start_session(target, ledger, config)
    surrogate = Surrogate.for_target(target.knobs, seed=7, start=target.read_knobs())
    loop = SessionLoop(
        target, ledger, SimulatedExecutor(workers, surrogate, clock=clock), make_researcher("random", seed=0),
        session_id, config, folder / ".labfleet", clock=clock, tick=math.inf,
    )
    loop.run()
    return ledger, loop, clock


def test_a_real_session_runs_hours_of_virtual_time_in_seconds(tmp_path):
    folder = make_target(tmp_path / "lab", TRAIN, signed=False, budget=600, timeout=900, extra_toml=KNOBS_TOML)
    began = time.monotonic()
    ledger, loop, clock = simulate(folder)
    assert time.monotonic() - began < 30
    assert loop.stop_reason == "reached --max-experiments 40"
    runs = ledger.runs(loop.session_id)
    final = [r for r in runs if r.status.final and r.started_at is not None]
    assert len(ledger.experiments(loop.session_id)) == 41
    assert all(r.status != RunStatus.LOST for r in runs)
    # timestamps are virtual: they start at the virtual epoch and span hours
    first, last = min(r.started_at for r in final), max(r.ended_at for r in final)
    assert DEFAULT_EPOCH <= first < DEFAULT_EPOCH + 1
    assert last - first > 1.5 * 3600 and last == clock()
    # every worker is busy nearly all the time (the tail, once proposing stops, is idle)
    busy = sum(r.ended_at - r.started_at for r in final)
    assert busy / (4 * (last - first)) > 0.85
    assert {r.hardware for r in final} == {"H100", "H200"}
    ok = [r for r in final if r.status == RunStatus.DONE]
    assert all(r.figures["steps"] > 0 for r in ok)
    assert min(r.metric for r in ok) < 1.0


def test_a_simulated_session_is_deterministic(tmp_path):
    def metrics(name: str) -> list[tuple[int, str, float | None]]:
        folder = make_target(tmp_path / name, TRAIN, signed=False, budget=300, timeout=600, extra_toml=KNOBS_TOML)
        ledger, loop, _ = simulate(folder, experiments=15)
        return [(r.id, r.worker or "", r.metric, r.started_at) for r in ledger.runs(loop.session_id)]

    one, two = metrics("one"), metrics("two")
    assert len(one) >= 16 and one == two


def test_researcher_latency_is_virtual_deterministic_and_priced(tmp_path):
    """propose() takes 60 +- 30 virtual seconds: the same seed gives the same session; calls cost tokens."""
    from labfleet.simulate import clone_target
    from labfleet.simulate import simulate as simulate_plan

    def plan(name: str):
        with clone_target(None) as folder:
            sim = simulate_plan(folder, "H100:3,H200:1", researcher="random", hours=None, seed=1,
                                budget_seconds=300.0, researcher_latency="60:30", max_experiments=12)
            ledger = Ledger.for_target(folder / ".labfleet")
            runs = [(r.id, r.worker, r.metric, r.started_at) for r in ledger.runs(sim.session_id)]
            ledger.close()
        return sim, runs

    (one, runs_one), (two, runs_two) = plan("one"), plan("two")
    assert runs_one == runs_two and len(runs_one) >= 13
    assert one.llm_calls >= 2 and one.llm_calls < 12  # one call fills several workers
    assert one.llm_usd > 0 and one.llm_usd == two.llm_usd and one.researcher_latency == (60.0, 30.0)


@pytest.mark.parametrize("tiers", [False, True])
def test_a_slow_first_call_fills_the_fleet_with_the_baselines_seeds_and_the_end_starts_nothing_late(tmp_path, tiers):
    """A 90 s first call: every worker measures the baseline's noise meanwhile; no run of any role starts after --hours."""
    from labfleet.simulate import clone_target
    from labfleet.simulate import simulate as simulate_plan

    classes = dict(screen=["H100"], validate=["H200"]) if tiers else {}
    with clone_target(None) as folder:
        sim = simulate_plan(folder, "H100:6,H200:2", researcher="random", hours=0.5, seed=0, budget_seconds=300.0,
                            researcher_latency=90, **classes)  # type: ignore[arg-type]
        ledger = Ledger.for_target(folder / ".labfleet")
        created = ledger.session(sim.session_id)["created_at"]
        baseline = ledger.baseline(sim.session_id)
        runs = ledger.runs(sim.session_id)
        ledger.close()
    assert sim.stop_reason == "reached --hours 0.5"
    started = [r for r in runs if r.started_at is not None]
    during_call = [r for r in started if r.started_at < created + 90]
    # the calibration plan has 3 seeds per class: the other 3 H100s would wait for the model without the fill
    assert len({r.worker for r in during_call}) == 8
    assert {r.experiment_id for r in during_call} == {baseline.id}
    base_seeds = [r.seed for r in runs if r.experiment_id == baseline.id]
    assert len(base_seeds) == len(set(base_seeds)) > 6  # more noise seeds than planned, none used twice
    assert len(started) > 20
    late = [(r.id, r.role, r.started_at - created - 1800) for r in started if r.started_at >= created + 1800]
    assert late == []  # nothing starts after the end, whatever its role
    assert not [r for r in runs if r.status in (RunStatus.QUEUED, RunStatus.RUNNING)]
    assert sim.decisions.get("pending", 0) == 0, sim.decisions


def test_every_waiting_winner_is_decided_when_a_session_winds_down(tmp_path):
    """Tiers with one validation at a time and proposing stopped early: nothing is left pending."""
    from labfleet.simulate import clone_target
    from labfleet.simulate import simulate as simulate_plan

    with clone_target(None) as folder:
        sim = simulate_plan(folder, "H100:6,H200:1", researcher="random", hours=0.5, seed=2, budget_seconds=300.0,
                            screen=["H100"], validate=["H200"], promote=1)
        ledger = Ledger.for_target(folder / ".labfleet")
        end = ledger.session(sim.session_id)["created_at"] + 1800
        decided_at = ledger.decided_at(sim.session_id)
        late = [e for e in ledger.experiments(sim.session_id) if e.parent_id is not None and decided_at[e.id] >= end]
        runs = ledger.runs(sim.session_id)
        kinds = [r["kind"] for r in ledger.db.execute("SELECT kind FROM events ORDER BY id")]
        winners = {json.loads(r["data"])["experiment"] for r in ledger.db.execute(
            "SELECT data FROM events WHERE kind = 'screen_winner'")}
        decided = {e.id: e.decision for e in ledger.experiments(sim.session_id)}
        ledger.close()
    assert sim.stop_reason == "reached --hours 0.5"
    assert sim.decisions.get("pending", 0) == 0, sim.decisions
    assert sim.experiments >= 10
    # winners still waited for the one validate worker at the end: decided then (nothing starts
    # after --hours, so an unvalidated winner is not kept), not left pending
    assert late and all(e.decision != "kept" or e.id in {r.experiment_id for r in runs if r.role == "validate"}
                        for e in late)
    assert max(r.started_at for r in runs if r.started_at is not None) < end
    # every screened winner was validated, confirmed or dropped (saying why): none is left pending,
    # and nothing was started after the last decision
    assert winners and all(decided[w] in ("kept", "discarded") for w in winners), (winners, decided)
    assert kinds[-1] == "session_finished" and "stop_proposing" in kinds
