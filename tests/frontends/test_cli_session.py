"""`labfleet run` and the read commands, as a user (or an agent) drives them."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labfleet.ledger import Ledger
from labfleet.testing.targets import KNOB_TRAIN, SEARCH_TOML
from tests.conftest import git, make_target, run_cli, wait_for

SLOW_TRAIN = KNOB_TRAIN.replace("SLEEP = 0.0", "SLEEP = 1.0")


# SLEEP stays a constant here: sessions search only the knobs that shape the metric
def lab(tmp_path: Path, train: str = KNOB_TRAIN) -> Path:
    return make_target(tmp_path / "lab", train, extra_toml=SEARCH_TOML, budget=1, timeout=8)


def start_run(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "labfleet", "run", "-C", str(folder), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def counts(folder: Path) -> dict[str, int]:
    path = folder / ".labfleet" / "ledger.sqlite"
    if not path.exists():
        return {}
    ledger = Ledger(path)
    try:
        rows = ledger.db.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}
    finally:
        ledger.close()


def test_run_then_read_commands(tmp_path):
    folder = lab(tmp_path)
    proc = run_cli("run", "-C", str(folder), "--workers", "2", "--researcher", "grid", "--max-experiments", "5")
    assert proc.returncode == 0, proc.stderr
    assert "session 1: grid on 2 worker(s)" in proc.stdout
    assert "session 1 finished: reached --max-experiments 5" in proc.stdout
    assert "best:" in proc.stdout

    status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
    assert status["state"] == "finished" and status["experiments"] == 6
    # the baseline ran three seeds to measure the noise (none here: the metric ignores the seed),
    # and every keep one fresh seed
    kept = status["decisions"].get("kept", 0)
    assert status["runs"].get("done") == 8 + kept and status["orchestrator_pid"] is None

    rows = json.loads(run_cli("results", "-C", str(folder), "--json").stdout)
    assert [r["experiment"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["decision"] == "baseline"
    for row in rows:  # short commit ids a user can `git show`
        assert git(folder, "cat-file", "-t", row["commit"]).strip() == "commit"

    best = json.loads(run_cli("best", "-C", str(folder), "--json").stdout)
    assert best["metric"] == min(r["metric"] for r in rows if r["decision"] in ("kept", "baseline"))
    if best["keeps"]:
        assert best["diff"].startswith("diff --git a/train.py b/train.py")
    table = run_cli("results", "-C", str(folder))
    assert "baseline" in table.stdout

    tsv = run_cli("results", "-C", str(folder), "--tsv").stdout
    reader = list(csv.reader(io.StringIO(tsv), delimiter="\t"))
    assert reader[0] == ["commit", "val_bpb", "memory_gb", "status", "description"]  # autoresearch's columns
    assert len(reader) == 7
    assert {r[3] for r in reader[1:]} <= {"keep", "discard", "crash"}
    assert reader[1][1] == "2.020000" and reader[1][2] == "2.0" and reader[1][3] == "keep"
    export = run_cli("export", "--tsv", "-C", str(folder), "-o", str(tmp_path / "results.tsv"))
    assert export.returncode == 0 and (tmp_path / "results.tsv").read_text() == tsv


def test_kill_9_then_resume_counts_everything_once(tmp_path):
    folder = lab(tmp_path, SLOW_TRAIN)
    proc = start_run(folder, "--workers", "2", "--researcher", "random", "--max-experiments", "7")
    wait_for(lambda: counts(folder).get("done", 0) >= 2 and counts(folder).get("running", 0) == 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ledger = Ledger(folder / ".labfleet" / "ledger.sqlite")
    orphaned = [r["id"] for r in ledger.db.execute("SELECT id FROM runs WHERE status = 'running'")]
    assert len(orphaned) == 2
    wait_for(lambda: all((folder / ".labfleet" / "runs" / "s1").glob("*/result.json")) and
             len(list((folder / ".labfleet" / "runs" / "s1").glob("*/result.json"))) >= counts(folder).get("done", 0) + 2)
    resumed_at = time.time()

    again = run_cli("run", "-C", str(folder))  # the same command, no --resume needed
    assert again.returncode == 0, again.stderr
    assert "resuming session 1" in again.stdout

    runs = ledger.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
    exps = ledger.db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
    assert len(exps) == 8
    for exp in exps:  # one final run per seed (the baseline ran three to measure the noise)
        final = [r for r in runs if r["experiment_id"] == exp["id"] and r["status"] not in ("lost", "queued", "running")]
        want = 3 if exp["parent_id"] is None else 2 if exp["decision"] == "kept" else 1
        assert len(final) == want, [dict(r) for r in runs if r["experiment_id"] == exp["id"]]
        assert exp["decision"] in ("baseline", "kept", "discarded", "failed")
    for run_id in orphaned:  # finished while the orchestrator was dead: collected, not re-run
        row = next(r for r in runs if r["id"] == run_id)
        assert row["status"] == "done" and row["ended_at"] < resumed_at
    # the lineage branch holds the best version, and every keep is in its history
    # keeps in decision order (with confirmation and calibration runs, not always id order)
    kept = sorted((e for e in exps if e["decision"] in ("kept", "baseline")), key=lambda e: (e["decided_at"], e["id"]))
    head = git(folder, "rev-parse", "labfleet/s1").strip()
    assert git(folder, "rev-parse", f"{head}^{{tree}}") == git(folder, "rev-parse", f"{kept[-1]['commit_sha']}^{{tree}}")
    for exp in kept:
        subprocess.run(["git", "-C", str(folder), "merge-base", "--is-ancestor", exp["commit_sha"], head], check=True)
    ledger.close()


def test_second_session_on_the_same_ledger_is_refused(tmp_path):
    folder = lab(tmp_path, SLOW_TRAIN)
    first = start_run(folder, "--workers", "1", "--researcher", "random", "--max-experiments", "3")
    try:
        wait_for(lambda: counts(folder).get("running", 0) >= 1)
        second = run_cli("run", "-C", str(folder))
        assert second.returncode == 1
        assert f"another labfleet session is running on this ledger (pid {first.pid})" in second.stderr
        status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
        assert status["state"] == "running" and status["orchestrator_pid"] == first.pid
        assert status["running"][0]["worker"] == "local-0"
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: stops cleanly, runs queued again
        out, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    assert "labfleet run --resume" in err
    assert counts(folder).get("running", 0) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--researcher", "genius"], "unknown researcher 'genius'"),
        (["--resume"], "no unfinished session to resume"),
    ],
)
def test_run_bad_input(tmp_path, args, message):
    proc = run_cli("run", "-C", str(lab(tmp_path)), *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_run_refuses_a_dirty_target_and_a_non_git_folder(tmp_path):
    folder = lab(tmp_path)
    (folder / "train.py").write_text(KNOB_TRAIN + "# wip\n")
    proc = run_cli("run", "-C", str(folder))
    assert proc.returncode == 1 and "uncommitted changes (train.py)" in proc.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("labfleet.toml", "train.py", "evalkit.py", "launch.py", "prepare.py"):
        (plain / name).write_text((folder / name).read_text())
    proc = run_cli("run", "-C", str(plain))
    assert proc.returncode == 1 and "is not a git repo" in proc.stderr


def test_read_commands_without_a_ledger(tmp_path):
    folder = lab(tmp_path)
    for command in ("status", "results", "best"):
        proc = run_cli(command, "-C", str(folder))
        assert proc.returncode == 1
        assert "no labfleet ledger" in proc.stderr
