"""The research commands end to end: simulate, then report, effects, status and promote on its ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

FLEET = "H100:3,H200:1"


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("sim") / "plan"
    proc = run_cli("simulate", "--fleet", FLEET, "--hours", "0.5", "--budget", "60", "--researcher", "waves",
                   "--save", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    return folder, json.loads(proc.stdout)


def test_simulate_prints_what_a_session_would_do(planned):
    folder, sim = planned
    assert sim["workers"] == 4 and sim["researcher"] == "waves"
    assert sim["experiments"] > 40 and sim["runs"] >= sim["experiments"]
    assert 0.4 < sim["hours"] < 1.0  # virtual hours: the last runs finish after the limit
    assert sim["utilization"] > 0.8
    assert sim["best"] < sim["baseline"]
    # 3 H100 at $2.49/h and 1 H200 at $3.59/h for about half an hour each
    assert set(sim["cost_by_class"]) == {"H100", "H200"} and 2 < sim["cost_usd"] < 8
    assert (folder / ".labfleet" / "ledger.sqlite").is_file()


def test_simulate_is_deterministic_for_a_seed(planned):
    _, first = planned
    again = json.loads(run_cli("simulate", "--fleet", FLEET, "--hours", "0.5", "--budget", "60",
                               "--researcher", "waves", "--json").stdout)
    for key in ("experiments", "runs", "decisions", "best", "utilization", "cost_usd"):
        assert again[key] == first[key], key


def test_simulate_bad_fleet_is_one_line(tmp_path):
    proc = run_cli("simulate", "--fleet", "H100:x")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "CLASS:COUNT[@PRICE_PER_HOUR]" in proc.stderr


def test_report_effects_and_status_read_the_simulated_ledger(planned, tmp_path):
    folder, sim = planned
    out = tmp_path / "report"
    proc = run_cli("report", "-C", str(folder), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.glob("*.png")} >= {"progress.png", "timeline.png", "hardware.png", "cost.png"}
    from labfleet.dashboard.document import inlined

    doc = inlined((out / "index.html").read_text())  # the page draws itself from the data it carries
    assert doc["status"]["best"]["metric"] == pytest.approx(sim["best"], abs=1e-4)

    effects = json.loads(run_cli("effects", "-C", str(folder), "--json").stdout)
    assert effects["waves"] and effects["noise_sd"] is not None
    wave = next(iter(effects["waves"].values()))
    assert wave["main"] and all(e["low"] <= e["estimate"] <= e["high"] for e in wave["main"])
    text = run_cli("effects", "-C", str(folder)).stdout
    assert "(95% CI)" in text

    status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
    assert set(status["noise"]) == {"H100", "H200"} and all(0 < sd < 0.01 for sd in status["noise"].values())
    assert status["cost_usd"] == pytest.approx(sim["cost_usd"], rel=1e-3)
    rows = json.loads(run_cli("results", "-C", str(folder), "--all", "--json").stdout)
    assert any(r["uncertainty"] for r in rows if r["decision"] in ("kept", "baseline"))


def test_promote_queues_validation_runs(planned, tmp_path):
    folder, _ = planned
    rows = json.loads(run_cli("results", "-C", str(folder), "--all", "--json").stdout)
    discarded = next(r["experiment"] for r in rows if r["decision"] == "discarded")
    kept = next(r["experiment"] for r in rows if r["decision"] == "kept")
    proc = run_cli("promote", str(discarded), "-C", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"experiment": discarded, "queued_runs": 2, "session_running": False}
    again = run_cli("promote", str(discarded), "-C", str(folder))
    assert again.returncode == 1 and "still has runs queued" in again.stderr
    assert "is already kept" in run_cli("promote", str(kept), "-C", str(folder)).stderr
    assert "no experiment 99999" in run_cli("promote", "99999", "-C", str(folder)).stderr
    status = json.loads(run_cli("status", "-C", str(folder), "--json").stdout)
    assert status["runs"]["queued"] == 2 and status["state"] == "stopped"  # `labfleet run` resumes it
