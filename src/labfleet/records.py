"""Frozen records that stages hand each other (see DESIGN.md, "Flow").

The ledger is the only writer of truth; everything here is a read-only snapshot of
it, or a proposal that has not been recorded yet. Records never hold handles to
workers, processes or the database.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: keeps pydantic out of the read commands' start-up
    from labfleet.target import Knob, KnobValue


class RunStatus(enum.StrEnum):
    """A run's life: queued -> running -> one final status. Final statuses never change."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # the harness returned outcome ok: the metric counts
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    NO_METRIC = "no_metric"
    NAN = "nan"
    REJECTED = "rejected"
    SUSPECT = "suspect"
    SETUP_FAILED = "setup_failed"
    OVER_BUDGET = "over_budget"  # past budget + evaluation allowance: never compared
    LOST = "lost"  # the infrastructure lost it (worker gone, harness died): retried
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)

    @classmethod
    def from_outcome(cls, outcome: str) -> RunStatus:
        """The harness's outcome as a run status (``ok`` is ``done``)."""
        return cls.DONE if outcome == "ok" else cls(outcome)


class Decision(enum.StrEnum):
    PENDING = "pending"  # not all of its runs are final yet
    KEPT = "kept"  # became the champion: the lineage branch advanced to it
    DISCARDED = "discarded"  # ran fine, not better by the margin
    FAILED = "failed"  # no counting run (crashed, timeout, rejected, ...)
    BASELINE = "baseline"  # the session's starting point


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Proposal:
    """What a researcher returns: one change to try. Not yet in the ledger.

    Give ``knobs`` (values rendered into the editable files), a ``patch`` (unified
    diff against the parent version), or both (the patch is applied first).
    """

    description: str
    knobs: Mapping[str, KnobValue] = field(default_factory=dict)
    patch: str = ""
    hypothesis: str = ""
    parent: int | None = None  # experiment id of the version to start from; None: the champion
    tags: Mapping[str, str] = field(default_factory=dict)  # wave, phase, tier, ...
    seed: int | None = None  # None: the session's default seed
    budget_seconds: float | None = None  # None: the session's budget

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", _frozen(self.knobs))
        object.__setattr__(self, "tags", _frozen(self.tags))


@dataclass(frozen=True)
class Experiment:
    """One proposed change as recorded: an immutable commit and its decision."""

    id: int
    session_id: int
    parent_id: int | None  # None for the baseline
    commit: str  # parent + patch ("" if the patch was rejected before a commit existed)
    patch: str
    description: str
    hypothesis: str
    knobs: Mapping[str, KnobValue]  # every knob's value at this version
    tags: Mapping[str, str]
    seed: int
    budget_seconds: float
    decision: Decision
    created_at: float
    metric: float | None = None  # the counting run's metric (mean if repeated)


@dataclass(frozen=True)
class Run:
    """One execution of an experiment on one worker."""

    id: int
    experiment_id: int
    attempt: int  # 1 + number of earlier lost runs of the same experiment
    status: RunStatus
    worker: str | None
    hardware: str | None
    queued_at: float
    started_at: float | None
    ended_at: float | None
    metric: float | None
    figures: Mapping[str, float | str]
    reason: str
    run_dir: str | None
    log_path: str | None
    seed: int | None = None  # None: the experiment's seed
    role: str = "screen"  # screen | confirm | validate | noise | calibrate
    place_on: str | None = None  # the hardware class it must run on, if any
    budget_seconds: float | None = None  # the budget it ran with (None until placed)


@dataclass(frozen=True)
class Result:
    """A finished experiment as a researcher sees it."""

    experiment: Experiment
    run: Run

    @property
    def ok(self) -> bool:
        return self.run.status == RunStatus.DONE and self.run.metric is not None and math.isfinite(self.run.metric)


@dataclass(frozen=True)
class SessionState:
    """What a researcher may know when it proposes: a frozen snapshot of the ledger."""

    session_id: int
    metric: str
    direction: str  # "minimize" | "maximize"
    knobs: Mapping[str, Knob]  # the target's knob definitions
    baseline: Experiment | None
    champion: Experiment | None  # the current best (kept) version
    history: tuple[Result, ...]  # every finished experiment's final run, oldest first
    pending: tuple[Experiment, ...]  # proposed, not finished (queued or running)
    free_workers: int
    seed: int = 0  # the session's seed, for researchers' own randomness
    noise: Mapping[str, float] = field(default_factory=dict)  # hardware class -> sd of one run's metric
    since_keep: int = 0  # experiments decided since the latest keep: a long streak says move on
    # What the analysis says in words (phase, hardware, effects of the latest waves); filled
    # only for researchers that read it (``wants_findings``), since it costs a pass over the ledger.
    findings: tuple[str, ...] = ()
    # Pending experiments whose screening run is done (with [tiers]: winners waiting for or under
    # validation): their screen results, so a researcher can use them before they are decided.
    screened: tuple[Result, ...] = ()

    def better(self, a: float, b: float) -> bool:
        """Whether metric ``a`` is better than ``b`` in this session's direction."""
        return a < b if self.direction == "minimize" else a > b
