"""The ledger's tables, their indexes, and how an older ledger file is brought up to date.

``prepare`` runs on every writable open: it is a no-op (one PRAGMA read) once the file's
``user_version`` says it is current, so the read commands do not pay for the schema script.
"""

from __future__ import annotations

import sqlite3

from labfleet.records import RunStatus

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


# Indexes added for the read commands (status, results, the dashboard) on ledgers with
# hundreds of thousands of runs; created by ``prepare`` on older files too.
INDEXES = """
CREATE INDEX IF NOT EXISTS runs_session_done ON runs(session_id, status, experiment_id, hardware);
CREATE INDEX IF NOT EXISTS runs_session_worker ON runs(session_id, worker, started_at, ended_at);
CREATE INDEX IF NOT EXISTS events_session_kind ON events(session_id, kind);
"""

# Tallies kept by triggers, so `labfleet status` and the cost checks read a handful of rows
# instead of every run (100k runs: a status as one command under 200 ms). Only what has
# left the queue is tallied (final runs, decided experiments, ended runs' busy time, done
# repeats): each run's life costs three primary-key upserts and its experiment's decision
# one; queued, running and pending rows are few and counted from their indexes. The scans
# they replace stay in ``queries`` as the reference (``*_scan``): a ledger opened read-only
# before its file was upgraded uses them, and tests/ledger/test_tallies.py checks both agree.
_ACTIVE_SQL = "('queued', 'running')"
_ENDED = "{r}.worker IS NOT NULL AND {r}.started_at IS NOT NULL AND {r}.ended_at IS NOT NULL"
_BUSY = "MAX(0, {r}.ended_at - {r}.started_at)"  # an ended run's busy seconds
TALLIES = (
    "CREATE TABLE IF NOT EXISTS run_tally (session_id INTEGER NOT NULL, status TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (session_id, status)) WITHOUT ROWID",  # final statuses
    "CREATE TABLE IF NOT EXISTS decision_tally (session_id INTEGER NOT NULL, decision TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (session_id, decision)) WITHOUT ROWID",  # every decision but pending
    # per worker: its ended runs and their busy seconds (running ones are added live)
    "CREATE TABLE IF NOT EXISTS worker_tally (session_id INTEGER NOT NULL, worker TEXT NOT NULL,"
    " n INTEGER NOT NULL, busy REAL NOT NULL, PRIMARY KEY (session_id, worker)) WITHOUT ROWID",
    # done runs per (experiment, class): where n > 1 is what the noise floor is measured on
    "CREATE TABLE IF NOT EXISTS done_tally (session_id INTEGER NOT NULL, experiment_id INTEGER NOT NULL,"
    " hardware TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (experiment_id, hardware)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS done_tally_repeated ON done_tally(session_id) WHERE n > 1",
    "CREATE INDEX IF NOT EXISTS runs_session_open ON runs(session_id, worker)"
    " WHERE started_at IS NOT NULL AND ended_at IS NULL",
    # a row counts once it is final; final statuses never change, but if one did it would move
    f"""CREATE TRIGGER IF NOT EXISTS runs_tally_insert AFTER INSERT ON runs
  WHEN NEW.status NOT IN {_ACTIVE_SQL} BEGIN
  INSERT INTO run_tally VALUES (NEW.session_id, NEW.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
  INSERT INTO done_tally SELECT NEW.session_id, NEW.experiment_id, NEW.hardware, 1
    WHERE NEW.status = 'done' AND NEW.hardware IS NOT NULL ON CONFLICT DO UPDATE SET n = n + 1;
  INSERT INTO worker_tally SELECT NEW.session_id, NEW.worker, 1, {_BUSY.format(r="NEW")}
    WHERE {_ENDED.format(r="NEW")} ON CONFLICT DO UPDATE SET n = n + 1, busy = busy + excluded.busy;
END""",
    f"""CREATE TRIGGER IF NOT EXISTS runs_tally_final AFTER UPDATE OF status ON runs
  WHEN OLD.status IS NOT NEW.status AND (OLD.status NOT IN {_ACTIVE_SQL} OR NEW.status NOT IN {_ACTIVE_SQL}) BEGIN
  UPDATE run_tally SET n = n - 1
    WHERE OLD.status NOT IN {_ACTIVE_SQL} AND session_id = OLD.session_id AND status = OLD.status;
  INSERT INTO run_tally SELECT NEW.session_id, NEW.status, 1
    WHERE NEW.status NOT IN {_ACTIVE_SQL} ON CONFLICT DO UPDATE SET n = n + 1;
END""",
    """CREATE TRIGGER IF NOT EXISTS runs_tally_done AFTER UPDATE OF status, hardware, experiment_id ON runs
  WHEN (OLD.status = 'done' OR NEW.status = 'done') AND (OLD.status IS NOT NEW.status
    OR OLD.hardware IS NOT NEW.hardware OR OLD.experiment_id IS NOT NEW.experiment_id) BEGIN
  UPDATE done_tally SET n = n - 1
    WHERE OLD.status = 'done' AND experiment_id = OLD.experiment_id AND hardware = OLD.hardware;
  INSERT INTO done_tally SELECT NEW.session_id, NEW.experiment_id, NEW.hardware, 1
    WHERE NEW.status = 'done' AND NEW.hardware IS NOT NULL ON CONFLICT DO UPDATE SET n = n + 1;
END""",
    f"""CREATE TRIGGER IF NOT EXISTS runs_tally_ended AFTER UPDATE OF worker, started_at, ended_at ON runs
  WHEN ({_ENDED.format(r="OLD")}) OR ({_ENDED.format(r="NEW")}) BEGIN
  UPDATE worker_tally SET n = n - 1, busy = busy - {_BUSY.format(r="OLD")}
    WHERE {_ENDED.format(r="OLD")} AND session_id = OLD.session_id AND worker = OLD.worker;
  INSERT INTO worker_tally SELECT NEW.session_id, NEW.worker, 1, {_BUSY.format(r="NEW")}
    WHERE {_ENDED.format(r="NEW")} ON CONFLICT DO UPDATE SET n = n + 1, busy = busy + excluded.busy;
END""",
    """CREATE TRIGGER IF NOT EXISTS experiments_tally_insert AFTER INSERT ON experiments
  WHEN NEW.decision IS NOT 'pending' BEGIN
  INSERT INTO decision_tally VALUES (NEW.session_id, NEW.decision, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END""",
    """CREATE TRIGGER IF NOT EXISTS experiments_tally_update AFTER UPDATE OF decision ON experiments
  WHEN OLD.decision IS NOT NEW.decision BEGIN
  UPDATE decision_tally SET n = n - 1 WHERE OLD.decision IS NOT 'pending'
    AND session_id = OLD.session_id AND decision = OLD.decision;
  INSERT INTO decision_tally SELECT NEW.session_id, NEW.decision, 1
    WHERE NEW.decision IS NOT 'pending' ON CONFLICT DO UPDATE SET n = n + 1;
END""",
)
# Rebuilt from the rows whenever the tallies are (re)created: idempotent, so two processes
# upgrading one file at once cannot count twice.
TALLY_REBUILD = (
    "DELETE FROM run_tally",
    "INSERT INTO run_tally SELECT session_id, status, COUNT(*) FROM runs"
    f" WHERE status NOT IN {_ACTIVE_SQL} GROUP BY session_id, status",
    "DELETE FROM decision_tally",
    "INSERT INTO decision_tally SELECT session_id, decision, COUNT(*) FROM experiments"
    " WHERE decision IS NOT 'pending' GROUP BY session_id, decision",
    "DELETE FROM worker_tally",
    f"INSERT INTO worker_tally SELECT session_id, worker, COUNT(*), SUM({_BUSY.format(r='runs')}) FROM runs"
    f" WHERE {_ENDED.format(r='runs')} GROUP BY session_id, worker",
    "DELETE FROM done_tally",
    "INSERT INTO done_tally SELECT MIN(session_id), experiment_id, hardware, COUNT(*) FROM runs"
    " WHERE status = 'done' AND hardware IS NOT NULL GROUP BY experiment_id, hardware",
)
TALLIED = 3  # the first user_version with the tallies
VERSION = 3  # PRAGMA user_version of a ledger with every table, column, index and trigger above


def prepare(db: sqlite3.Connection) -> None:
    """WAL, then the schema, the added columns and the indexes when the file is older than ``VERSION``."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; fine under WAL
    db.execute("PRAGMA foreign_keys=ON")
    if db.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
        return
    db.executescript(SCHEMA)
    db.execute("BEGIN IMMEDIATE")  # two processes opening an old file: one migrates, the other sees it done
    try:
        for table, columns in MIGRATIONS.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        for statement in INDEXES.strip().splitlines():
            db.execute(statement)
        for statement in (*TALLIES, *TALLY_REBUILD):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
