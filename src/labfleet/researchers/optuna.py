"""Optuna's TPE over the target's knobs, through its ask/tell interface.

The study lives in memory and is kept in step with the ledger's snapshot: before
every ``propose``, each finished experiment not yet in the study is told to it.
An experiment this study asked for (its tags carry the study's id and the trial
number) is told to that trial; any other (the baseline, hand-submitted ones, or
everything after a restart, when the study is new and ``observe`` is not replayed)
is added as a finished trial with ``create_trial``. So each result enters the
study exactly once. Trials still running are seen by TPE's constant liar, which
spreads a wave of parallel asks.
"""

from __future__ import annotations

import uuid
from typing import Any

import optuna

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import Knob

MAX_ASKS = 50  # per proposal, to skip settings already tried


def distribution(knob: Knob) -> Any:
    if knob.choices is not None:
        return optuna.distributions.CategoricalDistribution(knob.choices)
    assert knob.low is not None and knob.high is not None
    if knob.integer:
        return optuna.distributions.IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return optuna.distributions.FloatDistribution(knob.low, knob.high, log=knob.log)


class OptunaResearcher(Researcher):
    name = "optuna"

    def __init__(self, seed: int = 0) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.seed = seed
        self.study: optuna.Study | None = None
        self.study_id = uuid.uuid4().hex[:12]  # tags experiments this study asked for
        self.added: set[int] = set()  # experiment ids already in the study

    def _sync(self, state: SessionState) -> optuna.Study:
        if self.study is None:
            sampler = optuna.samplers.TPESampler(seed=self.seed, constant_liar=True)
            self.study = optuna.create_study(direction=state.direction, sampler=sampler)
        distributions = {name: distribution(knob) for name, knob in state.knobs.items()}
        for result in state.history:
            exp = result.experiment
            if exp.id in self.added:
                continue
            self.added.add(exp.id)
            value = result.run.metric if result.ok else None
            if exp.tags.get("optuna_study") == self.study_id:
                number = int(exp.tags["trial"])
                if value is None:
                    self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(number, value)
                continue
            params = {k: v for k, v in exp.knobs.items() if k in distributions}
            try:
                trial = optuna.trial.create_trial(
                    params=params, distributions=distributions, value=value,
                    state=optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL,
                )
            except ValueError:
                continue  # a setting outside the search space: nothing to learn from it
            self.study.add_trial(trial)
        return self.study

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        study = self._sync(state)
        distributions = {name: distribution(knob) for name, knob in state.knobs.items()}
        seen = space.tried(state)
        proposals = []
        for _ in range(n * MAX_ASKS):
            trial = study.ask(distributions)
            knobs = dict(trial.params)
            if space.key(knobs) in seen:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # a duplicate: not run
                continue
            seen.add(space.key(knobs))
            proposals.append(Proposal(description=f"optuna: {space.describe(knobs)}", knobs=knobs, parent=state.baseline.id,
                                      tags={"optuna_study": self.study_id, "trial": str(trial.number)}))
            if len(proposals) == n:
                break
        return proposals
