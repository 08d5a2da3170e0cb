"""A nanoGPT-shaped script brought as it is: a 2-worker `labfleet run` session end to end.

Real processes throughout (the CLI, the local executor's harnesses, git, SQLite): the
setup writes its data beside itself into a gitignored folder, the knobs are lower-case
globals of a config file, the metric is a log line, and a run.log and notes.md lie
untracked beside the target.
"""

from __future__ import annotations

import json

import pytest

from labfleet import workspace
from labfleet.ledger import Ledger
from tests.conftest import git, run_cli
from tests.nanolike import make_nanolike, val_loss


def test_a_two_worker_session_on_a_nanogpt_shaped_target(tmp_path, _isolated_cache):
    folder = make_nanolike(tmp_path / "nano")
    (folder / "run.log").write_text("my own notes of an earlier run\n")
    (folder / "notes.md").write_text("# ideas\n")
    proc = run_cli("run", "-C", str(folder), "--workers", "2", "--researcher", "random", "--seed", "3",
                   "--max-experiments", "6", "--noise-repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert "session 1: random on 2 worker(s)" in proc.stdout
    assert "session 1 finished: reached --max-experiments 6" in proc.stdout

    rows = json.loads(run_cli("results", "-C", str(folder), "--json").stdout)
    assert len(rows) == 7 and rows[0]["decision"] == "baseline"
    assert rows[0]["metric"] == pytest.approx(val_loss())
    ledger = Ledger(folder / ".labfleet" / "ledger.sqlite")
    try:
        exps = {e["id"]: e for e in ledger.db.execute("SELECT * FROM experiments")}
        runs = ledger.db.execute("SELECT * FROM runs WHERE status = 'done'").fetchall()
    finally:
        ledger.close()
    bad = [dict(r) for r in runs if r["metric"] is None or r["reason"]]
    assert len(runs) >= 8 and not bad, bad  # every run found its data and its metric line
    for row in rows:  # every metric is the one the script computes from its config file's knobs
        knobs = json.loads(exps[row["experiment"]]["knobs"])
        assert set(knobs) == {"learning_rate", "n_layer"}
        assert row["metric"] == pytest.approx(val_loss(knobs["learning_rate"], knobs["n_layer"]), abs=1e-4)
        config = git(folder, "show", f"{exps[row['experiment']]['commit_sha']}:config/train_toy.py")
        assert f"n_layer = {knobs['n_layer']}\n" in config
    # figures from the [target.figures] patterns reached the ledger
    figures = json.loads(runs[0]["figures"])
    assert figures["steps"] == 20.0 and figures["iter_ms"] > 0

    best = json.loads(run_cli("best", "-C", str(folder), "--json").stdout)
    assert best["metric"] == min(r["metric"] for r in rows if r["decision"] in ("kept", "baseline"))
    if best["keeps"]:
        assert best["diff"].startswith("diff --git a/config/train_toy.py b/config/train_toy.py")
    # setup ran once on this host for the whole session, and its data never entered the repo
    (cache,) = [p for p in _isolated_cache.iterdir() if p.is_dir()]
    assert (cache / "setups.txt").read_text().count("setup") == 1
    assert workspace.dirty_files(folder, ["labfleet.toml", "model.py", "config/train_toy.py"]) == []
    assert (folder / "notes.md").read_text() == "# ideas\n"
