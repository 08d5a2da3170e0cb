"""The reads: every SELECT in labfleet, each returning frozen records (``ledger.rows``).

``Queries`` is mixed into ``Ledger``; it needs only ``self.db`` (a connection whose rows
answer ``row["column"]``) and ``self.clock``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from labfleet.ledger.rows import (
    RUN_COLUMNS,
    SESSION_COLUMNS,
    LedgerError,
    LlmUsage,
    ResultRow,
    RunningRun,
    RunRow,
    SessionRow,
    Snapshot,
    StatusSummary,
    WorkerCost,
    WorkerRow,
    experiment_record,
    frozen_map,
    run_record,
)
from labfleet.ledger.schema import TALLIED
from labfleet.records import Decision, Experiment, Result, Run, RunStatus

BUSY_SQL = """
SELECT r.worker AS worker, w.hardware AS hardware, w.price_per_hour AS price,
       SUM(MAX(0, COALESCE(r.ended_at, :now) - r.started_at)) AS busy
FROM runs r JOIN workers w ON w.session_id = r.session_id AND w.id = r.worker
WHERE r.session_id = :sid AND r.started_at IS NOT NULL
GROUP BY r.worker ORDER BY r.worker
"""
# The experiment's latest run joined to it, the ``last`` newest experiments (-1: all).
RESULTS_SQL = """SELECT * FROM (
     SELECT e.id, e.parent_id, e.commit_sha, e.description, e.hypothesis, e.decision, e.metric,
            e.knobs, e.tags, e.seed, e.budget_seconds,
            r.id AS run_id, r.status, r.worker, r.hardware, r.metric AS run_metric, r.figures,
            r.reason, r.started_at, r.ended_at, r.attempt, r.log_path
     FROM experiments e
     LEFT JOIN runs r ON r.id = (SELECT MAX(id) FROM runs WHERE experiment_id = e.id)
     WHERE e.session_id = ? ORDER BY e.id DESC LIMIT ?)
   ORDER BY id"""
# Runs that count for a surrogate fit: every final run with a result worth modelling.
NOT_OBSERVED = ("queued", "running", "lost", "cancelled", "rejected")
SNAPSHOT_EVENTS = ("runs_unboxed", "surrogate")


class Queries:
    db: sqlite3.Connection
    clock: Callable[[], float]

    # ----------------------------------------------------------------- sessions

    def session(self, session_id: int | None = None) -> SessionRow | None:
        """A session; the latest one when ``session_id`` is None."""
        if session_id is None:
            row = self.db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = self.db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return SessionRow(*row) if row is not None else None

    def sessions(self, status: str | None = None) -> list[SessionRow]:
        """Every session (with ``status``: those in that state), oldest first."""
        where, args = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        rows = self.db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions {where} ORDER BY id", args)
        return [SessionRow(*r) for r in rows]

    def workers(self, session_id: int) -> list[WorkerRow]:
        rows = self.db.execute(
            "SELECT id, hardware, device, threads, price_per_hour FROM workers WHERE session_id = ? ORDER BY id",
            (session_id,),
        )
        return [WorkerRow(*r) for r in rows]

    # ----------------------------------------------------------------- experiments

    def experiment(self, exp_id: int) -> Experiment:
        row = self.db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no experiment {exp_id}")
        return experiment_record(row)

    def has_experiment(self, exp_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM experiments WHERE id = ?", (exp_id,)).fetchone() is not None

    def experiments(self, session_id: int | None) -> list[Experiment]:
        """A session's experiments by id (None: every session's)."""
        if session_id is None:
            rows = self.db.execute("SELECT * FROM experiments ORDER BY id")
        else:
            rows = self.db.execute("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (session_id,))
        return [experiment_record(r) for r in rows]

    def baseline(self, session_id: int) -> Experiment | None:
        row = self.db.execute(
            "SELECT * FROM experiments WHERE session_id = ? AND parent_id IS NULL ORDER BY id LIMIT 1", (session_id,)
        ).fetchone()
        return experiment_record(row) if row else None

    def latest_kept(self, session_id: int) -> Experiment | None:
        """The most recently kept experiment of a session (None before the first keep)."""
        row = self.db.execute(
            "SELECT * FROM experiments WHERE session_id = ? AND decision = 'kept' ORDER BY decided_at DESC, id DESC"
            " LIMIT 1", (session_id,),
        ).fetchone()
        return experiment_record(row) if row else None

    def lineage(self, session_id: int) -> list[Experiment]:
        """The baseline and every keep, in decision order."""
        rows = self.db.execute(
            "SELECT * FROM experiments WHERE session_id = ? AND decision IN ('baseline', 'kept')"
            " ORDER BY decided_at, id", (session_id,),
        )
        return [experiment_record(r) for r in rows]

    def decided_at(self, session_id: int) -> dict[int, float]:
        """Experiment id -> when it was decided, for the decided ones."""
        rows = self.db.execute(
            "SELECT id, decided_at FROM experiments WHERE session_id = ? AND decided_at IS NOT NULL", (session_id,)
        )
        return {r[0]: r[1] for r in rows}

    def proposed_count(self, session_id: int) -> int:
        """Experiments other than the baseline (the one without a parent)."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL", (session_id,)
        ).fetchone()
        return int(row["n"])

    def _tallied(self) -> bool:
        """Whether the file keeps the trigger tallies (schema.TALLIED); read once per connection."""
        tallied = getattr(self, "_has_tallies", None)
        if tallied is None:
            tallied = self._has_tallies = self.db.execute("PRAGMA user_version").fetchone()[0] >= TALLIED
        return tallied

    def decision_counts(self, session_id: int) -> dict[str, int]:
        if not self._tallied():
            return self.decision_counts_scan(session_id)
        return self._tally_counts("decision", "decision_tally", "experiments", "decision = 'pending'", session_id)

    def _tally_counts(self, column: str, tally: str, table: str, unsettled: str, session_id: int) -> dict[str, int]:
        """Counts by ``column``: the settled ones from the trigger ``tally``, the ``unsettled`` few
        (queued/running runs, pending experiments) counted from ``table``'s index."""
        rows = self.db.execute(
            f"SELECT {column}, n FROM {tally} WHERE session_id = ? AND n > 0 UNION ALL"
            f" SELECT {column}, COUNT(*) FROM {table} WHERE session_id = ? AND {unsettled}"
            f" GROUP BY {column} ORDER BY 1", (session_id, session_id),
        )
        return {r[0]: r[1] for r in rows}

    def decision_counts_scan(self, session_id: int) -> dict[str, int]:
        """``decision_counts`` counted from every experiment (the reference the tally is checked against)."""
        rows = self.db.execute(
            "SELECT decision, COUNT(*) AS n FROM experiments WHERE session_id = ? GROUP BY decision", (session_id,)
        )
        return {r["decision"]: r["n"] for r in rows}

    def decided_since_keep(self, session_id: int) -> int:
        """Experiments decided after the latest keep (or the baseline): the patience count."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL"
            " AND decision IN ('kept', 'discarded', 'failed') AND decided_at > COALESCE((SELECT MAX(decided_at)"
            " FROM experiments WHERE session_id = ? AND decision IN ('kept', 'baseline')), 0)",
            (session_id, session_id),
        ).fetchone()
        return int(row["n"])

    def since_keep_state(self, session_id: int) -> tuple[float, dict[int, float]]:
        """``decided_since_keep`` as its parts: (the latest keep's time, the experiments decided after it
        -> when), so a copy kept from this connection's own writes can count on (``SessionMirror``)."""
        row = self.db.execute(
            "SELECT COALESCE(MAX(decided_at), 0) FROM experiments WHERE session_id = ? AND decision IN ('kept', 'baseline')",
            (session_id,),
        ).fetchone()
        keep_at = float(row[0])
        rows = self.db.execute(
            "SELECT id, decided_at FROM experiments WHERE session_id = ? AND parent_id IS NOT NULL"
            " AND decision IN ('kept', 'discarded', 'failed') AND decided_at > ?", (session_id, keep_at),
        )
        return keep_at, {r[0]: r[1] for r in rows}

    def decided_time(self, exp_id: int) -> float | None:
        """When an experiment was decided (None while pending)."""
        row = self.db.execute("SELECT decided_at FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        return row[0] if row is not None else None

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

    def pending_experiments(self, session_id: int, running: bool | None = None) -> int:
        """Pending experiments; ``running`` True/False: only those with / without a run running now."""
        sql = "SELECT COUNT(*) FROM experiments e WHERE e.session_id = ? AND e.decision = 'pending'"
        if running is not None:
            has = "EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.id AND r.status = 'running')"
            sql += f" AND {'' if running else 'NOT '}{has}"
        return int(self.db.execute(sql, (session_id,)).fetchone()[0])

    # ----------------------------------------------------------------- runs

    def run_row(self, run_id: int) -> RunRow | None:
        row = self.db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRow(*row) if row is not None else None

    def run_rows(self, session_id: int, statuses: Iterable[str]) -> list[RunRow]:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE session_id = ? AND status IN ({marks}) ORDER BY id",
            (session_id, *wanted),
        )
        return [RunRow(*r) for r in rows]

    def runs(self, session_id: int) -> list[Run]:
        rows = self.db.execute("SELECT * FROM runs WHERE session_id = ? ORDER BY id", (session_id,))
        return [run_record(r) for r in rows]

    def runs_of(self, exp_id: int) -> list[Run]:
        rows = self.db.execute("SELECT * FROM runs WHERE experiment_id = ? ORDER BY id", (exp_id,))
        return [run_record(r) for r in rows]

    def latest_run(self, exp_id: int) -> Run | None:
        row = self.db.execute("SELECT * FROM runs WHERE experiment_id = ? ORDER BY id DESC LIMIT 1", (exp_id,)).fetchone()
        return run_record(row) if row else None

    def active_runs_of(self, exp_id: int) -> int:
        """An experiment's runs that are queued or running."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM runs WHERE experiment_id = ? AND status IN ('queued', 'running')", (exp_id,)
        ).fetchone()
        return int(row["n"])

    def queued_runs_of(self, exp_id: int) -> int:
        """An experiment's runs waiting in the queue."""
        row = self.db.execute(
            "SELECT COUNT(*) AS n FROM runs WHERE experiment_id = ? AND status = 'queued'", (exp_id,)
        ).fetchone()
        return int(row["n"])

    def cancel_requests(self, session_id: int) -> list[int]:
        rows = self.db.execute(
            "SELECT id FROM runs WHERE session_id = ? AND status = 'running' AND cancel = 1", (session_id,)
        )
        return [r["id"] for r in rows]

    def status_counts(self, session_id: int) -> dict[str, int]:
        if not self._tallied():
            return self.status_counts_scan(session_id)
        return self._tally_counts("status", "run_tally", "runs", "status IN ('queued', 'running')", session_id)

    def status_counts_scan(self, session_id: int) -> dict[str, int]:
        """``status_counts`` counted from every run (the reference)."""
        rows = self.db.execute(
            "SELECT status, COUNT(*) AS n FROM runs WHERE session_id = ? GROUP BY status", (session_id,)
        )
        return {r["status"]: r["n"] for r in rows}

    def running_runs(self, session_id: int) -> list[RunningRun]:
        """What each worker runs now, by worker."""
        rows = self.db.execute(  # sorted here: an ORDER BY would tempt SQLite into walking every run by worker
            "SELECT r.id, e.id, r.worker, r.started_at, e.description FROM runs r"
            " JOIN experiments e ON e.id = r.experiment_id WHERE r.session_id = ? AND r.status = 'running'"
            " ORDER BY r.id", (session_id,),
        )
        return sorted((RunningRun(*r) for r in rows), key=lambda r: (r.worker is not None, r.worker or ""))

    def running_experiments(self, session_id: int) -> int:
        """Experiments with a run running now."""
        row = self.db.execute(
            "SELECT COUNT(DISTINCT experiment_id) FROM runs WHERE session_id = ? AND status = 'running'", (session_id,)
        ).fetchone()
        return int(row[0])

    def run_span(self, session_id: int) -> tuple[float, float, int]:
        """(first start, last end, runs started): 0.0 for the times when nothing started."""
        row = self.db.execute(
            "SELECT MIN(started_at), MAX(ended_at), COUNT(*) FROM runs WHERE session_id = ? AND started_at IS NOT NULL",
            (session_id,),
        ).fetchone()
        return row[0] or 0.0, row[1] or 0.0, int(row[2])

    def run_roles(self, session_id: int) -> dict[int, list[str]]:
        """Experiment id -> the roles of its runs, in the order they first appeared."""
        roles: dict[int, list[str]] = {}
        for exp_id, role in self.db.execute(
            "SELECT experiment_id, role FROM runs WHERE session_id = ? ORDER BY id", (session_id,)
        ):
            have = roles.setdefault(exp_id, [])
            if role not in have:
                have.append(role)
        return roles

    def repeated_done_runs(self, session_id: int) -> list[Run]:
        """Done runs of every (experiment, class) done more than once: what the noise floor is measured on."""
        if not self._tallied():
            return self.repeated_done_runs_scan(session_id)
        rows = self.db.execute(
            "SELECT r.* FROM done_tally t JOIN runs r ON r.experiment_id = t.experiment_id AND r.hardware = t.hardware"
            " WHERE t.session_id = ? AND t.n > 1 AND r.status = 'done' ORDER BY r.id", (session_id,),
        )
        return [run_record(r) for r in rows]

    def repeated_done_runs_scan(self, session_id: int) -> list[Run]:
        """``repeated_done_runs`` found by grouping every done run (the reference)."""
        rows = self.db.execute(
            "SELECT * FROM runs WHERE session_id = ? AND status = 'done' AND (experiment_id, hardware) IN"
            " (SELECT experiment_id, hardware FROM runs WHERE session_id = ? AND status = 'done'"
            "  GROUP BY experiment_id, hardware HAVING COUNT(*) > 1)",
            (session_id, session_id),
        )
        return sorted((run_record(r) for r in rows), key=lambda r: r.id)

    def done_counts(self, session_id: int) -> dict[tuple[int, str | None], int]:
        """(experiment id, class) -> done runs: the n behind each mean."""
        rows = self.db.execute(
            "SELECT experiment_id, hardware, COUNT(*) FROM runs WHERE session_id = ? AND status = 'done'"
            " GROUP BY experiment_id, hardware", (session_id,),
        )
        return {(r[0], r[1]): r[2] for r in rows}

    def result_rows(self, session_id: int, last: int | None = None) -> list[ResultRow]:
        """Each experiment with its latest run, the ``last`` most recent (None: all), oldest first."""
        rows = self.db.execute(RESULTS_SQL, (session_id, -1 if last is None else last))
        return [ResultRow(*r) for r in rows]

    def final_runs(self, session_id: int | None = None) -> list[tuple[Run, Experiment]]:
        """Every run with a result worth modelling (not queued/running/lost/cancelled/rejected) and its experiment."""
        marks = ",".join("?" * len(NOT_OBSERVED))
        sql, args = f"SELECT * FROM runs WHERE status NOT IN ({marks})", NOT_OBSERVED
        if session_id is not None:
            sql, args = sql + " AND session_id = ?", (*NOT_OBSERVED, session_id)
        runs = [run_record(r) for r in self.db.execute(sql + " ORDER BY id", args)]
        wanted = {r.experiment_id for r in runs}
        exps = {e.id: e for e in self.experiments(session_id) if e.id in wanted}
        return [(r, exps[r.experiment_id]) for r in runs if r.experiment_id in exps]

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

    def count_runs(self, session_id: int, statuses: Iterable[str]) -> int:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        row = self.db.execute(
            f"SELECT COUNT(*) FROM runs WHERE session_id = ? AND status IN ({marks})", (session_id, *wanted)
        ).fetchone()
        return int(row[0])

    def proposed_since(self, session_id: int, after_id: int) -> tuple[int, int]:
        """(experiments other than the baseline with an id above ``after_id``, the highest id seen)."""
        row = self.db.execute(
            "SELECT COUNT(*), MAX(id) FROM experiments WHERE session_id = ? AND id > ?"
            " AND parent_id IS NOT NULL", (session_id, after_id),
        ).fetchone()
        return int(row[0]), max(after_id, int(row[1] or 0))

    def holdout_values(self, session_id: int) -> dict[int, list[float]]:
        """Experiment id -> its runs' holdout values, for the human-facing report and `best --holdout`."""
        out: dict[int, list[float]] = {}
        for r in self.db.execute("SELECT experiment_id, value FROM holdout WHERE session_id = ? ORDER BY run_id",
                                 (session_id,)):
            out.setdefault(r["experiment_id"], []).append(r["value"])
        return out

    # ----------------------------------------------------------------- cost, events, model calls

    def worker_costs(self, session_id: int, now: float) -> list[WorkerCost]:
        """Each worker's price and busy time (running runs counted up to ``now``), by worker."""
        if not self._tallied():
            return self.worker_costs_scan(session_id, now)
        rows = self.db.execute(  # ended runs from the tally, running ones (few: a partial index) up to now
            "SELECT b.worker, w.hardware, w.price_per_hour, SUM(b.busy) FROM ("
            "  SELECT worker, MAX(0.0, busy) AS busy FROM worker_tally WHERE session_id = :sid AND n > 0 UNION ALL"
            "  SELECT worker, MAX(0, :now - started_at) FROM runs INDEXED BY runs_session_open"
            "  WHERE session_id = :sid AND started_at IS NOT NULL AND ended_at IS NULL AND worker IS NOT NULL) b"
            " JOIN workers w ON w.session_id = :sid AND w.id = b.worker GROUP BY b.worker ORDER BY b.worker",
            {"sid": session_id, "now": now},
        )
        return [WorkerCost(r[0], r[1], r[2], r[3] or 0.0) for r in rows]

    def worker_costs_scan(self, session_id: int, now: float) -> list[WorkerCost]:
        """``worker_costs`` summed over every run (the reference)."""
        rows = self.db.execute(BUSY_SQL, {"now": now, "sid": session_id})
        return [WorkerCost(r["worker"], r["hardware"], r["price"], r["busy"] or 0.0) for r in rows]

    def events_of(self, session_id: int, kind: str) -> list[dict[str, Any]]:
        """The data of a session's events of one kind, oldest first."""
        rows = self.db.execute(
            "SELECT data FROM events WHERE session_id = ? AND kind = ? ORDER BY id", (session_id, kind)
        ).fetchall()
        return [json.loads(r["data"]) if r["data"] else {} for r in rows]

    def llm_usage(self, session_id: int) -> LlmUsage:
        """The LLM researcher's calls, tokens and dollars (its ``llm_call`` events)."""
        row = self.db.execute(
            "SELECT COUNT(*), SUM(json_extract(data, '$.ok') = 0),"
            " COALESCE(SUM(json_extract(data, '$.input_tokens')), 0),"
            " COALESCE(SUM(json_extract(data, '$.output_tokens')), 0),"
            " COALESCE(SUM(json_extract(data, '$.usd')), 0.0)"
            " FROM events WHERE session_id = ? AND kind = 'llm_call'", (session_id,),
        ).fetchone()
        return LlmUsage(row[0], row[1] or 0, row[2], row[3], row[4])

    # ----------------------------------------------------------------- whole views

    def _session_or_fail(self, session_id: int | None) -> SessionRow:
        session = self.session(session_id)
        if session is None:
            raise LedgerError("no session in this ledger yet: start one with `labfleet run`")
        return session

    def status_summary(self, session_id: int | None = None, now: float | None = None) -> StatusSummary:
        """What `labfleet status` shows, from indexed summary queries (fast on 100k-run ledgers)."""
        session = self._session_or_fail(session_id)
        sid = session.id
        now = self.clock() if now is None else now
        baseline = self.db.execute(
            "SELECT metric FROM experiments WHERE session_id = ? AND decision = 'baseline'", (sid,)
        ).fetchone()
        best = self.db.execute(
            "SELECT id, metric, description, commit_sha FROM experiments WHERE session_id = ?"
            " AND decision IN ('baseline', 'kept') ORDER BY decided_at DESC, id DESC LIMIT 1", (sid,),
        ).fetchone()
        latest = self.db.execute("SELECT MAX(id) FROM sessions").fetchone()[0]
        return StatusSummary(
            session=session, latest_session=latest, runs=frozen_map(self.status_counts(sid)),
            decisions=frozen_map(self.decision_counts(sid)),
            baseline_metric=baseline[0] if baseline else None,
            best=frozen_map(dict(best)) if best and best["metric"] is not None else None,
            running=tuple(self.running_runs(sid)), repeated=tuple(self.repeated_done_runs(sid)),
            costs=tuple(self.worker_costs(sid, now)), llm=self.llm_usage(sid),
            unboxed=tuple(frozen_map(e) for e in self.events_of(sid, "runs_unboxed")), now=now,
        )

    def snapshot(self, session_id: int | None = None, events: Iterable[str] = SNAPSHOT_EVENTS) -> Snapshot:
        """One session, read in one transaction: a frozen ``Snapshot``."""
        own = not self.db.in_transaction
        if own:
            self.db.execute("BEGIN")  # a read transaction: every table as of one moment
        try:
            session = self._session_or_fail(session_id)
            sid, now = session.id, self.clock()
            return Snapshot(
                session=session, experiments=tuple(self.experiments(sid)), runs=tuple(self.runs(sid)),
                workers=tuple(self.workers(sid)), decided_at=frozen_map(self.decided_at(sid)),
                costs=tuple(self.worker_costs(sid, now)), llm=self.llm_usage(sid),
                events=frozen_map({k: tuple(frozen_map(e) for e in self.events_of(sid, k)) for k in events}),
                now=now,
            )
        finally:
            if own:
                self.db.execute("COMMIT")

    def fingerprint(self, latest_runs: int) -> tuple[dict[str, Any], list[Any]]:
        """The ledger's latest ids, and what changes without a new id (statuses, decisions), for change polling."""
        try:
            session = self.db.execute("SELECT id, status, updated_at FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
            sid = session[0] if session else -1
            active = self.db.execute("SELECT id, status FROM runs WHERE session_id = ? AND status IN"
                                     " ('queued', 'running') ORDER BY id", (sid,)).fetchall()
            pending = self.db.execute("SELECT id FROM experiments WHERE session_id = ? AND decision = 'pending'"
                                      " ORDER BY id", (sid,)).fetchall()
            latest = self.db.execute("SELECT id, status, metric, ended_at FROM runs ORDER BY id DESC LIMIT ?",
                                     (latest_runs,)).fetchall()
            one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
            ids = {"event": one("SELECT MAX(id) FROM events"), "run": one("SELECT MAX(id) FROM runs"),
                   "experiment": one("SELECT MAX(id) FROM experiments"),
                   "running": sum(1 for r in active if r[1] == "running")}
        except sqlite3.Error as exc:  # e.g. a ledger mid-creation
            raise LedgerError(str(exc)) from None
        parts = [tuple(session) if session else None, [tuple(r) for r in active], [r[0] for r in pending],
                 [tuple(r) for r in latest], ids]
        return ids, parts


def _latest(latest: dict[int, Run], run: Run) -> None:
    """``history``'s rule: an experiment's latest run, a done one when it has one."""
    have = latest.get(run.experiment_id)
    if have is None or run.status == RunStatus.DONE or have.status != RunStatus.DONE:
        latest[run.experiment_id] = run
