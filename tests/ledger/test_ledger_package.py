"""The ledger's contract: what is written reads back, a read-only ledger refuses writes,
an older file is migrated, snapshots are frozen, and only ``labfleet/ledger/`` speaks SQL."""

from __future__ import annotations

import ast
import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import labfleet
from labfleet import ledger as ledgers
from labfleet.ledger import VERSION, Ledger, LedgerError, LedgerReadOnly, RunRow, SessionRow, Snapshot
from labfleet.records import Decision, Experiment, Run, RunStatus

SRC = Path(labfleet.__file__).resolve().parent


def _fill(path: Path) -> tuple[Ledger, int, int, int]:
    """A session with a baseline and one experiment whose run finished on w0."""
    ledger = Ledger(path)
    sid = ledger.create_session("t", "random", {"workers": 2, "serve": False}, "labfleet/", "a" * 40, {"p.py": "ff"})
    ledger.set_workers(sid, [_Worker("w0", "H100", 2.0), _Worker("w1", "H200", 3.0)])
    base, _ = ledger.add_experiment(sid, parent_id=None, commit="b" * 40, patch="", description="baseline",
                                    hypothesis="", knobs={"X": 1}, tags={"role": "baseline"}, seed=0,
                                    budget_seconds=30.0, queue=False)
    ledger.decide(base, Decision.BASELINE, 2.0)
    exp, run = ledger.add_experiment(sid, parent_id=base, commit="c" * 40, patch="+X = 2\n", description="x two",
                                     hypothesis="h", knobs={"X": 2}, tags={"wave": "w1"}, seed=3,
                                     budget_seconds=30.0)
    assert run is not None
    ledger.mark_running(run, worker="w0", hardware="H100", run_dir="/r", log_path="/r/run.log", budget_seconds=30.0)
    ledger.finish_run(run, RunStatus.DONE, metric=1.5, figures={"num_steps": 10}, ended_at=ledger.clock() + 3600)
    ledger.decide(exp, Decision.KEPT, 1.5)
    ledger.event(sid, "llm_call", ok=True, input_tokens=10, output_tokens=5, usd=0.25)
    return ledger, sid, exp, run


@dataclasses.dataclass
class _Worker:
    id: str
    hardware: str
    price_per_hour: float
    device: str = "cpu"
    threads: int = 1


def test_what_is_written_reads_back_as_frozen_records(tmp_path):
    ledger, sid, exp, run = _fill(tmp_path / "l.sqlite")
    session = ledger.session()
    assert isinstance(session, SessionRow) and session.id == sid and session["branch"] == f"labfleet/{sid}"
    assert json.loads(session.config) == {"workers": 2, "serve": False} and dict(session)["status"] == "running"
    row = ledger.run_row(run)
    assert isinstance(row, RunRow) and row["status"] == "done" and row.cancel == 0 and row.worker == "w0"
    with pytest.raises(KeyError):
        row["nope"]
    record = row.record()
    assert isinstance(record, Run) and record.metric == 1.5 and record.figures == {"num_steps": 10}
    got = ledger.experiment(exp)
    assert isinstance(got, Experiment) and got.decision == Decision.KEPT and got.knobs == {"X": 2}
    assert [e.description for e in ledger.lineage(sid)] == ["baseline", "x two"]
    assert ledger.latest_kept(sid) == got and ledger.has_experiment(exp) and not ledger.has_experiment(99)
    assert ledger.active_runs_of(exp) == 0 and ledger.queued_runs_of(exp) == 0
    again = ledger.queue_run(sid, exp, seed=4, role="validate", place_on="H200")
    assert ledger.queued_runs_of(exp) == 1 and [r.id for r in ledger.run_rows(sid, ["queued"])] == [again]
    assert ledger.validations_in_flight(sid) == 1
    costs = {c.worker: c for c in ledger.worker_costs(sid, ledger.clock())}
    assert set(costs) == {"w0"} and costs["w0"].usd == pytest.approx(2.0, rel=1e-3)
    usage = ledger.llm_usage(sid)
    assert (usage.calls, usage.input_tokens, usage.output_tokens, usage.usd) == (1, 10, 5, 0.25)
    summary = ledger.status_summary(sid)
    assert summary.decisions == {"baseline": 1, "kept": 1} and summary.runs == {"done": 1, "queued": 1}
    assert summary.best is not None and summary.best["id"] == exp and summary.baseline_metric == 2.0
    [result] = [r for r in ledger.result_rows(sid) if r.id == exp]
    assert result.run_id == again and result.status == "queued" and result.metric == 1.5
    ledger.set_session_config(sid, {"workers": 4})
    assert json.loads(ledger.session(sid).config) == {"workers": 4}  # type: ignore[union-attr]
    ledger.close()


def test_a_read_only_ledger_refuses_every_write_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "l.sqlite"
    writer, sid, exp, run = _fill(path)
    writer.close()
    before = path.read_bytes()
    reader = ledgers.open(path, readonly=True)
    assert reader.readonly and reader.experiment(exp).decision == Decision.KEPT  # reads work
    for write in (lambda: reader.decide(exp, Decision.DISCARDED, None), lambda: reader.event(sid, "x"),
                  lambda: reader.queue_run(sid, exp), lambda: reader.set_session_status(sid, "stopped"),
                  lambda: reader.finish_run(run, RunStatus.LOST), reader.transaction().__enter__):
        with pytest.raises(LedgerReadOnly, match="open read-only"):
            write()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # underneath, too: mode=ro
        reader.db.execute("DELETE FROM runs")
    reader.close()
    assert path.read_bytes() == before
    with pytest.raises(LedgerError, match="no ledger at"):
        ledgers.open(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()
    assert ledgers.open(tmp_path, readonly=False).path == tmp_path / "ledger.sqlite"  # a folder: its ledger file


# The first release's tables: runs without seed/role/place_on/budget_seconds/cancel, no holdout table.
OLD_SCHEMA = """
CREATE TABLE sessions (id INTEGER PRIMARY KEY, target TEXT NOT NULL, researcher TEXT NOT NULL,
    config TEXT NOT NULL, branch TEXT NOT NULL, base_commit TEXT NOT NULL, frozen_hashes TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE experiments (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id),
    parent_id INTEGER REFERENCES experiments(id), commit_sha TEXT NOT NULL, patch TEXT NOT NULL,
    description TEXT NOT NULL, hypothesis TEXT NOT NULL, knobs TEXT NOT NULL, tags TEXT NOT NULL,
    seed INTEGER NOT NULL, budget_seconds REAL NOT NULL, decision TEXT NOT NULL, metric REAL,
    created_at REAL NOT NULL, decided_at REAL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    session_id INTEGER NOT NULL REFERENCES sessions(id), attempt INTEGER NOT NULL, status TEXT NOT NULL,
    worker TEXT, hardware TEXT, handle TEXT, queued_at REAL NOT NULL, started_at REAL, ended_at REAL,
    metric REAL, figures TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT '', run_dir TEXT, log_path TEXT);
CREATE TABLE workers (session_id INTEGER NOT NULL, id TEXT NOT NULL, hardware TEXT NOT NULL, device TEXT NOT NULL,
    threads INTEGER NOT NULL, price_per_hour REAL NOT NULL, PRIMARY KEY (session_id, id));
CREATE TABLE events (id INTEGER PRIMARY KEY, session_id INTEGER, at REAL NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL);
INSERT INTO sessions VALUES (1, 't', 'random', '{}', 'labfleet/1', 'aaaa', '{}', 'stopped', 1.0, 2.0);
INSERT INTO experiments VALUES (1, 1, NULL, 'bbbb', '', 'baseline', '', '{"X": 1}', '{}', 0, 30.0, 'baseline',
    2.5, 1.0, 1.5);
INSERT INTO runs VALUES (1, 1, 1, 1, 'done', 'w0', 'cpu', '77', 1.0, 1.0, 1.4, 2.5, '{}', '', NULL, NULL);
"""


def test_an_older_ledger_file_is_migrated_on_open_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    ledger = Ledger(path)
    columns = {r[1] for r in ledger.db.execute("PRAGMA table_info(runs)")}
    assert {"seed", "role", "place_on", "budget_seconds", "cancel"} <= columns
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    indexes = {r[1] for r in ledger.db.execute("SELECT type, name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs_session_status", "runs_session_done", "events_session_kind"} <= indexes
    [run] = ledger.runs(1)
    assert (run.status, run.metric, run.role, run.seed) == (RunStatus.DONE, 2.5, "screen", None)
    assert ledger.run_row(1).cancel == 0  # type: ignore[union-attr]
    ledger.record_holdout(1, 2.7)  # the holdout table came with the migration
    queued = ledger.queue_run(1, 1, seed=5, role="noise")
    assert ledger.run_row(queued).role == "noise"  # type: ignore[union-attr]
    ledger.close()
    again = Ledger(path)  # a current file: opened without re-running the migration
    assert again.holdout_values(1) == {1: [2.7]} and len(again.runs(1)) == 2
    again.close()


def test_a_snapshot_is_frozen_and_does_not_follow_later_writes(tmp_path):
    ledger, sid, exp, run = _fill(tmp_path / "l.sqlite")
    snap = ledger.snapshot(sid, events=("llm_call",))
    assert isinstance(snap, Snapshot) and snap.id == sid
    assert isinstance(snap.experiments, tuple) and isinstance(snap.runs, tuple) and isinstance(snap.workers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.now = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.runs[0].metric = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.session.status = "finished"  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.decided_at[exp] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.events_of("llm_call")[0]["usd"] = 9.0  # type: ignore[index]
    assert [w.id for w in snap.workers] == ["w0", "w1"] and snap.events_of("llm_call")[0]["usd"] == 0.25
    assert snap.events_of("runs_unboxed") == ()
    ledger.decide(exp, Decision.DISCARDED, None)
    ledger.queue_run(sid, exp)
    assert snap.experiments[1].decision == Decision.KEPT and len(snap.runs) == 1  # as it was read
    assert ledger.snapshot(sid).experiments[1].decision == Decision.DISCARDED
    assert all(not isinstance(v, sqlite3.Row) for v in (ledger.session(), ledger.run_row(run), *ledger.run_rows(sid, ["queued"])))
    ledger.close()
    with pytest.raises(LedgerError, match="no session"):
        Ledger(tmp_path / "empty.sqlite").snapshot()


def _sqlite_importers(root: Path) -> dict[str, int]:
    """Module path -> line of every ``import sqlite3`` / ``from sqlite3 ...`` / ``__import__("sqlite3")``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
                  and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("__import__", "import_module")
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            if any(n == "sqlite3" or n.startswith("sqlite3.") for n in names):
                found[path.relative_to(root).as_posix()] = node.lineno
    return found


def test_only_the_ledger_package_imports_sqlite3(tmp_path):
    importers = _sqlite_importers(SRC)
    assert "ledger/store.py" in importers  # the walk finds what it looks for
    assert {p: n for p, n in importers.items() if not p.startswith("ledger/")} == {}
    # and it would catch one elsewhere, in any of the three spellings
    for i, line in enumerate(("import sqlite3", "from sqlite3 import Row", "x = __import__('sqlite3')")):
        (tmp_path / f"m{i}.py").write_text(f"def f():\n    {line}\n")
    assert set(_sqlite_importers(tmp_path)) == {"m0.py", "m1.py", "m2.py"}


def test_the_read_commands_import_no_heavy_module():
    code = ("import sys, labfleet.cli, labfleet.views, labfleet.ledger; "
            "print(sorted({'torch', 'numpy', 'matplotlib', 'ray', 'sky', 'pydantic'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
