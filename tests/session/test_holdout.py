"""The holdout metric: measured on kept and validated versions, shown to people, never to researchers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labfleet import agents, integrity, views
from labfleet.ledger import Ledger
from labfleet.records import Decision, SessionState
from labfleet.researchers.llm import LLMResearcher
from labfleet.researchers.view import Sources
from labfleet.target import load_target
from labfleet.testing.targets import KNOB_TRAIN
from tests.conftest import git, make_target, run_cli

SECRET = "0.123457"  # the holdout value: distinctive, so any leak is found by text search
HOLDOUT_TOML = """
[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }

[holdout]
metric = "secret_holdout"
command = "python holdout.py"
"""


@pytest.fixture
def finished_lab(tmp_path: Path) -> Path:
    folder = make_target(tmp_path / "lab", KNOB_TRAIN, extra_toml=HOLDOUT_TOML, budget=1, timeout=8)
    (folder / "holdout.py").write_text(f'print("---")\nprint("secret_holdout:  {SECRET}")\n')
    git(folder, "add", "holdout.py")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "holdout")
    proc = run_cli("run", "-C", str(folder), "--workers", "1", "--researcher", "grid", "--max-experiments", "3",
                   "--noise-repeats", "0")
    assert proc.returncode == 0, proc.stderr
    return folder


def test_holdout_reaches_people_and_no_researcher_visible_output(finished_lab, monkeypatch):
    folder = finished_lab
    # people see it: `best --holdout` and the report, validation against holdout per kept version
    shown = run_cli("best", "-C", str(folder), "--holdout")
    assert shown.returncode == 0, shown.stderr
    assert f"secret_holdout {SECRET}" in shown.stdout
    assert "e1: val_bpb" in shown.stdout  # the baseline's calibration run measured it
    report = run_cli("report", "-C", str(folder))
    assert report.returncode == 0, report.stderr
    page = next((folder / ".labfleet" / "report").glob("s*/index.html")).read_text()
    assert SECRET in page and "Holdout" in page

    # researchers do not: every verb's JSON, the TSV, every experiment's `show`, the MCP views
    ledger = Ledger.for_target(folder / ".labfleet")
    outputs = [run_cli(*verb, "-C", str(folder)).stdout for verb in
               (("status", "--json"), ("results", "--json", "--all"), ("best", "--json"), ("export", "--tsv", "-o", "-"),
                ("results",), ("status",), ("best",))]
    experiments = ledger.experiments(1)
    outputs += [run_cli("show", str(e.id), "-C", str(folder), "--json").stdout for e in experiments]
    outputs += [run_cli("show", str(e.id), "-C", str(folder)).stdout for e in experiments]
    outputs += [json.dumps(v, default=str) for v in (
        views.status_view(ledger, folder / ".labfleet"), views.results_view(ledger, None, None),
        views.best_view(ledger, folder), *[agents.show(ledger, e.id) for e in experiments])]

    # the LLM researcher's prompt, built through its public method from the ledger's snapshot
    monkeypatch.setenv("LABFLEET_TEST_KEY", "sk-test")
    target = load_target(folder)
    llm = LLMResearcher(sources=Sources.of(target), provider="openai", model="m", base_url="http://127.0.0.1:9/v1",
                        api_key_env="LABFLEET_TEST_KEY")
    history, pending = ledger.history(1)
    champion = next(e for e in reversed(experiments) if e.decision in (Decision.KEPT, Decision.BASELINE))
    state = SessionState(session_id=1, metric="val_bpb", direction="minimize", knobs=target.knobs,
                         baseline=experiments[0], champion=champion, history=tuple(history), pending=tuple(pending),
                         free_workers=1)
    files = {"train.py": git(folder, "show", f"{champion.commit}:train.py")}
    outputs.append(llm.wave_prompt(state, champion, files, 2))

    assert len(outputs) > 10
    for text in outputs:
        text = text.replace(str(folder.parent), "<tmp>")  # the test's own folder is named after it
        assert SECRET not in text
        assert "secret_holdout" not in text and "holdout" not in text.lower()

    # the runs that measured it are exactly the kept and validated versions' calibration runs
    measured = ledger.db.execute("SELECT r.role FROM holdout h JOIN runs r ON r.id = h.run_id").fetchall()
    assert measured and {r["role"] for r in measured} <= set(integrity.HOLDOUT_ROLES)
    screens = [r for r in ledger.runs(1) if r.role == "screen"]
    assert screens and all(integrity.holdout_of_result(r.run_dir) is None for r in screens)
    ledger.close()


def test_divergence_warning():
    rows = [{"experiment": 1, "metric": 2.0, "holdout": 2.1}, {"experiment": 5, "metric": 1.8, "holdout": 2.09}]
    assert "overfitting the validation set" in integrity.divergence_warning(rows, "minimize")
    rows[1]["holdout"] = 1.92  # the holdout followed: no warning
    assert integrity.divergence_warning(rows, "minimize") == ""
    assert integrity.divergence_warning(rows[:1], "minimize") == ""
    flipped = [{**r, "metric": -r["metric"], "holdout": -r["holdout"]} for r in rows]
    assert integrity.divergence_warning(flipped, "maximize") == ""
