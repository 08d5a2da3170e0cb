"""The trigger tallies (`status`'s counts, costs and repeats in a few rows) agree with the scans.

The scans (``*_scan``) are the definition; the tallies are kept by triggers on every write.
A random walk through the writer's whole vocabulary checks them after every step, and an
older file (no tallies) is upgraded on its first writable open and read by scans read-only.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
from types import SimpleNamespace

import pytest

from labfleet import ledger as ledger_pkg
from labfleet.enums import Decision, RunStatus
from labfleet.ledger import Ledger
from labfleet.ledger.schema import TALLIES

NOW = 5_000.0


def agree(ledger: Ledger, sid: int) -> None:
    assert ledger.status_counts(sid) == ledger.status_counts_scan(sid)
    assert ledger.decision_counts(sid) == ledger.decision_counts_scan(sid)
    assert ledger.repeated_done_runs(sid) == ledger.repeated_done_runs_scan(sid)
    tallied, scanned = ledger.worker_costs(sid, NOW), ledger.worker_costs_scan(sid, NOW)
    assert [(c.worker, c.hardware, c.price_per_hour) for c in tallied] == \
        [(c.worker, c.hardware, c.price_per_hour) for c in scanned]
    for a, b in zip(tallied, scanned, strict=True):
        assert a.busy_seconds == pytest.approx(b.busy_seconds, abs=1e-6)


def walk(ledger: Ledger, rng: random.Random, steps: int) -> list[int]:
    """Sessions, experiments and runs through every writer verb, checked after each step."""
    sids = [ledger.create_session("t", "random", {}, "labfleet/", "0" * 40, {}) for _ in range(2)]
    for sid in sids:
        ledger.set_workers(sid, [SimpleNamespace(id=f"w{i}", hardware=("H100", "H200")[i % 2], device="cpu",
                                                 threads=1, price_per_hour=2.0 + i) for i in range(3)])
    exps: list[tuple[int, int]] = []
    for _ in range(steps):
        sid = rng.choice(sids)
        runs = ledger.db.execute("SELECT id, experiment_id, status FROM runs WHERE session_id = ?", (sid,)).fetchall()
        queued = [r for r in runs if r["status"] == "queued"]
        running = [r for r in runs if r["status"] == "running"]
        mine = [e for s, e in exps if s == sid][-4:]  # a few at a time: repeats of one (experiment, class)
        verb = rng.choice(["add", "queue", "queue", "start", "start", "start", "finish", "finish", "finish", "lost",
                           "requeue", "decide", "reopen", "cancel", "final"])
        if verb == "add" or not mine:
            exp_id, _ = ledger.add_experiment(sid, parent_id=None, commit="c", patch="", description="d",
                                              hypothesis="", knobs={}, tags={}, seed=0, budget_seconds=1.0)
            exps.append((sid, exp_id))
        elif verb == "queue":
            ledger.queue_run(sid, rng.choice(mine), seed=rng.randrange(9), role=rng.choice(["noise", "validate"]))
        elif verb == "start" and queued:
            ledger.clock = rng.uniform(0, NOW).__float__  # the start time this run is stamped with
            ledger.mark_running(rng.choice(queued)["id"], worker=f"w{rng.randrange(4)}",  # w3: no such worker
                                hardware=rng.choice(["H100", "H200"]), run_dir="d", log_path="l")
        elif (verb == "finish" and running) or (verb == "lost" and (running or queued)):
            run = rng.choice(running if verb == "finish" else running + queued)
            status = RunStatus.LOST if verb == "lost" else rng.choice([RunStatus.DONE, RunStatus.DONE, RunStatus.CRASHED])
            ledger.finish_run(run["id"], status, metric=rng.random(), ended_at=rng.uniform(0, NOW),
                              retry=verb == "lost")
        elif verb == "requeue" and running:
            ledger.requeue(rng.choice(running)["id"])
        elif verb == "decide":
            ledger.decide(rng.choice(mine), rng.choice([Decision.KEPT, Decision.DISCARDED, Decision.FAILED]), 1.0)
        elif verb == "reopen":
            ledger.reopen(rng.choice(mine))
        elif verb == "cancel":
            ledger.cancel_runs(rng.choice(mine))
        elif verb == "final":
            ledger.add_final_run(sid, rng.choice(mine), RunStatus.REJECTED, "duplicate")
        agree(ledger, sid)
    for sid in sids:  # end with runs in flight: their busy time counts up to now
        ledger.queue_run(sid, [e for s, e in exps if s == sid][-1])
        for run in ledger.db.execute("SELECT id FROM runs WHERE session_id = ? AND status = 'queued' LIMIT 2",
                                     (sid,)).fetchall():
            ledger.mark_running(run["id"], worker="w1", hardware="H100", run_dir="d", log_path="l")
        agree(ledger, sid)
    return sids


@pytest.mark.parametrize("seed", range(4))
def test_tallies_agree_with_the_scans_through_every_write(tmp_path, seed):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sids = walk(ledger, random.Random(seed), 300)
    counts = [sum(ledger.status_counts(s).values()) for s in sids]
    assert all(counts) and ledger.repeated_done_runs(sids[0]), "the walk made runs and repeats to count"
    running = ledger.db.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
    assert running, "some runs are still running: their busy time is counted up to now"
    ledger.close()


def _strip_tallies(path) -> None:
    """What a ledger file written before the tallies looks like: no tally tables, no triggers, version 2."""
    db = sqlite3.connect(path)
    for name, kind in db.execute("SELECT name, type FROM sqlite_master WHERE name LIKE '%tally%'"
                                 " OR name = 'runs_session_open'").fetchall():
        if kind in ("table", "trigger"):
            db.execute(f"DROP {kind.upper()} IF EXISTS {name}")
    db.execute("DROP INDEX IF EXISTS runs_session_open")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()


def test_an_older_file_is_read_by_scans_and_upgraded_on_a_writable_open(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    sids = walk(first, random.Random(9), 200)
    want = {s: (first.status_counts(s), first.decision_counts(s), first.repeated_done_runs(s)) for s in sids}
    first.close()
    _strip_tallies(path)
    old = ledger_pkg.open(path, readonly=True)
    assert not old._tallied()
    for s in sids:  # the scans answer on a file the reader may not upgrade
        assert (old.status_counts(s), old.decision_counts(s), old.repeated_done_runs(s)) == want[s]
    old.close()
    upgraded = Ledger(path)  # rebuilt from the rows, then kept by the triggers
    assert upgraded._tallied()
    assert upgraded.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == \
        sum(1 for t in TALLIES if "TRIGGER" in t)
    for s in sids:
        assert (upgraded.status_counts(s), upgraded.decision_counts(s), upgraded.repeated_done_runs(s)) == want[s]
        agree(upgraded, s)
    walk(upgraded, random.Random(10), 50)
    for s in itertools.chain(sids, [s + 2 for s in sids]):
        agree(upgraded, s)
    upgraded.close()


def test_two_upgrades_of_one_file_do_not_count_twice(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    sids = walk(first, random.Random(3), 120)
    first.close()
    _strip_tallies(path)
    a = Ledger(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 2")  # as if a second process had read the old version before the first wrote
    db.commit()
    db.close()
    b = Ledger(path)
    for s in sids:
        agree(b, s)
    a.close()
    b.close()
