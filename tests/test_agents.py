"""An external agent's verbs against a real daemon: submit, status, wait, show, cancel, skill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labfleet.ledger import Ledger
from tests.conftest import make_target, run_cli
from tests.test_cli_session import SEARCH_TOML, wait_for
from tests.test_session import KNOB_TRAIN

# SLEEP is a knob here, so an agent can submit a slow experiment to cancel
AGENT_TOML = SEARCH_TOML + 'SLEEP = { file = "train.py", low = 0.0, high = 60.0 }\n'


def lab(tmp_path: Path) -> Path:
    return make_target(tmp_path / "lab", KNOB_TRAIN, extra_toml=AGENT_TOML, budget=1, timeout=90)


def agent(folder: Path, *args: str) -> dict:
    proc = run_cli(*args, "-C", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def daemon(tmp_path):
    folder = lab(tmp_path)
    procs: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labfleet", "serve", "-C", str(folder), "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
        )
        procs.append(proc)
        wait_for(lambda: run_cli("status", "-C", str(folder), "--json").returncode == 0
                 and json.loads(run_cli("status", "-C", str(folder), "--json").stdout)["daemon"])
        return proc

    yield folder, start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def test_submit_queues_without_a_daemon_then_the_daemon_runs_it(daemon):
    folder, start = daemon
    first = agent(folder, "submit", "--set", "LEARNING_RATE=0.01", "-m", "lr best", "--hypothesis", "closer to 1e-2")
    assert first["status"] == "queued" and first["session"] == 1
    status = agent(folder, "status")
    assert status["daemon"] is False and status["researcher"] == "external" and status["runs"]["queued"] >= 2

    proc = start()
    [done] = agent(folder, "wait", str(first["experiment"]), "--timeout", "120")
    assert done["decision"] == "kept" and done["metric"] == pytest.approx(1.02)
    best = agent(folder, "best")
    assert best["experiment"] == first["experiment"] and "LEARNING_RATE = 0.01" in best["diff"]

    # a folder whose train.py differs from the best: a second experiment, from the new best
    work = folder.parent / "work"
    work.mkdir()
    text = (folder / "train.py").read_text().replace("N_LAYER = 2", "N_LAYER = 1")
    (work / "train.py").write_text(text.replace("LEARNING_RATE = 1e-3", "LEARNING_RATE = 0.01"))
    second = agent(folder, "submit", str(work), "-m", "one layer")
    assert second["parent"] == first["experiment"]
    [done] = agent(folder, "wait", str(second["experiment"]), "--timeout", "120")
    assert done["decision"] == "kept"  # 1.01 < 1.02
    shown = agent(folder, "show", str(second["experiment"]))
    assert "-N_LAYER = 2" in shown["diff"] and "+N_LAYER = 1" in shown["diff"]
    assert shown["runs"][0]["status"] == "done" and shown["runs"][0]["figures"]["num_steps"] == 10

    # what cannot run is rejected at once: a patch that does not apply
    bad = folder.parent / "bad.patch"
    bad.write_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+yes\n")
    proc_bad = run_cli("submit", str(bad), "-C", str(folder), "--json")
    rejected = json.loads(proc_bad.stdout)
    assert proc_bad.returncode == 1 and rejected["status"] == "rejected" and "apply" in rejected["reason"]
    assert run_cli("submit", "-C", str(folder), "--set", "NOPE=1").stderr.count("\n") == 1

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert agent(folder, "status")["daemon"] is False


def test_cancel_stops_a_running_experiment(daemon):
    folder, start = daemon
    start()
    slow = agent(folder, "submit", "--set", "SLEEP=60.0", "-m", "slow")["experiment"]
    ledger = Ledger(folder / ".labfleet" / "ledger.sqlite")
    wait_for(lambda: ledger.db.execute("SELECT 1 FROM runs WHERE experiment_id = ? AND status = 'running'",
                                       (slow,)).fetchone() is not None)
    out = agent(folder, "cancel", str(slow))
    assert out == {"experiment": slow, "cancelled_queued": 0, "stopping_running": 1}
    [done] = agent(folder, "wait", str(slow), "--timeout", "30")
    assert done["decision"] == "failed"
    runs = agent(folder, "show", str(slow))["runs"]
    assert [r["status"] for r in runs] == ["cancelled"]
    run_dir = f"runs/s1/e{slow}-r"  # the training process is gone (the harness kills its group on the way out)
    wait_for(lambda: subprocess.run(["pgrep", "-f", run_dir], capture_output=True, text=True).stdout.strip() == "",
             timeout=15)
    again = run_cli("cancel", str(slow), "-C", str(folder))
    assert again.returncode == 1 and "already decided" in again.stderr


def test_wait_times_out_with_a_clear_error(tmp_path):
    folder = lab(tmp_path)
    exp = agent(folder, "submit", "--set", "N_LAYER=3")["experiment"]
    proc = run_cli("wait", str(exp), "-C", str(folder), "--timeout", "0.5")
    assert proc.returncode == 1 and f"still pending: e{exp}" in proc.stderr
    assert "no experiment 999" in run_cli("show", "999", "-C", str(folder)).stderr


def test_skill_is_printed_and_shipped(tmp_path):
    text = run_cli("skill").stdout
    assert text.startswith("# Researching with labfleet") and "labfleet submit" in text and "labfleet mcp" in text
    assert run_cli("init", str(tmp_path / "t")).returncode == 0
    assert (tmp_path / "t" / "SKILL.md").read_text() == text
