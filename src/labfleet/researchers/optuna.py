"""Optuna's samplers over the target's knobs, through its ask/tell interface: TPE (``optuna``) and CMA-ES (``cmaes``).

Optuna is imported when an ``OptunaResearcher`` is made, not when this module is.
CMA-ES is Optuna's ``CmaEsSampler`` (it needs the ``cmaes`` package); it models
the numeric knobs only, and Optuna samples the choice knobs independently
(uniformly at random) beside it.

The hybrid researcher runs one of these around each structural keep: ``parent``
(the version every proposal starts from; default the baseline) and ``scope`` (which
experiments the study learns from; default all) say where.

How results reach the in-memory study (each finished experiment exactly once):

- Every ``propose`` first syncs the study with ``state.history``; ``observe`` is not
  needed (and not replayed after a restart), so it is the base class's no-op.
- A proposal carries tags naming this study (a random id per instance) and its trial
  number. Its trial stays ``RUNNING`` while the experiment is pending, so TPE's
  constant liar steers parallel asks away from it. When the experiment shows up in
  the history, that trial is told its metric (``FAIL`` when the run did not count).
- Every other finished experiment (the baseline, hand-submitted ones, other
  researchers', and everything recorded before a restart, whose tags name a study
  that no longer exists) is added with ``create_trial``.
- Experiment ids already synced are remembered, and an open trial is told at most
  once (it leaves ``open`` when told), so nothing counts twice.
- An asked trial whose experiment is in neither the history nor the pending list at
  ``MISSING_SYNCS`` proposes in a row was dropped by the caller: it is told ``FAIL``
  (TPE ignores failed trials) rather than left running forever. Not at the first
  miss: the session records answered proposals one git commit per tick, so the next
  ``propose`` often sees a state without the previous answer; failing those at once
  cost CMA-ES their results (a result that arrives for a closed trial is added with
  ``create_trial``, which CMA-ES's generations ignore) and TPE its liar.
- An ask that lands on a setting already run or pending is told ``FAIL`` and asked
  again; ``FAIL`` rather than ``PRUNED`` because TPE ranks pruned trials as bad.
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from labfleet.errors import ConfigError
from labfleet.records import Experiment, Proposal, Result, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import Knob, KnobValue

if TYPE_CHECKING:
    import optuna

STUDY_TAG = "optuna_study"
TRIAL_TAG = "optuna_trial"
MAX_ASKS = 20  # per proposal, to get past settings already tried
MISSING_SYNCS = 3  # proposes in a row an asked trial may be missing from the ledger before it counts as dropped


def distribution(knob: Knob) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one knob."""
    import optuna

    if knob.choices is not None:
        return optuna.distributions.CategoricalDistribution(knob.choices)
    assert knob.low is not None and knob.high is not None
    if knob.integer:
        low, high = math.ceil(knob.low), math.floor(knob.high)
        return optuna.distributions.IntDistribution(low, high, log=knob.log)
    return optuna.distributions.FloatDistribution(knob.low, knob.high, log=knob.log)


def _readable(params: Mapping[str, Any], knobs: Mapping[str, Knob]) -> dict[str, KnobValue]:
    """Floats cut to 4 significant digits for readable diffs (kept exact if that leaves the range)."""
    return {
        name: space.fit(value, knobs[name]) if knobs[name].choices is None and isinstance(value, float) else value
        for name, value in params.items()
    }


def _value(result: Result) -> float | None:
    """The metric to tell, or None when the run does not count."""
    if not result.ok:
        return None
    mean = result.experiment.metric  # the mean when the experiment was repeated
    return mean if mean is not None and math.isfinite(mean) else result.run.metric


SAMPLERS = ("tpe", "cmaes")


def make_sampler(kind: str, seed: int, startup: int | None = None) -> optuna.samplers.BaseSampler:
    """Optuna's TPE (constant liar, for parallel asks) or CMA-ES sampler, seeded.

    ``startup``: random trials before the model takes over (Optuna's defaults when
    None). CMA-ES starts from the centre of the space (the hybrid centres its space on
    the kept values).
    """
    import optuna

    if kind == "tpe":
        with warnings.catch_warnings():  # constant_liar is "experimental" before Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            extra = {} if startup is None else {"n_startup_trials": startup}
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **extra)
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401 - CmaEsSampler imports it only when it first samples
        except ImportError:
            raise ConfigError("the cmaes sampler needs the `cmaes` package (pip install cmaes)") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            extra: dict[str, Any] = {} if startup is None else {"n_startup_trials": startup}
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **extra)
    raise ConfigError(f"unknown sampler {kind!r} (use {' or '.join(SAMPLERS)})")


class OptunaResearcher(Researcher):
    """An Optuna sampler (TPE with constant liar by default) on an in-memory study; parent = baseline."""

    name = "optuna"
    sampler_kind = "tpe"

    def __init__(self, seed: int = 0, sampler: str | None = None, parent: int | None = None,
                 scope: Callable[[Experiment], bool] | None = None, tags: Mapping[str, str] | None = None,
                 label: str | None = None, knobs: Mapping[str, Knob] | None = None,
                 startup: int | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial
        self.seed = seed
        self.kind = sampler or self.sampler_kind
        make_sampler(self.kind, seed)  # an unknown sampler or a missing package: an error now, not at the first ask
        self.parent = parent  # None: the baseline
        self.scope = scope  # None: every finished experiment teaches the study
        self.tags = dict(tags or {})
        self.label = label or ("optuna" if self.kind == "tpe" else self.kind)
        self.knobs = knobs  # None: the target's knobs and ranges (the hybrid narrows them around a keep)
        self.startup = startup
        self.study: optuna.Study | None = None
        self.study_id = uuid.uuid4().hex[:8]  # tells this instance's trials from a previous one's
        self.synced: set[int] = set()  # experiment ids already in the study
        self.open: set[int] = set()  # trial numbers asked and not yet told
        self.missing: dict[int, int] = {}  # open trial -> proposes in a row it was in neither history nor pending

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        import optuna

        study = self.sync(state)
        distributions = {name: distribution(knob) for name, knob in self._knobs(state).items()}
        if self.scope is None:
            seen = space.tried(state)
        else:
            seen = {space.key(e.knobs) for e in [r.experiment for r in state.history] + list(state.pending)
                    if self.scope(e)}
        parent = self.parent if self.parent is not None else state.baseline.id
        proposals: list[Proposal] = []
        for _ in range(n * MAX_ASKS):
            trial = study.ask(distributions)
            knobs = _readable(trial.params, self._knobs(state))
            if space.key(knobs) in seen:
                trial.set_user_attr("labfleet", "not run: setting already tried")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            seen.add(space.key(knobs))
            self.open.add(trial.number)
            proposals.append(Proposal(
                description=f"{self.label}: {space.describe(knobs)}",
                knobs=knobs,
                parent=parent,
                tags={**self.tags, STUDY_TAG: self.study_id, TRIAL_TAG: str(trial.number)},
            ))
            if len(proposals) == n:
                break
        return proposals

    def sync(self, state: SessionState) -> optuna.Study:
        """The study, created on first use, with every finished experiment in it once."""
        import optuna

        if self.study is None:
            sampler = make_sampler(self.kind, self.seed, self.startup)
            self.study = optuna.create_study(direction=state.direction, sampler=sampler)
        study = self.study
        distributions = {name: distribution(knob) for name, knob in self._knobs(state).items()}
        finished: set[int] = set()
        for result in state.history:
            exp = result.experiment
            number = self._own_trial(exp.tags)
            if number is not None:
                finished.add(number)
            if exp.id in self.synced:
                continue
            self.synced.add(exp.id)
            if self.scope is not None and number is None and not self.scope(exp):
                continue  # outside this study's region (another parent's code)
            value = _value(result)
            if number is not None and number in self.open:
                self.open.discard(number)
                if value is None:
                    study.tell(number, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(number, value)
                continue
            params = {k: v for k, v in exp.knobs.items() if k in distributions}
            try:
                trial = optuna.trial.create_trial(
                    params=params,
                    distributions={k: distributions[k] for k in params},
                    value=value,
                    state=optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL,
                )
            except (ValueError, TypeError):
                continue  # a setting outside the search space (e.g. a baseline off-range): nothing to learn
            study.add_trial(trial)
        waiting = {self._own_trial(exp.tags) for exp in state.pending}
        absent = self.open - finished - waiting
        self.missing = {number: self.missing.get(number, 0) + 1 for number in absent}
        for number in sorted(absent):
            if self.missing[number] >= MISSING_SYNCS:  # asked, never recorded: dropped
                self.open.discard(number)
                del self.missing[number]
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        return study

    def _knobs(self, state: SessionState) -> Mapping[str, Knob]:
        return self.knobs if self.knobs is not None else state.knobs

    def _own_trial(self, tags: Mapping[str, str]) -> int | None:
        """The trial number of an experiment this study asked for, else None."""
        if tags.get(STUDY_TAG) != self.study_id:
            return None
        try:
            return int(tags[TRIAL_TAG])
        except (KeyError, ValueError):
            return None


class CmaEsResearcher(OptunaResearcher):
    """Optuna's CMA-ES (``CmaEsSampler(seed=seed)``) over the numeric knobs; choice knobs sampled independently."""

    name = "cmaes"
    sampler_kind = "cmaes"
