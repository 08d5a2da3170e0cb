"""The ledger: one SQLite file per target folder, the single source of truth.

Sessions, experiments, runs, workers and an event log. Every state change is
written (and committed) here before it is acted on, so a killed orchestrator
resumes from the file alone. WAL mode lets readers (``labfleet status``, the
dashboard) read while a session writes.

Only the session loop and the CLI write; researchers and analysis get frozen
records (``labfleet.records``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labfleet.errors import LabfleetError
from labfleet.records import Decision, Experiment, Result, Run, RunStatus

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "session.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    researcher TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON: workers, budget, limits, margin, seed, ...
    branch TEXT NOT NULL,            -- the lineage branch, labfleet/<id>
    base_commit TEXT NOT NULL,
    frozen_hashes TEXT NOT NULL,     -- JSON: path -> sha256, recorded at the start
    status TEXT NOT NULL,            -- running | stopped | finished
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    parent_id INTEGER REFERENCES experiments(id),
    commit_sha TEXT NOT NULL,
    patch TEXT NOT NULL,
    description TEXT NOT NULL,
    hypothesis TEXT NOT NULL,
    knobs TEXT NOT NULL,             -- JSON: every knob's value at this version
    tags TEXT NOT NULL,              -- JSON
    seed INTEGER NOT NULL,
    budget_seconds REAL NOT NULL,
    decision TEXT NOT NULL,
    metric REAL,
    created_at REAL NOT NULL,
    decided_at REAL
);
CREATE INDEX IF NOT EXISTS experiments_session ON experiments(session_id);
CREATE INDEX IF NOT EXISTS experiments_decision ON experiments(session_id, decision);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    worker TEXT,
    hardware TEXT,
    handle TEXT,                     -- executor's handle (a pid for local runs)
    queued_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    metric REAL,
    figures TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL DEFAULT '',
    run_dir TEXT,
    log_path TEXT,
    seed INTEGER,                    -- NULL: the experiment's seed
    role TEXT NOT NULL DEFAULT 'screen',  -- screen | confirm | validate | noise | calibrate
    place_on TEXT,                   -- a hardware class this run must run on (NULL: any the role allows)
    budget_seconds REAL,             -- the budget it ran with (set when placed)
    cancel INTEGER NOT NULL DEFAULT 0  -- 1: `labfleet cancel` asked the orchestrator to stop it
);
CREATE INDEX IF NOT EXISTS runs_session_status ON runs(session_id, status);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment_id);
CREATE TABLE IF NOT EXISTS workers (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    id TEXT NOT NULL,
    hardware TEXT NOT NULL,
    device TEXT NOT NULL,
    threads INTEGER NOT NULL,
    price_per_hour REAL NOT NULL,
    PRIMARY KEY (session_id, id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    session_id INTEGER,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id);
-- The [holdout] metric of kept and validated versions' runs. Kept apart from `runs` on
-- purpose: no researcher-visible record (records.Run/Result) ever reads this table.
CREATE TABLE IF NOT EXISTS holdout (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    value REAL NOT NULL,
    recorded_at REAL NOT NULL
);
"""

ACTIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
# Columns added after the first release: an older ledger gets them on open.
MIGRATIONS = {
    "runs": {
        "seed": "INTEGER", "role": "TEXT NOT NULL DEFAULT 'screen'", "place_on": "TEXT", "budget_seconds": "REAL",
        "cancel": "INTEGER NOT NULL DEFAULT 0",
    },
}


class LedgerError(LabfleetError):
    pass


class SessionLocked(LedgerError):
    pass


def _dumps(value: Any) -> str:
    return json.dumps(dict(value) if isinstance(value, Mapping) else value, sort_keys=True)


class Ledger:
    """A connection to one ledger file. Not shared between threads."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock  # every timestamp; the simulator passes its virtual clock
        # A reader that keeps its own copy of the history sets this to a set: every experiment
        # whose row or runs this connection changes is added (see SessionLoop.history).
        self.touched: set[int] | None = None
        self._batched = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; fine under WAL
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        for table, columns in MIGRATIONS.items():
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def data_version(self) -> int:
        """Moves whenever another connection (another process, a daemon's thread) commits."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def _touch(self, exp_id: int) -> None:
        if self.touched is not None:
            self.touched.add(exp_id)

    def _touch_run(self, run_id: int) -> None:
        if self.touched is not None:
            row = self.db.execute("SELECT experiment_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None:
                self.touched.add(row["experiment_id"])

    @classmethod
    def for_target(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / LEDGER_FILE)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self._batched:  # inside batch(): its one commit covers this
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside is one transaction (the simulator: one commit per loop step, not
        one per statement). An error rolls the whole batch back; nested batches join the outer."""
        if self._batched:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._batched = True
        try:
            yield
        except BaseException:
            self._batched = False
            self.db.execute("ROLLBACK")
            raise
        self._batched = False
        self.db.execute("COMMIT")

    # ----------------------------------------------------------------- sessions

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

    def session(self, session_id: int | None = None) -> sqlite3.Row | None:
        """A session row; the latest one when ``session_id`` is None."""
        if session_id is None:
            return self.db.execute("SELECT * FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
        return self.db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()

    def set_session_status(self, session_id: int, status: str) -> None:
        self.db.execute(
            "UPDATE sessions SET status = ?, updated_at = ? WHERE id = ?", (status, self.clock(), session_id)
        )

    def set_workers(self, session_id: int, workers: Iterable[Any]) -> None:
        with self.transaction() as db:
            for w in workers:
                db.execute(
                    "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?)",
                    (session_id, w.id, w.hardware, w.device, w.threads, w.price_per_hour),
                )


    # ----------------------------------------------------------------- experiments and runs

    def add_experiment(
        self, session_id: int, *, parent_id: int | None, commit: str, patch: str, description: str,
        hypothesis: str, knobs: Mapping[str, Any], tags: Mapping[str, Any], seed: int,
        budget_seconds: float, decision: Decision = Decision.PENDING, queue: bool = True,
    ) -> tuple[int, int | None]:
        """Record an experiment and (with ``queue``) its first queued run, in one transaction."""
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO experiments (session_id, parent_id, commit_sha, patch, description, hypothesis,"
                " knobs, tags, seed, budget_seconds, decision, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (session_id, parent_id, commit, patch, description, hypothesis, _dumps(knobs), _dumps(tags),
                 seed, budget_seconds, str(decision), now),
            )
            exp_id = int(cur.lastrowid or 0)
            run_id = self._queue_run(db, session_id, exp_id, 1, now) if queue else None
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

    def queue_run(
        self, session_id: int, exp_id: int, *, seed: int | None = None, role: str = "screen",
        place_on: str | None = None,
    ) -> int:
        """One more run of an experiment: a repeat with another seed, a validation, a calibration."""
        self._touch(exp_id)
        return self._queue_run(self.db, session_id, exp_id, 1, self.clock(), seed, role, place_on)

    def pin_run(self, run_id: int, place_on: str) -> None:
        """Tie a queued run to a hardware class."""
        self._touch_run(run_id)
        self.db.execute("UPDATE runs SET place_on = ? WHERE id = ? AND status = 'queued'", (place_on, run_id))

    def decided_since_keep(self, session_id: int) -> int:
        """Experiments decided after the latest keep (or the baseline): the patience count."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL"
            " AND decision IN ('kept', 'discarded', 'failed') AND decided_at > COALESCE((SELECT MAX(decided_at)"
            " FROM experiments WHERE session_id = ? AND decision IN ('kept', 'baseline')), 0)",
            (session_id, session_id),
        ).fetchone()
        return int(row["n"])

    def awaiting_validation(self, session_id: int) -> list[int]:
        """Screened experiments still pending with nothing queued or running: winners waiting for a slot."""
        rows = self.db.execute(
            "SELECT e.id FROM experiments e WHERE e.session_id = ? AND e.decision = 'pending'"
            " AND e.parent_id IS NOT NULL AND EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.id"
            " AND r.status = 'done') AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.id"
            " AND (r.status IN ('queued', 'running') OR r.role = 'validate')) ORDER BY e.id",
            (session_id,),
        )
        return [r["id"] for r in rows]

    def validations_in_flight(self, session_id: int) -> int:
        """Experiments with a validation run queued or running."""
        row = self.db.execute(
            "SELECT COUNT(DISTINCT experiment_id) AS n FROM runs WHERE session_id = ? AND role = 'validate'"
            " AND status IN ('queued', 'running') AND experiment_id IN (SELECT id FROM experiments"
            " WHERE session_id = ? AND parent_id IS NOT NULL)",
            (session_id, session_id),
        ).fetchone()
        return int(row["n"])

    def runs_of(self, exp_id: int) -> list[Run]:
        rows = self.db.execute("SELECT * FROM runs WHERE experiment_id = ? ORDER BY id", (exp_id,))
        return [run_record(r) for r in rows]

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

    def mark_running(
        self, run_id: int, *, worker: str, hardware: str, run_dir: str, log_path: str,
        budget_seconds: float | None = None,
    ) -> None:
        """Written before the executor starts the run: a crash right after leaves a traceable row."""
        self._touch_run(run_id)
        self.db.execute(
            "UPDATE runs SET status = 'running', worker = ?, hardware = ?, run_dir = ?, log_path = ?,"
            " started_at = ?, budget_seconds = ? WHERE id = ? AND status = 'queued'",
            (worker, hardware, run_dir, log_path, self.clock(), budget_seconds, run_id),
        )

    def set_handle(self, run_id: int, handle: str) -> None:
        self.db.execute("UPDATE runs SET handle = ? WHERE id = ?", (handle, run_id))

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

    def requeue(self, run_id: int) -> None:
        """Put a queued-or-running run back in the queue (used when a start failed)."""
        self._touch_run(run_id)
        self.db.execute(
            "UPDATE runs SET status = 'queued', worker = NULL, hardware = NULL, handle = NULL, started_at = NULL"
            " WHERE id = ? AND status IN ('queued', 'running')",
            (run_id,),
        )

    def decide(self, exp_id: int, decision: Decision, metric: float | None) -> None:
        self._touch(exp_id)
        self.db.execute(
            "UPDATE experiments SET decision = ?, metric = ?, decided_at = ? WHERE id = ?",
            (str(decision), metric, self.clock(), exp_id),
        )

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
        return queued, running

    def cancel_requests(self, session_id: int) -> list[int]:
        rows = self.db.execute(
            "SELECT id FROM runs WHERE session_id = ? AND status = 'running' AND cancel = 1", (session_id,)
        )
        return [r["id"] for r in rows]

    def reopen(self, exp_id: int) -> None:
        """Back to pending (a discarded experiment promoted by hand is decided again)."""
        self._touch(exp_id)
        self.db.execute("UPDATE experiments SET decision = 'pending', decided_at = NULL WHERE id = ?", (exp_id,))

    def set_metric(self, exp_id: int, metric: float) -> None:
        """Refine a decided experiment's figure (more seeds arrived) without changing its decision time."""
        self._touch(exp_id)
        self.db.execute("UPDATE experiments SET metric = ? WHERE id = ?", (metric, exp_id))

    def experiment(self, exp_id: int) -> Experiment:
        row = self.db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no experiment {exp_id}")
        return experiment_record(row)

    def experiments(self, session_id: int) -> list[Experiment]:
        rows = self.db.execute("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (session_id,))
        return [experiment_record(r) for r in rows]

    def runs(self, session_id: int) -> list[Run]:
        rows = self.db.execute("SELECT * FROM runs WHERE session_id = ? ORDER BY id", (session_id,))
        return [run_record(r) for r in rows]

    def history(self, session_id: int) -> tuple[list[Result], list[Experiment]]:
        """Decided experiments with their latest run (a done one when there is one), and pending ones."""
        latest: dict[int, Run] = {}
        for run in self.runs(session_id):
            _latest(latest, run)
        history, pending = [], []
        for exp in self.experiments(session_id):
            run = latest.get(exp.id)
            if exp.decision == Decision.PENDING:
                pending.append(exp)
            elif run is not None:
                history.append(Result(exp, run))
        return history, pending

    def result_of(self, exp_id: int) -> tuple[Experiment | None, Result | None]:
        """One experiment and its ``history`` entry (None while it has no run)."""
        row = self.db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            return None, None
        exp = experiment_record(row)
        latest: dict[int, Run] = {}
        for run in self.runs_of(exp_id):
            _latest(latest, run)
        return exp, Result(exp, latest[exp_id]) if exp_id in latest else None

    def record_holdout(self, run_id: int, value: float) -> None:
        """Store a run's holdout metric (once; a second call for the same run changes nothing)."""
        row = self.run_row(run_id)
        if row is None:
            raise LedgerError(f"no run {run_id}")
        self.db.execute(
            "INSERT OR IGNORE INTO holdout (run_id, experiment_id, session_id, value, recorded_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, row["experiment_id"], row["session_id"], value, self.clock()),
        )

    def holdout_values(self, session_id: int) -> dict[int, list[float]]:
        """Experiment id -> its runs' holdout values, for the human-facing report and `best --holdout`."""
        out: dict[int, list[float]] = {}
        for r in self.db.execute("SELECT experiment_id, value FROM holdout WHERE session_id = ? ORDER BY run_id",
                                 (session_id,)):
            out.setdefault(r["experiment_id"], []).append(r["value"])
        return out

    def run_row(self, run_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def latest_run(self, exp_id: int) -> Run | None:
        row = self.db.execute("SELECT * FROM runs WHERE experiment_id = ? ORDER BY id DESC LIMIT 1", (exp_id,)).fetchone()
        return run_record(row) if row else None

    def baseline(self, session_id: int) -> Experiment | None:
        row = self.db.execute(
            "SELECT * FROM experiments WHERE session_id = ? AND parent_id IS NULL ORDER BY id LIMIT 1", (session_id,)
        ).fetchone()
        return experiment_record(row) if row else None

    def run_rows(self, session_id: int, statuses: Iterable[str]) -> list[sqlite3.Row]:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        return self.db.execute(
            f"SELECT * FROM runs WHERE session_id = ? AND status IN ({marks}) ORDER BY id", (session_id, *wanted)
        ).fetchall()

    def count_runs(self, session_id: int, statuses: Iterable[str]) -> int:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        row = self.db.execute(
            f"SELECT COUNT(*) AS n FROM runs WHERE session_id = ? AND status IN ({marks})", (session_id, *wanted)
        ).fetchone()
        return int(row["n"])

    def status_counts(self, session_id: int) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT status, COUNT(*) AS n FROM runs WHERE session_id = ? GROUP BY status", (session_id,)
        )
        return {r["status"]: r["n"] for r in rows}

    def proposed_count(self, session_id: int) -> int:
        """Experiments other than the baseline (the one without a parent)."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL", (session_id,)
        ).fetchone()
        return int(row["n"])

    def proposed_since(self, session_id: int, after_id: int) -> tuple[int, int]:
        """(experiments other than the baseline with an id above ``after_id``, the highest id seen)."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n, MAX(id) AS last FROM experiments WHERE session_id = ? AND id > ?"
            " AND parent_id IS NOT NULL", (session_id, after_id),
        ).fetchone()
        return int(row["n"]), max(after_id, int(row["last"] or 0))

    def decision_counts(self, session_id: int) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT decision, COUNT(*) AS n FROM experiments WHERE session_id = ? GROUP BY decision", (session_id,)
        )
        return {r["decision"]: r["n"] for r in rows}

    def events_of(self, session_id: int, kind: str) -> list[dict[str, Any]]:
        """The data of a session's events of one kind, oldest first."""
        rows = self.db.execute(
            "SELECT data FROM events WHERE session_id = ? AND kind = ? ORDER BY id", (session_id, kind)
        ).fetchall()
        return [json.loads(r["data"]) if r["data"] else {} for r in rows]

    def event(self, session_id: int | None, kind: str, **data: Any) -> None:
        self.db.execute(
            "INSERT INTO events (session_id, at, kind, data) VALUES (?, ?, ?, ?)",
            (session_id, self.clock(), kind, _dumps(data)),
        )


def _latest(latest: dict[int, Run], run: Run) -> None:
    """``history``'s rule: an experiment's latest run, a done one when it has one."""
    have = latest.get(run.experiment_id)
    if have is None or run.status == RunStatus.DONE or have.status != RunStatus.DONE:
        latest[run.experiment_id] = run


def experiment_record(row: sqlite3.Row) -> Experiment:
    return Experiment(
        id=row["id"], session_id=row["session_id"], parent_id=row["parent_id"], commit=row["commit_sha"],
        patch=row["patch"], description=row["description"], hypothesis=row["hypothesis"],
        knobs=json.loads(row["knobs"]), tags=json.loads(row["tags"]), seed=row["seed"],
        budget_seconds=row["budget_seconds"], decision=Decision(row["decision"]),
        created_at=row["created_at"], metric=row["metric"],
    )


def run_record(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"], experiment_id=row["experiment_id"], attempt=row["attempt"], status=RunStatus(row["status"]),
        worker=row["worker"], hardware=row["hardware"], queued_at=row["queued_at"], started_at=row["started_at"],
        ended_at=row["ended_at"], metric=row["metric"], figures=json.loads(row["figures"]), reason=row["reason"],
        run_dir=row["run_dir"], log_path=row["log_path"], seed=row["seed"], role=row["role"],
        place_on=row["place_on"], budget_seconds=row["budget_seconds"],
    )


# --------------------------------------------------------------------------- the session lock


class SessionLock:
    """One orchestrator per ledger: an flock on a file holding the owner's pid.

    The kernel drops the lock when the process dies (even by kill -9), so a stale
    lock never blocks a resume.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.file: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise SessionLocked(
                f"another labfleet session is running on this ledger (pid {holder}); "
                "stop it first, or watch it with `labfleet status`"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the orchestrator holding the ledger, or None if no session runs."""
    path = state_dir / LOCK_FILE
    if not path.exists():
        return None
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None
