"""Hand-made ledger snapshots for researcher tests: knobs, experiments, results, a ``SessionState``.

Pure records (no ledger, no processes): ``state(history=[result(experiment({...}), 2.1)])``
is what a researcher sees after one finished experiment. ``well_typed`` says whether
knob values fit their knobs (present, in range, the knob's own type).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from labfleet.records import Decision, Experiment, Result, Run, RunStatus, SessionState
from labfleet.target import Knob

KNOBS = {
    "LEARNING_RATE": Knob(file="train.py", low=1e-4, high=1e-1, log=True),
    "N_LAYER": Knob(file="train.py", choices=[1, 2, 3, 4]),
    "WARMUP": Knob(file="train.py", low=0.0, high=0.4),
    "BATCH": Knob(file="train.py", low=4, high=64, integer=True, log=True),
    "ACTIVATION": Knob(file="train.py", choices=["relu", "gelu"]),
}
BASE = {"LEARNING_RATE": 1e-3, "N_LAYER": 2, "WARMUP": 0.1, "BATCH": 8, "ACTIVATION": "relu"}
ids = itertools.count(100)  # experiment ids of experiment() without exp_id


def experiment(knobs: Mapping[str, Any], decision: Decision = Decision.DISCARDED, parent: int | None = 1,
               tags: Mapping[str, str] | None = None, exp_id: int | None = None, metric: float | None = None,
               commit: str = "c") -> Experiment:
    return Experiment(
        id=exp_id or next(ids), session_id=1, parent_id=parent, commit=commit, patch="", description="",
        hypothesis="", knobs=dict(knobs), tags=tags or {}, seed=0, budget_seconds=1, decision=decision,
        created_at=0.0, metric=metric,
    )


def result(exp: Experiment, metric: float | None) -> Result:
    """A finished run of ``exp``: done with ``metric``, or crashed when it is None."""
    status = RunStatus.DONE if metric is not None else RunStatus.CRASHED
    run = Run(id=exp.id, experiment_id=exp.id, attempt=1, status=status, worker="w", hardware="cpu", queued_at=0,
              started_at=0, ended_at=1, metric=metric, figures={}, reason="", run_dir=None, log_path=None)
    return Result(exp, run)


BASELINE = experiment(BASE, Decision.BASELINE, parent=None, exp_id=1, metric=2.0)


def state(history: Iterable[Result] = (), pending: Iterable[Experiment] = (), champion: Experiment | None = None,
          knobs: Mapping[str, Knob] = KNOBS, baseline: Experiment | None = BASELINE, direction: str = "minimize",
          free: int = 4) -> SessionState:
    """A snapshot whose history starts with the baseline's result."""
    return SessionState(
        session_id=1, metric="val_bpb", direction=direction, knobs=knobs, baseline=baseline,
        champion=champion or baseline,
        history=(result(baseline, baseline.metric), *history) if baseline is not None else tuple(history),
        pending=tuple(pending), free_workers=free,
    )


def well_typed(knobs: Mapping[str, Any], space: Mapping[str, Knob] = KNOBS) -> bool:
    """Every knob present, inside its range, an int where the knob is integer, a choice's own type."""
    if set(knobs) != set(space):
        return False
    for name, value in knobs.items():
        knob = space[name]
        if not knob.contains(value):
            return False
        if knob.integer and type(value) is not int:
            return False
        if knob.choices is not None and type(value) not in {type(c) for c in knob.choices}:
            return False
        if knob.choices is None and not knob.integer and type(value) is not float:
            return False
    return True
