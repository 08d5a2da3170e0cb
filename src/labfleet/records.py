"""Frozen records that stages hand each other (see DESIGN.md, "Flow").

The ledger is the only writer of truth; everything here is a read-only snapshot of
it, or a proposal that has not been recorded yet. Records never hold handles to
workers, processes or the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from labfleet.enums import Decision, Outcome, Role, RunStatus

if TYPE_CHECKING:  # annotations only: keeps pydantic out of the read commands' start-up
    from labfleet.target import Knob, KnobValue


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
    role: str = Role.SCREEN  # a Role: screen | confirm | validate | noise | calibrate
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
    history: Sequence[Result]  # every finished experiment's final run, oldest first (immutable)
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


# --------------------------------------------------------------------------- one run on a worker


@dataclass(frozen=True)
class RunRequest:
    """What to run: a version of a target, a fidelity, and where."""

    target_dir: Path  # the target's git repo
    run_dir: Path  # fresh folder for this run
    commit: str = "HEAD"  # the version; the patch applies on top of it
    patch: str = ""
    seed: int = 0
    budget_seconds: float | None = None  # None: the target's budget
    device: str = "cpu"  # cpu, cuda, cuda:N
    threads: int = 1
    cache_root: Path | None = None  # setup cache; default ~/.cache/labfleet
    # Hashes the frozen files must have; None: take them from ``commit`` (before the patch).
    frozen_hashes: dict[str, str] | None = None
    cpus: list[int] | None = None  # CPU affinity of the slot (None: any CPU)
    memory_mb: int | None = None  # address-space limit of the run (None: none)
    # Measure the target's [holdout] metric too (kept and validated versions only).
    holdout: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        paths = {"target_dir", "run_dir", "cache_root"}
        values: dict[str, Any] = {k: Path(v) if k in paths and v is not None else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class RunResult:
    """One run's record: JSON-serializable, written to ``result.json``.

    Frozen like every record here: the harness fills a private draft while the run
    goes and freezes it once (``harness.run_experiment``); an executor that adds what
    only it knows (the log's path on the orchestrator) makes a copy with
    ``dataclasses.replace``. Its containers stay a dict and a list (as JSON reads
    them back); nobody mutates them after the harness returns.
    """

    outcome: Outcome
    reason: str = ""  # one line: why it is not ok
    metric_name: str = ""
    metric: float | None = None
    figures: dict[str, float | str] = field(default_factory=dict)
    commit: str = ""  # the version that ran (parent + patch)
    seed: int = 0
    budget_seconds: float = 0.0
    device: str = "cpu"
    threads: int = 1
    exit_code: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    run_seconds: float = 0.0  # the run command's wall time
    cpu_seconds: float | None = None  # CPU time of every process of the run (sampled by the harness)
    setup_seconds: float = 0.0  # 0 when the setup cache was used
    setup_cached: bool = False
    log_path: str = ""
    log_tail: str = ""
    frozen_hashes: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # warnings that do not change the outcome
    # The [holdout] metric when the request asked for it. Never shown to researchers: the
    # session stores it apart from the run's record (integrity.holdout_of_result reads it).
    holdout: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        if self.metric is not None and not math.isfinite(self.metric):
            data["metric"] = None  # JSON has no NaN; the outcome says it
        if self.holdout is not None and not math.isfinite(self.holdout):
            data["holdout"] = None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "outcome": Outcome(data["outcome"])})
