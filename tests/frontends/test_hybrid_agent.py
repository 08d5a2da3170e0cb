"""The hybrid researcher driven by an external agent, end to end: `labfleet run --researcher hybrid --ideas-from external`.

A real daemon (the CLI in a subprocess) tunes the knobs around the baseline with
Optuna, then waits; an agent submits a wave of ideas (`labfleet submit --factor`);
after the wave's keep the daemon re-tunes around it; killed mid-way and restarted,
it rebuilds its state from the ledger and spends exactly the tuning budget.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from labfleet.ledger import Ledger
from labfleet.target import unified_diff
from tests.conftest import make_target, run_cli

TRAIN = """\
import math, os, time
import evalkit

LEARNING_RATE = 1e-3  # step size
N_LAYER = 2
RMS = 0
WIDE = 0
seed = int(os.environ["LABFLEET_SEED"])
evalkit.report(2.0 + (math.log10(LEARNING_RATE) + 2) ** 2 + 0.01 * N_LAYER - 0.3 * RMS - 0.2 * WIDE,
               num_steps=10, peak_memory_mb=2048)
"""
TOML = """
[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
N_LAYER = { file = "train.py", choices = [1, 2, 3] }
"""


def start(folder: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "labfleet", "run", "-C", str(folder), "--researcher", "hybrid",
         "--ideas-from", "external", "--tune-experiments", "3", "--workers", "1", "--keep", "margin",
         "--noise-repeats", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out + err


def experiments(folder: Path) -> list[dict]:
    path = folder / ".labfleet" / "ledger.sqlite"
    if not path.exists():
        return []
    ledger = Ledger(path)
    try:
        return [dict(r, tags=json.loads(r["tags"])) for r in ledger.db.execute(
            "SELECT id, parent_id, decision, tags, description, commit_sha FROM experiments ORDER BY id")]
    finally:
        ledger.close()


def wait_until(condition, proc: subprocess.Popen[str], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the daemon ended: {proc.communicate()}")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def decided(exps: list[dict], tag: str) -> list[dict]:
    return [e for e in exps if e["tags"].get("tune_of") == tag and e["decision"] not in ("pending", "running")]


def test_an_agent_s_ideas_then_optuna_re_tunes_around_the_keep_across_a_restart(tmp_path):
    folder = make_target(tmp_path / "lab", TRAIN, extra_toml=TOML, budget=1, timeout=60)
    daemon = start(folder)
    try:
        # the baseline is the first structure: three tuning experiments over the whole space, then it waits
        wait_until(lambda: len(decided(experiments(folder), "1")) == 3, daemon)
        status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
        assert status["daemon"] is True and status["researcher"] == "hybrid"
        time.sleep(3)
        exps = experiments(folder)
        assert len(exps) == 4 and all(e["parent_id"] == 1 for e in exps[1:])  # idle: no ideas of its own

        # the agent's wave of two ideas, against the best version so far (a kept tuning experiment, maybe)
        best = json.loads(run_cli("best", "-C", str(folder), "--json").stdout)["experiment"]
        commit = next(e["commit_sha"] for e in experiments(folder) if e["id"] == best)
        text = subprocess.run(["git", "-C", str(folder), "show", f"{commit}:train.py"], capture_output=True,
                              text=True, check=True).stdout
        args = []
        for name, old, new in (("RMS", "RMS = 0", "RMS = 1"), ("WIDE", "WIDE = 0", "WIDE = 1")):
            path = tmp_path / f"{name}.patch"
            path.write_text(unified_diff("train.py", text, text.replace(old, new)))
            args += ["--factor", name, str(path)]
        wave = json.loads(run_cli("submit", *args, "-C", str(folder), "--json", "-m", "norm and width").stdout)
        assert wave["wave"] == "i1" and len(wave["cells"]) == 3
        both = next(c["experiment"] for c in wave["cells"] if c["on"] == ["RMS", "WIDE"])

        # every cell beats the best; the last keep is the structural one the hybrid re-tunes around
        cells = {c["experiment"] for c in wave["cells"]}
        wait_until(lambda: all(e["decision"] not in ("pending", "running") for e in experiments(folder)
                               if e["id"] in cells), daemon)
        kept = {e["id"] for e in experiments(folder) if e["id"] in cells and e["decision"] == "kept"}
        keep = max(kept)
        assert keep == both  # the best cell, the latest structural keep
        wait_until(lambda: decided(experiments(folder), str(keep)), daemon)
    finally:
        log = stop(daemon)
    # killed during the re-tuning (one decided, the rest running, queued or not yet proposed)
    assert "interrupted" in log
    before = [e for e in experiments(folder) if e["tags"].get("tune_of") == str(keep)]
    assert 1 <= len(before) <= 3 and all(e["parent_id"] == keep for e in before)

    again = start(folder)
    try:
        wait_until(lambda: len(decided(experiments(folder), str(keep))) == 3, again)
        time.sleep(3)
        exps = experiments(folder)
    finally:
        stop(again)
    tuned = [e for e in exps if e["tags"].get("tune_of") == str(keep)]
    # exactly the budget, every one from the keep; those recorded before the restart are not proposed again
    assert len(tuned) == 3 and all(e["parent_id"] == keep for e in tuned)
    assert {e["id"] for e in before} <= {e["id"] for e in tuned}
    assert len(decided(exps, "1")) == 3  # the baseline's tuning was not restarted either
    # nothing else: the ideas come only from the agent (an earlier kept cell may have had a tuning run begun)
    assert all(e["tags"].get("tune_of") in {"1", *map(str, kept)} or e["id"] in cells or e["parent_id"] is None
               for e in exps)


def test_ideas_from_is_checked():
    proc = run_cli("run", "--researcher", "greedy", "--ideas-from", "external", "-C", "/nonexistent")
    assert proc.returncode != 0
    bad = run_cli("run", "--researcher", "hybrid", "--ideas-from", "agent", "-C", "/nonexistent")
    assert bad.returncode == 1 and "--ideas-from 'agent': use llm or external" in bad.stderr
