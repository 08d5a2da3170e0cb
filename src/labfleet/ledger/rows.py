"""What the ledger hands out: frozen records, never a database row or a connection.

``SessionRow`` and ``RunRow`` are whole table rows (a run's ``handle`` and ``cancel``
flag are the orchestrator's, not a researcher's: ``records.Run`` leaves them out).
They also answer ``row["column"]``, as the ``sqlite3.Row`` they replace did.
``Snapshot`` is one session read at once: what analysis, the report and the
dashboard compute from. The summary records (``StatusSummary``, ``ResultRow``,
``LlmUsage``, ``WorkerCost``) are what the read commands need, computed by indexed
queries so they stay fast on ledgers with hundreds of thousands of runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from labfleet.errors import LedgerError, LedgerReadOnly, SessionLocked  # noqa: F401  (re-exported)
from labfleet.records import Decision, Experiment, Run, RunStatus


class _Columns:
    """``row["name"]`` and ``dict(row)``, as for the ``sqlite3.Row`` these records replace."""

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_NAMES")
        if names is None:
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            cls._NAMES = names  # type: ignore[attr-defined]
        return names


@dataclass(frozen=True)
class SessionRow(_Columns):
    """One row of ``sessions``; ``config`` and ``frozen_hashes`` are the stored JSON text."""

    id: int
    target: str
    researcher: str
    config: str
    branch: str
    base_commit: str
    frozen_hashes: str
    status: str
    created_at: float
    updated_at: float

    @property
    def settings(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def hashes(self) -> dict[str, str]:
        return json.loads(self.frozen_hashes)


SESSION_COLUMNS = ", ".join(f.name for f in fields(SessionRow))


@dataclass(frozen=True)
class RunRow(_Columns):
    """One row of ``runs``; ``figures`` is the stored JSON text."""

    id: int
    experiment_id: int
    session_id: int
    attempt: int
    status: str
    worker: str | None
    hardware: str | None
    handle: str | None
    queued_at: float
    started_at: float | None
    ended_at: float | None
    metric: float | None
    figures: str
    reason: str
    run_dir: str | None
    log_path: str | None
    seed: int | None
    role: str
    place_on: str | None
    budget_seconds: float | None
    cancel: int

    def record(self) -> Run:
        return run_record(self)


RUN_COLUMNS = ", ".join(f.name for f in fields(RunRow))


@dataclass(frozen=True)
class WorkerRow(_Columns):
    id: str
    hardware: str
    device: str
    threads: int
    price_per_hour: float


@dataclass(frozen=True)
class WorkerCost:
    """A worker's price and the time runs occupied it (started to ended, or to ``now``)."""

    worker: str
    hardware: str
    price_per_hour: float
    busy_seconds: float

    @property
    def usd(self) -> float:
        return self.price_per_hour * self.busy_seconds / 3600


@dataclass(frozen=True)
class LlmUsage:
    """The LLM researcher's calls in one session (its ``llm_call`` events), summed."""

    calls: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0


@dataclass(frozen=True)
class ResultRow:
    """An experiment with its latest run (``run_*`` fields None when it has none yet)."""

    id: int
    parent_id: int | None
    commit_sha: str
    description: str
    hypothesis: str
    decision: str
    metric: float | None
    knobs: str  # JSON text
    tags: str  # JSON text
    seed: int
    budget_seconds: float
    run_id: int | None
    status: str | None
    worker: str | None
    hardware: str | None
    run_metric: float | None
    figures: str | None  # JSON text
    reason: str | None
    started_at: float | None
    ended_at: float | None
    attempt: int | None
    log_path: str | None


@dataclass(frozen=True)
class RunningRun:
    run: int
    experiment: int
    worker: str | None
    started_at: float | None
    description: str


@dataclass(frozen=True)
class StatusSummary:
    """Everything `labfleet status` shows about one session, from summary queries."""

    session: SessionRow
    latest_session: int  # the ledger's newest session id (only it can hold the lock)
    runs: Mapping[str, int]  # status -> count
    decisions: Mapping[str, int]  # decision -> count
    baseline_metric: float | None
    best: Mapping[str, Any] | None  # id, metric, description, commit_sha of the latest keep (or baseline)
    running: tuple[RunningRun, ...]
    repeated: tuple[Run, ...]  # done runs of (experiment, class) pairs run more than once: the noise floor
    costs: tuple[WorkerCost, ...]
    llm: LlmUsage
    unboxed: tuple[Mapping[str, Any], ...]  # the session's runs_unboxed events
    now: float


@dataclass(frozen=True)
class Snapshot:
    """One session as read at one moment: frozen, holding no connection."""

    session: SessionRow
    experiments: tuple[Experiment, ...]  # by id
    runs: tuple[Run, ...]  # by id
    workers: tuple[WorkerRow, ...]
    decided_at: Mapping[int, float]  # experiment id -> when it was decided
    costs: tuple[WorkerCost, ...]  # busy time up to ``now``
    llm: LlmUsage
    events: Mapping[str, tuple[Mapping[str, Any], ...]]  # kind -> data, for the kinds asked for
    now: float  # the ledger's clock when it was read

    @property
    def id(self) -> int:
        return self.session.id

    def events_of(self, kind: str) -> tuple[Mapping[str, Any], ...]:
        return self.events.get(kind, ())


def frozen_map(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


def experiment_record(row: Any) -> Experiment:
    return Experiment(
        id=row["id"], session_id=row["session_id"], parent_id=row["parent_id"], commit=row["commit_sha"],
        patch=row["patch"], description=row["description"], hypothesis=row["hypothesis"],
        knobs=json.loads(row["knobs"]), tags=json.loads(row["tags"]), seed=row["seed"],
        budget_seconds=row["budget_seconds"], decision=Decision(row["decision"]),
        created_at=row["created_at"], metric=row["metric"],
    )


def run_record(row: Any) -> Run:
    return Run(
        id=row["id"], experiment_id=row["experiment_id"], attempt=row["attempt"], status=RunStatus(row["status"]),
        worker=row["worker"], hardware=row["hardware"], queued_at=row["queued_at"], started_at=row["started_at"],
        ended_at=row["ended_at"], metric=row["metric"], figures=json.loads(row["figures"]), reason=row["reason"],
        run_dir=row["run_dir"], log_path=row["log_path"], seed=row["seed"], role=row["role"],
        place_on=row["place_on"], budget_seconds=row["budget_seconds"],
    )
