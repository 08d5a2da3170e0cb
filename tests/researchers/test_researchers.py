"""Built-in researchers over hand-made ledger snapshots (no processes, no ledger)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest

from labfleet.errors import ConfigError
from labfleet.records import Decision, Result
from labfleet.researchers import RESEARCHERS, make_researcher
from labfleet.researchers.optuna import MISSING_SYNCS
from labfleet.researchers.space import key
from labfleet.target import Knob
from labfleet.testing.snapshots import (
    BASE,
    BASELINE,
    experiment,
    result,
    state,
    well_typed,
)

NAMES = ["cmaes", "greedy", "grid", "optuna", "random", "waves"]  # the knob researchers: the shared tests below
OTHERS = ["external", "hybrid", "llm"]  # researchers that need a model or an agent (tests in test_llm, test_agents)


# --------------------------------------------------------------------------- every researcher


@pytest.mark.parametrize("name", NAMES)
def test_proposals_fill_workers_within_ranges_without_repeats(name):
    done = experiment({**BASE, "N_LAYER": 1})
    pending = [experiment({**BASE, "N_LAYER": 3}, Decision.PENDING)]
    snapshot = state(history=[result(done, 2.1)], pending=pending)
    proposals = make_researcher(name, seed=1).propose(snapshot, 4)
    assert len(proposals) == 4
    keys = [key(p.knobs) for p in proposals]
    assert len(set(keys)) == 4
    assert not set(keys) & {key(BASE), key(done.knobs), key(pending[0].knobs)}
    assert all(well_typed(p.knobs) for p in proposals), [dict(p.knobs) for p in proposals]
    assert all(p.description for p in proposals)


@pytest.mark.parametrize("name", NAMES)
def test_never_more_than_asked(name):
    researcher = make_researcher(name, seed=2)
    assert len(researcher.propose(state(), 1)) == 1
    assert len(researcher.propose(state(), 3)) <= 3


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name):
    a = make_researcher(name, seed=3).propose(state(), 3)
    b = make_researcher(name, seed=3).propose(state(), 3)
    assert [dict(p.knobs) for p in a] == [dict(p.knobs) for p in b]


@pytest.mark.parametrize("name", NAMES)
def test_nothing_to_do_without_knobs_or_baseline(name):
    assert make_researcher(name).propose(state(knobs={}), 2) == []


@pytest.mark.parametrize("name", NAMES)
def test_a_small_space_runs_dry(name):
    """Two knobs of two choices: three settings besides the baseline, then nothing."""
    knobs = {"A": Knob(file="t.py", choices=[1, 2]), "B": Knob(file="t.py", choices=[True, False])}
    baseline = experiment({"A": 1, "B": True}, Decision.BASELINE, parent=None, exp_id=1, metric=1.0)
    researcher = make_researcher(name, seed=0)
    history: list[Result] = []
    seen = set()
    for _ in range(8):
        proposals = researcher.propose(state(history, knobs=knobs, baseline=baseline), 2)
        if not proposals:
            break
        for p in proposals:
            assert key(p.knobs) not in seen
            seen.add(key(p.knobs))
            history.append(result(experiment(p.knobs, tags=p.tags), 1.0))
    if name == "greedy":  # one change from the champion (the baseline): A=2 or B=False, then a level runs dry
        assert seen == {key({"A": 2, "B": True}), key({"A": 1, "B": False})}
    else:
        assert len(seen) == 3 and key(baseline.knobs) not in seen
    assert researcher.propose(state(history, knobs=knobs, baseline=baseline), 2) == []


# --------------------------------------------------------------------------- greedy


def changed(knobs, base) -> list[str]:
    return [k for k in base if knobs[k] != base[k]]


def test_greedy_changes_one_knob_of_the_champion():
    # greedy's shuffle is seeded by the champion's id: a fixed one keeps the test apart from the others' counts
    champion = experiment({**BASE, "LEARNING_RATE": 2e-3}, Decision.KEPT, metric=1.9, exp_id=124)
    snapshot = state(history=[result(champion, 1.9)], champion=champion)
    proposals = make_researcher("greedy").propose(snapshot, 5)
    assert len(proposals) == 5
    assert len({changed(p.knobs, champion.knobs)[0] for p in proposals}) == 5  # a batch spreads over knobs
    for p in proposals:
        [knob] = changed(p.knobs, champion.knobs)
        assert p.parent == champion.id
        assert p.description.startswith(f"{knob} ") and " -> " in p.description
    lr = [p for p in proposals if changed(p.knobs, champion.knobs) == ["LEARNING_RATE"]]
    assert [p.knobs["LEARNING_RATE"] for p in lr] == [4e-3]  # 1e-3 (= /2) is the baseline, already run
    assert lr[0].description == "LEARNING_RATE 2e-3 -> 4e-3"


def test_greedy_steps():
    proposals = make_researcher("greedy").propose(state(), 20)
    moves = {(changed(p.knobs, BASE)[0], p.knobs[changed(p.knobs, BASE)[0]]) for p in proposals}
    first = {("LEARNING_RATE", 2e-3), ("LEARNING_RATE", 5e-4), ("WARMUP", 0.15), ("WARMUP", 0.05),
             ("BATCH", 16), ("BATCH", 4), ("N_LAYER", 1), ("N_LAYER", 3), ("ACTIVATION", "gelu")}
    assert first <= moves  # x2 and /2, +-1/8 of the range, neighbouring choices
    assert ("N_LAYER", 4) in moves and ("BATCH", 11) in moves  # then smaller steps, other choices
    assert [changed(p.knobs, BASE)[0] for p in proposals[:9]].count("LEARNING_RATE") == 2


def test_greedy_halves_its_step_then_stops_at_a_local_optimum():
    knobs = {"LEARNING_RATE": Knob(file="t.py", low=1e-4, high=1e-1, log=True)}
    baseline = experiment({"LEARNING_RATE": 1e-3}, Decision.BASELINE, parent=None, exp_id=1, metric=1.0)
    researcher = make_researcher("greedy", levels=3)
    history: list[Result] = []
    tried = []
    while proposals := researcher.propose(state(history, knobs=knobs, baseline=baseline), 1):
        tried.append(proposals[0].knobs["LEARNING_RATE"])
        history.append(result(experiment(proposals[0].knobs), 2.0))  # all worse: the champion stays
    assert sorted(tried) == [5e-4, 7.071e-4, 8.409e-4, 1.189e-3, 1.414e-3, 2e-3]


def test_greedy_clips_into_the_range():
    champion = experiment({**BASE, "LEARNING_RATE": 0.08, "BATCH": 64, "WARMUP": 0.0}, Decision.KEPT)
    proposals = make_researcher("greedy").propose(state(history=[result(champion, 1.0)], champion=champion), 30)
    assert all(well_typed(p.knobs) for p in proposals)
    values = {k: {p.knobs[k] for p in proposals} for k in ("LEARNING_RATE", "BATCH", "WARMUP")}
    assert 0.1 in values["LEARNING_RATE"]  # x2 clipped to the bound
    assert values["BATCH"] == {64, 32, 45, 54} and values["WARMUP"] == {0.0, 0.05, 0.025, 0.0125}  # down only


# --------------------------------------------------------------------------- random and grid


def test_random_is_log_uniform_and_starts_from_the_baseline():
    proposals = make_researcher("random", seed=0).propose(state(), 200)
    assert all(p.parent == BASELINE.id for p in proposals)
    below = sum(p.knobs["LEARNING_RATE"] < math.sqrt(1e-4 * 1e-1) for p in proposals)
    assert 70 < below < 130  # half below the geometric midpoint


def test_grid_enumerates_the_product_then_stops():
    knobs = {
        "A": Knob(file="t.py", choices=[1, 2]),
        "B": Knob(file="t.py", low=1e-3, high=1e-1, log=True),
        "C": Knob(file="t.py", low=1, high=3, integer=True),
    }
    baseline = experiment({"A": 1, "B": 1e-3, "C": 1}, Decision.BASELINE, parent=None, exp_id=1, metric=1.0)
    researcher = make_researcher("grid", points=5)
    assert researcher.values(knobs["C"]) == [1, 2, 3]  # 5 points on 1..3 round to 3 distinct ints
    history: list[Result] = []
    seen = []
    for _ in range(40):
        proposals = researcher.propose(state(history, knobs=knobs, baseline=baseline), 4)
        if not proposals:
            break
        assert all(p.parent == baseline.id for p in proposals)
        seen += [(p.knobs["A"], p.knobs["B"], p.knobs["C"]) for p in proposals]
        history += [result(experiment(p.knobs), 1.0) for p in proposals]
    b_values = [1e-3, 3.162e-3, 1e-2, 3.162e-2, 1e-1]
    product = list(itertools.product([1, 2], b_values, [1, 2, 3]))
    assert seen == product[1:]  # in product order, without the baseline
    assert researcher.propose(state(history, knobs=knobs, baseline=baseline), 4) == []


def test_grid_skips_pending():
    knobs = {"A": Knob(file="t.py", choices=[1, 2, 3])}
    baseline = experiment({"A": 1}, Decision.BASELINE, parent=None, exp_id=1, metric=1.0)
    pending = [experiment({"A": 2}, Decision.PENDING)]
    [p] = make_researcher("grid").propose(state(pending=pending, knobs=knobs, baseline=baseline), 3)
    assert p.knobs == {"A": 3}


# --------------------------------------------------------------------------- optuna


def trial_states(researcher) -> list[str]:
    return [t.state.name for t in researcher.study.get_trials(deepcopy=False)]


def test_optuna_rebuilds_from_history_and_records_failures():
    # the baseline and 9 more, 3 of which crashed
    history = [result(experiment({**BASE, "LEARNING_RATE": 10 ** (-4 + i / 4)}), None if i % 3 == 0 else 2 - i / 100)
               for i in range(1, 10)]
    researcher = make_researcher("optuna", seed=0)
    proposals = researcher.propose(state(history=history), 2)
    assert len(proposals) == 2 and all(well_typed(p.knobs) for p in proposals)
    assert all(p.parent == BASELINE.id for p in proposals)
    states = trial_states(researcher)
    assert states.count("COMPLETE") == 7 and states.count("FAIL") == 3 and states.count("RUNNING") == 2
    # Those two were never recorded. Missing at the next propose they stay open (the session may not have
    # committed them yet); missing at MISSING_SYNCS proposes in a row they are closed; nothing is added twice.
    researcher.propose(state(history=history), 1)
    states = trial_states(researcher)
    assert states.count("COMPLETE") == 7 and states.count("FAIL") == 3 and states.count("RUNNING") == 3
    for _ in range(MISSING_SYNCS - 1):
        researcher.propose(state(history=history), 1)
    states = trial_states(researcher)
    assert states.count("COMPLETE") == 7 and states.count("FAIL") == 5
    assert states.count("RUNNING") == MISSING_SYNCS  # the asks of the last MISSING_SYNCS - 1 proposes and this one


def test_a_trial_recorded_a_propose_late_is_told_not_added_again():
    # the session commits an answer's proposals one per tick: the next propose may not see them yet
    knobs = {"X": Knob(file="t.py", low=0.0, high=1.0)}
    baseline = experiment({"X": 0.5}, Decision.BASELINE, parent=None, exp_id=1, metric=0.5)
    researcher = make_researcher("cmaes", seed=0)
    first = researcher.propose(state(knobs=knobs, baseline=baseline), 2)
    researcher.propose(state(knobs=knobs, baseline=baseline), 1)  # the first two not recorded yet
    done = [result(experiment(p.knobs, tags=p.tags), 0.1 * i) for i, p in enumerate(first)]
    researcher.propose(state(history=done, knobs=knobs, baseline=baseline), 1)
    trials = researcher.study.get_trials(deepcopy=False)
    told = [t for t in trials if t.number in {int(p.tags["optuna_trial"]) for p in first}]
    assert [t.state.name for t in told] == ["COMPLETE", "COMPLETE"]  # told on their own trials (CMA-ES counts them)
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 2 + 1  # and the baseline; nothing twice


def test_optuna_fresh_instance_over_ten_results():
    history = [result(experiment({**BASE, "WARMUP": i / 30}), 2 - i / 100) for i in range(1, 10)]
    researcher = make_researcher("optuna", seed=0)
    assert len(researcher.propose(state(history=history), 1)) == 1
    assert trial_states(researcher).count("COMPLETE") == 10


def test_optuna_tells_its_own_trials_once_and_finds_the_optimum():
    knobs = {"LEARNING_RATE": Knob(file="t.py", low=1e-4, high=1e-1, log=True)}
    baseline = experiment({"LEARNING_RATE": 1e-4}, Decision.BASELINE, parent=None, exp_id=1, metric=4.0)
    history: list[Result] = []
    researcher = make_researcher("optuna", seed=0)
    for _ in range(30):
        [p] = researcher.propose(state(history, knobs=knobs, baseline=baseline, free=1), 1)
        lr = p.knobs["LEARNING_RATE"]
        history.append(result(experiment(p.knobs, tags=p.tags), (math.log10(lr) + 2) ** 2))
    best = min(history, key=lambda r: r.run.metric)
    assert abs(math.log10(best.experiment.knobs["LEARNING_RATE"]) + 2) < 0.15
    states = trial_states(researcher)
    # The baseline and 29 told; the 30th result is told at the next propose; the last ask is out.
    assert states.count("COMPLETE") == 30 and states.count("RUNNING") == 1
    # After a restart (a fresh instance, observe not replayed), the same 31 results and nothing else.
    fresh = make_researcher("optuna", seed=0)
    fresh.propose(state(history, knobs=knobs, baseline=baseline), 1)
    assert trial_states(fresh).count("COMPLETE") == 31
    assert min(t.value for t in fresh.study.get_trials(states=None) if t.value is not None) == best.run.metric


def test_optuna_keeps_pending_trials_open_and_maximizes():
    knobs = {"X": Knob(file="t.py", low=0.0, high=1.0)}
    baseline = experiment({"X": 0.5}, Decision.BASELINE, parent=None, exp_id=1, metric=0.5)
    researcher = make_researcher("optuna", seed=1)
    first = researcher.propose(state(knobs=knobs, baseline=baseline, direction="maximize"), 2)
    pending = [experiment(p.knobs, Decision.PENDING, tags=p.tags) for p in first]
    researcher.propose(state(pending=pending, knobs=knobs, baseline=baseline, direction="maximize"), 1)
    assert trial_states(researcher).count("RUNNING") == 3  # two pending, one just asked
    assert researcher.study.direction.name == "MAXIMIZE"
    done = [result(pending[0], 0.9), result(pending[1], None)]
    researcher.propose(state(history=done, knobs=knobs, baseline=baseline, direction="maximize"), 1)
    states = trial_states(researcher)
    # the crash failed; the ask of the second propose, unrecorded, stays open (within MISSING_SYNCS), and the new one
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and states.count("RUNNING") == 2
    assert researcher.study.best_value == 0.9


# --------------------------------------------------------------------------- registry


def test_registry():
    assert sorted(RESEARCHERS) == sorted(NAMES + OTHERS)
    assert all(RESEARCHERS[name].name == name for name in RESEARCHERS)


def test_unknown_researcher():
    with pytest.raises(ConfigError, match=r"^unknown researcher 'genius' \(available: cmaes, external, greedy, grid, hybrid, llm, optuna, random, waves\)$"):
        make_researcher("genius")


def test_unknown_option():
    with pytest.raises(ConfigError, match=r"^researcher 'grid': .*'depth'"):
        make_researcher("grid", depth=3)
    with pytest.raises(ConfigError, match="points must be at least 1"):
        make_researcher("grid", points=0)


def test_optuna_is_imported_only_when_its_researcher_is_made():
    code = ("import sys, labfleet.researchers as r; assert 'optuna' not in sys.modules; "
            "r.make_researcher('greedy'); assert 'optuna' not in sys.modules; "
            "r.make_researcher('optuna'); assert 'optuna' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cmaes_is_optuna_s_sampler_and_needs_its_package():
    import optuna

    r = make_researcher("cmaes", seed=0)
    r.propose(state(), 2)
    assert isinstance(r.study.sampler, optuna.samplers.CmaEsSampler)
    assert make_researcher("optuna").kind == "tpe"
    with pytest.raises(ConfigError, match="unknown sampler 'nelder'"):
        make_researcher("optuna", sampler="nelder")
    code = ("import sys; sys.modules['cmaes'] = None\n"
            "from labfleet.errors import ConfigError\nfrom labfleet.researchers import make_researcher\n"
            "try:\n    make_researcher('cmaes')\nexcept ConfigError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "the cmaes sampler needs the `cmaes` package (pip install cmaes)"


def test_cmaes_converges_on_a_bowl():
    """CMA-ES over two numeric knobs finds the minimum of a smooth bowl in a few generations."""
    knobs = {"X": Knob(file="t.py", low=-5.0, high=5.0), "Y": Knob(file="t.py", low=-5.0, high=5.0)}
    baseline = experiment({"X": 4.0, "Y": -4.0}, Decision.BASELINE, parent=None, exp_id=1, metric=32.0)
    r = make_researcher("cmaes", seed=0)
    history: list[Result] = []
    for _ in range(12):
        for p in r.propose(state(history, knobs=knobs, baseline=baseline), 4):
            x, y = p.knobs["X"], p.knobs["Y"]
            history.append(result(experiment(p.knobs, tags=p.tags), (x - 1) ** 2 + (y + 2) ** 2))
    best = min(history, key=lambda res: res.run.metric)
    assert best.run.metric < 0.5, dict(best.experiment.knobs)
