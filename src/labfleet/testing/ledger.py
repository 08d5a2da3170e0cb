"""The ledger contract: what any ledger must keep, checked against a real file.

Use it from a test module::

    from labfleet.testing import ledger as contract

    @pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
    def test_ledger_contract(check, tmp_path):
        check(lambda path: Ledger(path), tmp_path)

``open_ledger(path)`` opens (creating on first use) the ledger stored at ``path``;
every check closes it and opens it again, because the ledger is the single source of
truth a killed session resumes from. What it holds to:

- an experiment comes back as recorded, as a frozen record, after a reopen;
- a run's life is queued -> running -> one final status, and a final status never
  changes (a result is never counted twice);
- a lost run retried queues the next attempt with the same seed and role;
- ``history`` gives decided experiments with their counting run and the pending ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from labfleet.enums import Decision, Role, RunStatus

LedgerFactory = Callable[[Path], Any]


def _session(ledger: Any) -> int:
    return int(ledger.create_session("fixture", "scripted", {"seed": 0}, "labfleet/", "c0", {"prepare.py": "h"}))


def _experiment(ledger: Any, session_id: int, **fields: Any) -> tuple[int, int]:
    values: dict[str, Any] = {
        "parent_id": None, "commit": "c1", "patch": "", "description": "lr up", "hypothesis": "a larger step",
        "knobs": {"LEARNING_RATE": 3e-3}, "tags": {"wave": "1"}, "seed": 7, "budget_seconds": 30.0, **fields,
    }
    exp_id, run_id = ledger.add_experiment(session_id, **values)
    assert run_id is not None, "add_experiment queues the first run"
    return int(exp_id), int(run_id)


def check_an_experiment_comes_back_as_recorded(open_ledger: LedgerFactory, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    sid = _session(ledger)
    exp_id, _run = _experiment(ledger, sid)
    before = ledger.experiment(exp_id)
    ledger.close()
    again = open_ledger(path)
    exp = again.experiment(exp_id)
    assert exp == before
    params = vars(type(exp)).get("__dataclass_params__")
    assert params is not None and params.frozen, "an experiment is a frozen dataclass"
    assert (exp.session_id, exp.parent_id, exp.commit, exp.description, exp.seed) == (sid, None, "c1", "lr up", 7)
    assert dict(exp.knobs) == {"LEARNING_RATE": 3e-3} and dict(exp.tags) == {"wave": "1"}
    assert exp.decision == Decision.PENDING
    [run] = again.runs_of(exp_id)
    assert (run.status, run.attempt, run.role) == (RunStatus.QUEUED, 1, Role.SCREEN)
    again.close()


def check_a_final_status_never_changes(open_ledger: LedgerFactory, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    sid = _session(ledger)
    exp_id, run_id = _experiment(ledger, sid)
    ledger.mark_running(run_id, worker="w0", hardware="cpu", run_dir="/tmp/r", log_path="/tmp/r/run.log")
    assert ledger.runs_of(exp_id)[0].status == RunStatus.RUNNING
    ledger.finish_run(run_id, RunStatus.DONE, metric=1.25, figures={"num_steps": 10})
    assert ledger.finish_run(run_id, RunStatus.CRASHED, reason="late") is None
    ledger.close()
    again = open_ledger(path)
    [run] = again.runs_of(exp_id)
    assert (run.status, run.metric, dict(run.figures), run.worker) == (RunStatus.DONE, 1.25, {"num_steps": 10}, "w0")
    again.close()


def check_a_lost_run_retried_queues_the_next_attempt(open_ledger: LedgerFactory, tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "ledger.db")
    sid = _session(ledger)
    exp_id, _ = _experiment(ledger, sid)
    validation = ledger.queue_run(sid, exp_id, seed=1007, role=Role.VALIDATE)
    ledger.mark_running(validation, worker="w1", hardware="H200", run_dir="/tmp/v", log_path="/tmp/v/run.log")
    retry = ledger.finish_run(validation, RunStatus.LOST, reason="node died", retry=True)
    assert retry is not None
    runs = {r.id: r for r in ledger.runs_of(exp_id)}
    assert runs[validation].status == RunStatus.LOST
    assert (runs[retry].status, runs[retry].attempt, runs[retry].seed, runs[retry].role) == (
        RunStatus.QUEUED, 2, 1007, Role.VALIDATE)
    ledger.close()


def check_history_holds_decided_and_pending(open_ledger: LedgerFactory, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    sid = _session(ledger)
    kept, run = _experiment(ledger, sid, description="kept")
    waiting, _ = _experiment(ledger, sid, description="waiting", parent_id=kept)
    ledger.mark_running(run, worker="w0", hardware="cpu", run_dir="/tmp/r", log_path="/tmp/r/run.log")
    ledger.finish_run(run, RunStatus.DONE, metric=1.5)
    ledger.decide(kept, Decision.KEPT, 1.5)
    ledger.close()
    again = open_ledger(path)
    history, pending = again.history(sid)
    assert [(r.experiment.id, r.experiment.decision, r.run.metric) for r in history] == [(kept, Decision.KEPT, 1.5)]
    assert [e.id for e in pending] == [waiting] and pending[0].parent_id == kept
    again.close()


CHECKS: list[Callable[[LedgerFactory, Path], None]] = [
    check_an_experiment_comes_back_as_recorded,
    check_a_final_status_never_changes,
    check_a_lost_run_retried_queues_the_next_attempt,
    check_history_holds_decided_and_pending,
]
