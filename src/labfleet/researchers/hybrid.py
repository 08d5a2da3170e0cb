"""The hybrid researcher: structural ideas from a model, the knobs re-tuned by Optuna after each structural keep.

Two phases, decided afresh from the ledger at every ``propose``:

- **ideas**: the LLM researcher in ideas mode (k named ideas per call, run as a
  factorial wave around the champion; ``researchers.ideas``), or, with
  ``source="external"``, nothing: an outside agent submits its ideas
  (``labfleet submit --factor``) and the hybrid only tunes.
- **tune**: first around the baseline (over the knobs' whole ranges: the baseline is
  the first structure), then after each *structural* keep (a kept experiment that
  is not itself a tuning experiment: an idea, a combination of ideas, a
  hand-submitted patch), an Optuna
  sampler (TPE or CMA-ES, ``researchers.optuna``) searches the knobs around the kept
  version for ``tune_experiments`` experiments, every one starting from the kept
  version (tag ``tune_of=<id>``); the space is narrowed around its knob values
  (``step`` of each range either side, in log space for log knobs, so the kept
  values are its centre, where CMA-ES starts; the neighbouring choices). Then control returns to ideas, from the
  champion (which may now be a tuned version).

Workers the tuning phase cannot fill (its budget nearly spent) go to ideas, so
none idles. State is the ledger: the latest structural keep and how many
experiments name it in ``tune_of`` say which phase holds; a restarted session
rebuilds the study from those experiments (as the optuna researcher does), and
the LLM's wave from its tags. Within one process the tuning proposals handed out
but not yet in the ledger count too (the session records an answer's proposals
one git commit per tick, so the next call can see a state without them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labfleet.errors import ConfigError
from labfleet.records import Decision, Experiment, Proposal, Result, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.researchers.llm import LLMResearcher
from labfleet.researchers.optuna import SAMPLERS, STUDY_TAG, TRIAL_TAG, OptunaResearcher
from labfleet.target import Knob, KnobValue

if TYPE_CHECKING:
    from labfleet.researchers.view import Sources

TUNE_TAG = "tune_of"  # experiment id of the structural keep a tuning experiment re-tunes around
SOURCES = ("llm", "external")


def neighbourhood(knobs: dict[str, Knob], values: dict[str, KnobValue], step: float) -> dict[str, Knob]:
    """The knob space narrowed around ``values``: ``step`` of each range either side; choices: the value and its neighbours."""
    out: dict[str, Knob] = {}
    for name, knob in knobs.items():
        value = values.get(name)
        if value is None:
            continue
        if knob.choices is not None:
            choices = list(knob.choices)
            if value not in choices:
                out[name] = knob
                continue
            i = choices.index(value)
            near = choices[max(0, i - 1): i + 2]
            if len(near) >= 2:
                out[name] = knob.model_copy(update={"choices": near})
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        low, high = space.shift(knob, value, -step), space.shift(knob, value, step)
        if low == high:
            continue
        assert knob.low is not None and knob.high is not None
        out[name] = knob.model_copy(update={"low": float(min(low, value)), "high": float(max(high, value))})
    return out


class HybridResearcher(Researcher):
    """Ideas from a model (or an agent); after each structural keep, an Optuna sampler re-tunes the knobs."""

    name = "hybrid"
    wants_sources = True
    wants_findings = True

    def __init__(self, seed: int = 0, sources: Sources | None = None, sampler: str = "tpe",
                 tune_experiments: int = 8, step: float = 0.25, ideas: int = 3, source: str = "llm",
                 **llm_options: Any) -> None:
        if sampler not in SAMPLERS:
            raise ConfigError(f"researcher 'hybrid': unknown sampler {sampler!r} (use {' or '.join(SAMPLERS)})")
        if tune_experiments < 1:
            raise ConfigError(f"researcher 'hybrid': tune_experiments must be at least 1, got {tune_experiments}")
        if source not in SOURCES:
            raise ConfigError(f"researcher 'hybrid': source must be llm or external, got {source!r}")
        if not 0 < step <= 1:
            raise ConfigError(f"researcher 'hybrid': step must be in (0, 1], got {step}")
        self.seed = seed
        self.sampler = sampler
        self.tune_experiments = tune_experiments
        self.step = step
        self.source = source
        self.ideas: LLMResearcher | None = None
        if source == "llm":
            self.ideas = LLMResearcher(seed=seed, sources=sources, ideas=ideas, **llm_options)
        elif llm_options:
            raise ConfigError(f"researcher 'hybrid': {', '.join(llm_options)} apply only with source llm")
        self._tuners: dict[int, OptunaResearcher] = {}
        self._handed: dict[int, set[tuple[str, str]]] = {}  # keep id -> (study, trial) of tuning proposals handed out
        self.phase = "ideas"  # what the latest propose did first: ideas or tune

    # ------------------------------------------------------------------ usage (the session records the model's calls)

    def drain_usage(self) -> list[dict[str, Any]]:
        return self.ideas.drain_usage() if self.ideas is not None else []

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.ideas.calls if self.ideas is not None else []

    # ------------------------------------------------------------------ the contract

    def observe(self, state: SessionState, result: Result) -> None:
        if self.ideas is not None:
            self.ideas.observe(state, result)

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        proposals: list[Proposal] = []
        keep = structural_keep(state) or state.baseline
        self.phase = "ideas"
        if keep is not None and state.knobs:
            left = self.tune_experiments - tuned_count(state, keep.id) - len(self._unrecorded(state, keep.id))
            if left > 0:
                self.phase = "tune"
                tune = self.tuner(keep, state).propose(state, min(n, left))
                self._handed.setdefault(keep.id, set()).update(_trial_key(p.tags) for p in tune)
                proposals += tune
        if len(proposals) < n and self.ideas is not None:
            proposals += self.ideas.propose(state, n - len(proposals))
        return proposals[:n]

    def _unrecorded(self, state: SessionState, keep_id: int) -> set[tuple[str, str]]:
        """Tuning proposals around ``keep_id`` this instance handed out that the ledger does not show yet.

        The session records answered proposals one git commit per tick, so the next
        ``propose`` can see a state without them: counted from the ledger alone, the
        tuning budget was overspent (5 experiments for a budget of 4, measured in
        bench/vs_optuna.py). After a restart this is empty and the ledger is the truth
        (a proposal never recorded never ran).
        """
        handed = self._handed.get(keep_id, set())
        if not handed:
            return set()
        seen = {_trial_key(e.tags) for e in [r.experiment for r in state.history] + list(state.pending)}
        handed -= seen
        return handed

    def tuner(self, keep: Experiment, state: SessionState) -> OptunaResearcher:
        """The study around ``keep`` (made on first use; after a restart it reads its trials from the ledger)."""
        tuner = self._tuners.get(keep.id)
        if tuner is None:
            first = keep.parent_id is None  # the baseline: the first structure, searched over the whole space
            knobs = dict(state.knobs) if first else neighbourhood(dict(state.knobs), dict(keep.knobs), self.step)
            tag = str(keep.id)
            tuner = OptunaResearcher(
                seed=self.seed + keep.id, sampler=self.sampler, parent=keep.id,
                scope=lambda e, tag=tag, kid=keep.id: e.id == kid or e.tags.get(TUNE_TAG) == tag,
                tags={TUNE_TAG: tag}, label=f"re-tune e{keep.id} ({self.sampler})", knobs=knobs,
                startup=max(1, self.tune_experiments // 4),
            )
            self._tuners[keep.id] = tuner
        return tuner


def _trial_key(tags: Mapping[str, str]) -> tuple[str, str]:
    """A tuning proposal's identity: its study and trial number (``researchers.optuna`` tags)."""
    return tags.get(STUDY_TAG, ""), tags.get(TRIAL_TAG, "")


def structural_keep(state: SessionState) -> Experiment | None:
    """The latest kept experiment that is not a tuning experiment (None: only the baseline so far)."""
    kept = [r.experiment for r in state.history
            if r.experiment.decision == Decision.KEPT and TUNE_TAG not in r.experiment.tags
            and r.experiment.parent_id is not None]
    if not kept:
        return None
    return max(kept, key=lambda e: e.id)


def tuned_count(state: SessionState, keep_id: int) -> int:
    """Experiments recorded (run, running or queued) that re-tune around ``keep_id``."""
    tag = str(keep_id)
    exps = [r.experiment for r in state.history] + list(state.pending)
    return sum(1 for e in exps if e.tags.get(TUNE_TAG) == tag)
