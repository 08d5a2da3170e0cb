"""Built-in researchers over hand-made ledger snapshots (no processes)."""

from __future__ import annotations

import itertools
import math

import pytest

from labfleet.errors import ConfigError
from labfleet.records import Decision, Experiment, Result, Run, RunStatus, SessionState
from labfleet.researchers import make_researcher
from labfleet.researchers.space import key
from labfleet.target import Knob

KNOBS = {
    "LEARNING_RATE": Knob(file="train.py", low=1e-4, high=1e-1, log=True),
    "N_LAYER": Knob(file="train.py", choices=[1, 2, 3, 4]),
    "WARMUP": Knob(file="train.py", low=0.0, high=0.4),
    "BATCH": Knob(file="train.py", low=4, high=64, integer=True, log=True),
}
BASE = {"LEARNING_RATE": 1e-3, "N_LAYER": 2, "WARMUP": 0.1, "BATCH": 8}
ids = itertools.count(1)


def experiment(knobs, decision=Decision.DISCARDED, parent=1, tags=None, exp_id=None) -> Experiment:
    return Experiment(
        id=exp_id or next(ids), session_id=1, parent_id=parent, commit="c", patch="", description="", hypothesis="",
        knobs=knobs, tags=tags or {}, seed=0, budget_seconds=1, decision=decision, created_at=0.0,
    )


def result(exp: Experiment, metric: float | None) -> Result:
    status = RunStatus.DONE if metric is not None else RunStatus.CRASHED
    run = Run(id=exp.id, experiment_id=exp.id, attempt=1, status=status, worker="w", hardware="cpu", queued_at=0,
              started_at=0, ended_at=1, metric=metric, figures={}, reason="", run_dir=None, log_path=None)
    return Result(exp, run)


def state(history=(), pending=(), champion=None, knobs=KNOBS, direction="minimize") -> SessionState:
    baseline = experiment(BASE, Decision.BASELINE, parent=None, exp_id=1)
    return SessionState(
        session_id=1, metric="val_bpb", direction=direction, knobs=knobs, baseline=baseline,
        champion=champion or baseline, history=(result(baseline, 2.0), *history), pending=tuple(pending),
        free_workers=4,
    )


def valid(knobs) -> bool:
    return set(knobs) == set(KNOBS) and all(
        KNOBS[k].contains(v) and (not KNOBS[k].integer or isinstance(v, int)) for k, v in knobs.items()
    )


@pytest.mark.parametrize("name", ["greedy", "random", "grid", "optuna"])
def test_proposals_fill_workers_within_ranges_without_repeats(name):
    pending = [experiment({**BASE, "N_LAYER": 3})]
    snapshot = state(pending=pending)
    proposals = make_researcher(name, seed=1).propose(snapshot, 4)
    assert len(proposals) == 4
    keys = [key(p.knobs) for p in proposals]
    assert len(set(keys)) == 4
    assert key(BASE) not in keys and key(pending[0].knobs) not in keys
    assert all(valid(p.knobs) for p in proposals), [p.knobs for p in proposals]
    assert all(p.description for p in proposals)


@pytest.mark.parametrize("name", ["greedy", "random", "grid", "optuna"])
def test_deterministic_for_a_seed(name):
    a = make_researcher(name, seed=3).propose(state(), 3)
    b = make_researcher(name, seed=3).propose(state(), 3)
    assert [p.knobs for p in a] == [p.knobs for p in b]


def test_greedy_changes_one_knob_of_the_champion():
    champion = experiment({**BASE, "LEARNING_RATE": 2e-3}, Decision.KEPT)
    proposals = make_researcher("greedy").propose(state(history=[result(champion, 1.9)], champion=champion), 5)
    assert len(proposals) == 5
    for p in proposals:
        changed = [k for k in KNOBS if p.knobs[k] != champion.knobs[k]]
        assert len(changed) == 1, p.knobs
        assert p.parent == champion.id
        assert changed[0] in p.description and "->" in p.description
    lr_values = {p.knobs["LEARNING_RATE"] for p in proposals if p.knobs["LEARNING_RATE"] != 2e-3}
    assert lr_values <= {4e-3, 1e-3}


def test_grid_enumerates_the_product_then_stops():
    knobs = {"A": Knob(file="t.py", choices=[1, 2]), "B": Knob(file="t.py", low=1e-3, high=1e-1, log=True)}
    base = {"A": 1, "B": 1e-3}
    researcher = make_researcher("grid")
    baseline = experiment(base, Decision.BASELINE, parent=None, exp_id=1)
    history = [result(baseline, 1.0)]
    seen = []
    for _ in range(10):
        snapshot = SessionState(1, "m", "minimize", knobs, baseline, baseline, tuple(history), (), 2)
        proposals = researcher.propose(snapshot, 2)
        if not proposals:
            break
        for p in proposals:
            seen.append((p.knobs["A"], p.knobs["B"]))
            history.append(result(experiment(dict(p.knobs)), 1.0))
    assert sorted(seen) == sorted({(a, b) for a in (1, 2) for b in (1e-3, 1e-2, 1e-1)} - {(1, 1e-3)})


def test_optuna_rebuilds_from_history_and_records_failures():
    history = [result(experiment({**BASE, "LEARNING_RATE": 10 ** (-4 + i / 4)}), 2.0 - i / 100 if i % 3 else None)
               for i in range(10)]
    researcher = make_researcher("optuna", seed=0)
    proposals = researcher.propose(state(history=history), 2)
    assert len(proposals) == 2
    trials = researcher.study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 1 + 6 and states.count("FAIL") == 4  # baseline + 6 ok, 4 crashed
    # a second propose with the same history adds nothing twice
    researcher.propose(state(history=history), 1)
    states = [t.state.name for t in researcher.study.get_trials(deepcopy=False)]
    assert states.count("COMPLETE") == 7 and states.count("FAIL") == 4


def test_optuna_tells_its_own_trials_and_finds_the_optimum():
    knobs = {"LEARNING_RATE": Knob(file="t.py", low=1e-4, high=1e-1, log=True)}
    baseline = experiment({"LEARNING_RATE": 1e-4}, Decision.BASELINE, parent=None, exp_id=1)
    history = [result(baseline, 10.0)]
    researcher = make_researcher("optuna", seed=0)
    for _ in range(30):
        snapshot = SessionState(1, "loss", "minimize", knobs, baseline, baseline, tuple(history), (), 1)
        [p] = researcher.propose(snapshot, 1)
        lr = p.knobs["LEARNING_RATE"]
        history.append(result(experiment(dict(p.knobs), tags=p.tags), (math.log10(lr) + 2) ** 2))
    best = min(history, key=lambda r: r.run.metric)
    assert abs(math.log10(best.experiment.knobs["LEARNING_RATE"]) + 2) < 0.15
    states = [t.state.name for t in researcher.study.get_trials(deepcopy=False)]
    assert states.count("RUNNING") == 1 and states.count("COMPLETE") == 30  # the last ask is still out


def test_unknown_researcher():
    with pytest.raises(ConfigError, match=r"^unknown researcher 'genius' \(available: greedy, grid, optuna, random\)$"):
        make_researcher("genius")
