"""The ledger: one SQLite file per target folder, the single source of truth.

Sessions, experiments, runs, workers and an event log. Every state change is
written (and committed) here before it is acted on, so a killed orchestrator
resumes from the file alone. WAL mode lets readers (``labfleet status``, the
dashboard) read while a session writes.

``Ledger`` is the one writer (the methods below); its reads are ``queries.Queries``.
Only the session loop and the verbs write; researchers, analysis, views, the report
and the dashboard get frozen records (``labfleet.records``, ``ledger.rows``).
``open(path, readonly=True)`` gives a ledger whose writes raise ``LedgerReadOnly``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from labfleet.errors import LedgerError, LedgerReadOnly
from labfleet.ledger.queries import Queries
from labfleet.ledger.schema import ACTIVE, prepare
from labfleet.records import Decision, Experiment, RunStatus

STATE_DIR = ".labfleet"  # a target's ledger, runs and logs (git-excluded); here so a read needs no target.py
LEDGER_FILE = "ledger.sqlite"
F = TypeVar("F", bound=Callable[..., Any])


def _dumps(value: Any) -> str:
    return json.dumps(dict(value) if isinstance(value, Mapping) else value, sort_keys=True)


def _writes(method: F) -> F:
    """A writer method: refused, with a clear error, on a ledger opened read-only."""

    @functools.wraps(method)
    def write(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        if self.readonly:
            raise LedgerReadOnly(f"the ledger at {self.path} is open read-only: {method.__name__} would write to it")
        return method(self, *args, **kwargs)

    return write  # type: ignore[return-value]


class Ledger(Queries):
    """A connection to one ledger file. Not shared between threads (a read-only one may be)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.clock = clock  # every timestamp; the simulator passes its virtual clock
        # A reader that keeps its own copy of the history sets this to a set: every experiment
        # whose row or runs this connection changes is added (see SessionLoop.history).
        self.touched: set[int] | None = None
        # Moved by this connection's own rollbacks and running-run cancel flags (``data_version``
        # moves only for other connections): a copy kept from this connection's writes is read
        # whole again after a rollback, and cancel flags are read again after a cancel.
        self.rollbacks = 0
        self.cancels = 0
        # experiment id -> record, while no other connection wrote (see ``experiment``)
        self._experiments: dict[int, Experiment] = {}
        self._experiments_at = (-1, -1)
        self._batched = False
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise LedgerError(f"no ledger at {self.path}")
            self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10,
                                      isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA query_only=ON")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        prepare(self.db)

    def data_version(self) -> int:
        """Moves whenever another connection (another process, a daemon's thread) commits."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def experiment(self, exp_id: int) -> Experiment:
        """``Queries.experiment``, cached: this connection's writes forget the experiment they change,
        its rollbacks and other connections' commits (``data_version``) forget them all."""
        at = (self.data_version(), self.rollbacks)
        if at != self._experiments_at:
            self._experiments.clear()
            self._experiments_at = at
        exp = self._experiments.get(exp_id)
        if exp is None:
            exp = self._experiments[exp_id] = super().experiment(exp_id)
        return exp

    def _rolled_back(self) -> None:
        self.db.execute("ROLLBACK")
        self.rollbacks += 1
        self._experiments.clear()

    def _touch(self, exp_id: int, row: bool = False) -> None:
        """``exp_id`` changed (``row``: its experiments row, else only its runs)."""
        if row:
            self._experiments.pop(exp_id, None)
        if self.touched is not None:
            self.touched.add(exp_id)

    def _touch_run(self, run_id: int, exp_id: int | None = None) -> None:
        if self.touched is not None and exp_id is not None:
            self.touched.add(exp_id)
        elif self.touched is not None:
            row = self.db.execute("SELECT experiment_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None:
                self.touched.add(row["experiment_id"])

    @classmethod
    def for_target(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / LEDGER_FILE)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise LedgerReadOnly(f"the ledger at {self.path} is open read-only: no write transaction")
        if self._batched:  # inside batch(): its one commit covers this
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self._rolled_back()
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one transaction (the simulator: one commit per loop step, not
        one per statement). An error rolls the whole batch back; nested batches join the outer."""
        if self._batched:
            yield
            return
        if self.readonly:
            raise LedgerReadOnly(f"the ledger at {self.path} is open read-only: no write transaction")
        self.db.execute("BEGIN IMMEDIATE")
        self._batched = True
        try:
            yield
        except BaseException:
            self._batched = False
            self._rolled_back()
            raise
        self._batched = False
        self.db.execute("COMMIT")

    # ----------------------------------------------------------------- writes

    @_writes
    def create_session(
        self, target: str, researcher: str, config: Mapping[str, Any], branch_prefix: str,
        base_commit: str, frozen_hashes: Mapping[str, str],
    ) -> int:
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO sessions (target, researcher, config, branch, base_commit, frozen_hashes,"
                " status, created_at, updated_at) VALUES (?, ?, ?, '', ?, ?, 'running', ?, ?)",
                (target, researcher, _dumps(config), base_commit, _dumps(frozen_hashes), now, now),
            )
            session_id = int(cur.lastrowid or 0)
            db.execute("UPDATE sessions SET branch = ? WHERE id = ?", (f"{branch_prefix}{session_id}", session_id))
        return session_id

    @_writes
    def set_session_status(self, session_id: int, status: str) -> None:
        self.db.execute(
            "UPDATE sessions SET status = ?, updated_at = ? WHERE id = ?", (status, self.clock(), session_id)
        )

    @_writes
    def set_session_config(self, session_id: int, config: Mapping[str, Any]) -> None:
        """Replace a session's settings (a resume with new options)."""
        self.db.execute("UPDATE sessions SET config = ? WHERE id = ?", (json.dumps(dict(config)), session_id))

    @_writes
    def set_workers(self, session_id: int, workers: Iterable[Any]) -> None:
        with self.transaction() as db:
            for w in workers:
                db.execute(
                    "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?)",
                    (session_id, w.id, w.hardware, w.device, w.threads, w.price_per_hour),
                )

    @_writes
    def add_experiment(
        self, session_id: int, *, parent_id: int | None, commit: str, patch: str, description: str,
        hypothesis: str, knobs: Mapping[str, Any], tags: Mapping[str, Any], seed: int,
        budget_seconds: float, decision: Decision = Decision.PENDING, queue: bool = True,
        role: str = "screen", seed_run: int | None = None,
    ) -> tuple[int, int | None]:
        """Record an experiment and (with ``queue``) its first queued run, in one transaction.

        ``role``: the first run's role (``validate`` for an experiment that skips screening;
        ``seed_run``: that run's seed, default the experiment's)."""
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO experiments (session_id, parent_id, commit_sha, patch, description, hypothesis,"
                " knobs, tags, seed, budget_seconds, decision, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (session_id, parent_id, commit, patch, description, hypothesis, _dumps(knobs), _dumps(tags),
                 seed, budget_seconds, str(decision), now),
            )
            exp_id = int(cur.lastrowid or 0)
            run_id = self._queue_run(db, session_id, exp_id, 1, now, seed_run, role) if queue else None
        self._touch(exp_id)
        return exp_id, run_id

    @staticmethod
    def _queue_run(
        db: sqlite3.Connection, session_id: int, exp_id: int, attempt: int, now: float,
        seed: int | None = None, role: str = "screen", place_on: str | None = None,
    ) -> int:
        cur = db.execute(
            "INSERT INTO runs (experiment_id, session_id, attempt, status, queued_at, seed, role, place_on)"
            " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
            (exp_id, session_id, attempt, now, seed, role, place_on),
        )
        return int(cur.lastrowid or 0)

    @_writes
    def queue_run(
        self, session_id: int, exp_id: int, *, seed: int | None = None, role: str = "screen",
        place_on: str | None = None,
    ) -> int:
        """One more run of an experiment: a repeat with another seed, a validation, a calibration."""
        self._touch(exp_id)
        return self._queue_run(self.db, session_id, exp_id, 1, self.clock(), seed, role, place_on)

    @_writes
    def pin_run(self, run_id: int, place_on: str) -> None:
        """Tie a queued run to a hardware class."""
        self._touch_run(run_id)
        self.db.execute("UPDATE runs SET place_on = ? WHERE id = ? AND status = 'queued'", (place_on, run_id))

    @_writes
    def add_final_run(self, session_id: int, exp_id: int, status: RunStatus, reason: str) -> int:
        """A run that ended before it started (e.g. a patch rejected while materializing)."""
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (experiment_id, session_id, attempt, status, queued_at, ended_at, reason)"
                " VALUES (?, ?, 1, ?, ?, ?, ?)",
                (exp_id, session_id, str(status), now, now, reason),
            )
        self._touch(exp_id)
        return int(cur.lastrowid or 0)

    @_writes
    def mark_running(
        self, run_id: int, *, worker: str, hardware: str, run_dir: str, log_path: str,
        budget_seconds: float | None = None, experiment_id: int | None = None,
    ) -> None:
        """Written before the executor starts the run: a crash right after leaves a traceable row
        (``experiment_id``: the run's, when the caller knows it)."""
        self._touch_run(run_id, experiment_id)
        self.db.execute(
            "UPDATE runs SET status = 'running', worker = ?, hardware = ?, run_dir = ?, log_path = ?,"
            " started_at = ?, budget_seconds = ? WHERE id = ? AND status = 'queued'",
            (worker, hardware, run_dir, log_path, self.clock(), budget_seconds, run_id),
        )

    @_writes
    def set_handle(self, run_id: int, handle: str) -> None:
        self.db.execute("UPDATE runs SET handle = ? WHERE id = ?", (handle, run_id))

    @_writes
    def finish_run(
        self, run_id: int, status: RunStatus, *, metric: float | None = None,
        figures: Mapping[str, Any] | None = None, reason: str = "", ended_at: float | None = None,
        retry: bool = False,
    ) -> int | None:
        """Give a running (or queued) run its final status; with ``retry``, queue the next attempt.

        Returns the new run's id when one was queued. A run that is already final is left
        alone (a result is never counted twice).
        """
        with self.transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] not in ACTIVE:
                return None
            self._touch(row["experiment_id"])
            db.execute(
                "UPDATE runs SET status = ?, metric = ?, figures = ?, reason = ?, ended_at = ? WHERE id = ?",
                (str(status), metric, _dumps(figures or {}), reason, ended_at or self.clock(), run_id),
            )
            if retry:
                return self._queue_run(
                    db, row["session_id"], row["experiment_id"], row["attempt"] + 1, self.clock(),
                    row["seed"], row["role"], row["place_on"],
                )
        return None

    @_writes
    def requeue(self, run_id: int) -> None:
        """Put a queued-or-running run back in the queue (used when a start failed)."""
        self._touch_run(run_id)
        self.db.execute(
            "UPDATE runs SET status = 'queued', worker = NULL, hardware = NULL, handle = NULL, started_at = NULL"
            " WHERE id = ? AND status IN ('queued', 'running')",
            (run_id,),
        )

    @_writes
    def decide(self, exp_id: int, decision: Decision, metric: float | None) -> None:
        self._touch(exp_id, row=True)
        self.db.execute(
            "UPDATE experiments SET decision = ?, metric = ?, decided_at = ? WHERE id = ?",
            (str(decision), metric, self.clock(), exp_id),
        )

    @_writes
    def cancel_runs(self, exp_id: int) -> tuple[int, int]:
        """Queued runs become cancelled; running ones are flagged for the orchestrator to stop."""
        self._touch(exp_id)
        with self.transaction() as db:
            queued = db.execute(
                "UPDATE runs SET status = 'cancelled', ended_at = ?, reason = 'cancelled'"
                " WHERE experiment_id = ? AND status = 'queued'", (self.clock(), exp_id),
            ).rowcount
            running = db.execute(
                "UPDATE runs SET cancel = 1 WHERE experiment_id = ? AND status = 'running'", (exp_id,)
            ).rowcount
        self.cancels += 1
        return queued, running

    @_writes
    def reopen(self, exp_id: int) -> None:
        """Back to pending (a discarded experiment promoted by hand is decided again)."""
        self._touch(exp_id, row=True)
        self.db.execute("UPDATE experiments SET decision = 'pending', decided_at = NULL WHERE id = ?", (exp_id,))

    @_writes
    def set_metric(self, exp_id: int, metric: float) -> None:
        """Refine a decided experiment's figure (more seeds arrived) without changing its decision time."""
        self._touch(exp_id, row=True)
        self.db.execute("UPDATE experiments SET metric = ? WHERE id = ?", (metric, exp_id))

    @_writes
    def record_holdout(self, run_id: int, value: float) -> None:
        """Store a run's holdout metric (once; a second call for the same run changes nothing)."""
        row = self.run_row(run_id)
        if row is None:
            raise LedgerError(f"no run {run_id}")
        self.db.execute(
            "INSERT OR IGNORE INTO holdout (run_id, experiment_id, session_id, value, recorded_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, row["experiment_id"], row["session_id"], value, self.clock()),
        )

    @_writes
    def event(self, session_id: int | None, kind: str, **data: Any) -> None:
        self.db.execute(
            "INSERT INTO events (session_id, at, kind, data) VALUES (?, ?, ?, ?)",
            (session_id, self.clock(), kind, _dumps(data)),
        )


def open(path: Path, *, readonly: bool = False, clock: Callable[[], float] = time.time) -> Ledger:  # noqa: A001
    """A ledger file (or a target's state folder holding one); ``readonly``: a ``mode=ro`` connection."""
    path = Path(path)
    if path.is_dir():
        path = path / LEDGER_FILE
    return Ledger(path, clock, readonly=readonly)
