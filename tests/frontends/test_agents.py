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
from labfleet.testing.targets import KNOB_TRAIN
from tests.conftest import AGENT_TOML, make_target, run_cli, wait_for
from tests.conftest import agent_lab as lab


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


# --------------------------------------------------------------------------- a wave of ideas from outside

IDEAS_TRAIN = KNOB_TRAIN.replace("time.sleep(SLEEP)\n", """time.sleep(SLEEP)
RMS = 0
WIDE = 0

LR_WARM = 0
""").replace(
    "evalkit.report(1.0 + (math.log10(LEARNING_RATE) + 2) ** 2 + 0.01 * N_LAYER,",
    "evalkit.report(2.0 - 0.1 * RMS - 0.05 * WIDE - 0.08 * RMS * WIDE - 0.03 * LR_WARM,")


def test_submit_factor_runs_every_combination_and_effects_reports_the_interaction(tmp_path):
    folder = make_target(tmp_path / "lab", IDEAS_TRAIN, extra_toml=AGENT_TOML, budget=1, timeout=90)
    text = (folder / "train.py").read_text()
    from labfleet.target import unified_diff

    patches = {}
    for name, old, new in (("RMS", "RMS = 0", "RMS = 1"), ("WIDE", "WIDE = 0", "WIDE = 1"),
                           ("LR_WARM", "LR_WARM = 0", "LR_WARM = 1")):
        path = tmp_path / f"{name}.patch"
        path.write_text(unified_diff("train.py", text, text.replace(old, new)))
        patches[name] = path
    args = [a for name, path in patches.items() for a in ("--factor", name, str(path))]
    wave = agent(folder, "submit", *args, "-m", "three ideas", "--hypothesis", "RMS helps more with WIDE")
    assert wave["wave"] == "i1" and wave["design"] == "2^3" and wave["ideas"] == ["RMS", "WIDE", "LR_WARM"]
    assert [c["status"] for c in wave["cells"]] == ["queued"] * 7 and wave["conflicts"] == []
    assert wave["centre"] == {"experiment": 1, "cell": 0, "on": []}

    # a repeat of an idea already in the wave is refused before anything is recorded, naming the experiment
    again = run_cli("submit", str(patches["WIDE"]), "-C", str(folder), "-m", "wider, under another name")
    first_wide = next(c["experiment"] for c in wave["cells"] if c["on"] == ["WIDE"])
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert f"not queued: it repeats e{first_wide} (idea 'WIDE' of wave i1)" in again.stderr
    bad = run_cli("submit", "--factor", "A", str(patches["RMS"]), "-C", str(folder))
    assert bad.returncode == 1 and "at least two --factor" in bad.stderr

    daemon = subprocess.Popen([sys.executable, "-m", "labfleet", "serve", "-C", str(folder), "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ids = [str(c["experiment"]) for c in wave["cells"]]
        decided = agent(folder, "wait", *ids, "--timeout", "240")
        assert all(d["decision"] in ("kept", "discarded") for d in decided)
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(timeout=30)
    found = agent(folder, "effects")["waves"]["i1"]
    main = {e["name"]: e for e in found["main"]}
    inter = {e["name"]: e for e in found["interactions"]}
    # by hand from the formula: RMS -0.1 - 0.08/2; WIDE -0.05 - 0.08/2; LR_WARM -0.03; RMS x WIDE -0.08/2
    assert main["RMS"]["estimate"] == pytest.approx(-0.14) and main["WIDE"]["estimate"] == pytest.approx(-0.09)
    assert main["LR_WARM"]["estimate"] == pytest.approx(-0.03)
    assert inter["RMS×WIDE"]["estimate"] == pytest.approx(-0.04) and inter["RMS×WIDE"]["significant"]
    assert inter["RMS×LR_WARM"]["estimate"] == pytest.approx(0, abs=1e-9)
    text_out = run_cli("effects", "-C", str(folder)).stdout
    assert "wave i1: 8 results over the ideas RMS, WIDE, LR_WARM" in text_out
    assert "the effect of RMS depends on WIDE (RMS lowers val_bpb by 0.18 together with WIDE" in text_out
    assert "best guess (the terms beyond the noise, combined): RMS + WIDE + LR_WARM" in text_out
