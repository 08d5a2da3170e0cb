"""Read-side views over the ledger: what `status`, `results`, `best` and `export` show.

Plain dicts (JSON-ready), built by pure functions from the ledger's frozen summary
records (``labfleet.ledger.rows``), which indexed queries compute, so they stay fast
on a ledger with hundreds of thousands of runs, and so the CLI, the dashboard and
the MCP server show the same numbers. The ``*_view(ledger, ...)`` functions only
read the records and hand them to the pure ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labfleet.errors import LabfleetError
from labfleet.ledger import Ledger, LlmUsage, ResultRow, SessionRow, StatusSummary, lock_holder
from labfleet.ledger.export import TSV_COLUMNS
from labfleet.ledger.export import results_tsv as _tsv
from labfleet.records import Run

__all__ = ["TSV_COLUMNS", "best_view", "llm_json", "llm_view", "noise_json", "noise_view", "results_from",
           "results_tsv", "results_view", "status_from", "status_view"]


def _session(ledger: Ledger, session_id: int | None) -> SessionRow:
    session = ledger.session(session_id)
    if session is None:
        raise LabfleetError("no session in this ledger yet: start one with `labfleet run`")
    return session


def _box_view(unboxed: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether runs are boxed: on this machine (``labfleet doctor`` has the details), and as the
    session's runs reported it (runs on other hosts, or an earlier orchestrator's)."""
    from labfleet import sandbox

    support = sandbox.support()
    said = list(unboxed)
    warning = "" if support.boxed else support.warning
    if said and not warning:
        warning = f"this session's runs were not all boxed: {said[0].get('warning', '')}"
    return {"boxed": support.boxed, "detail": support.detail, "warning": warning,
            "runs_unboxed": bool(said)}


def status_view(ledger: Ledger, state_dir: Path, session_id: int | None = None) -> dict[str, Any]:
    summary = ledger.status_summary(session_id, now=time.time())
    # the lock belongs to whichever session runs now: only the latest one can be it
    holder = lock_holder(state_dir) if summary.latest_session == summary.session.id else None
    return status_from(summary, holder)


def status_from(summary: StatusSummary, holder: int | None) -> dict[str, Any]:
    """The status view of a summary; ``holder``: the pid holding the session lock, if any."""
    session, runs, decisions, now = summary.session, dict(summary.runs), dict(summary.decisions), summary.now
    config = json.loads(session.config)
    finished_runs = sum(n for s, n in runs.items() if s not in ("queued", "running"))
    return {
        "session": session.id,
        "state": "running" if holder else session.status,
        "orchestrator_pid": holder,
        "daemon": bool(holder) and bool(config.get("serve")),
        "target": session.target,
        "researcher": session.researcher,
        "branch": session.branch,
        "config": config,
        # a session that is not running ended at its last update (a simulated one on its virtual clock)
        "elapsed_seconds": round((now if holder else session.updated_at) - session.created_at, 1),
        "experiments": sum(decisions.values()),
        "decisions": decisions,
        "runs": runs,
        "finished_runs": finished_runs,
        "baseline_metric": summary.baseline_metric,
        "noise": noise_json(summary.repeated),
        "cost_usd": round(sum(c.usd for c in summary.costs), 4),
        "llm": llm_json(summary.llm),
        "best": dict(summary.best) if summary.best is not None else None,
        "box": _box_view(summary.unboxed),
        "running": [
            {"run": r.run, "experiment": r.experiment, "worker": r.worker,
             "seconds": round(now - (r.started_at or now), 1), "description": r.description}
            for r in summary.running
        ],
    }


def noise_view(ledger: Ledger, session_id: int) -> dict[str, float]:
    """The noise floor (sd of one run) per hardware class, from runs repeated with other seeds."""
    return noise_json(ledger.repeated_done_runs(session_id))


def noise_json(repeated: Iterable[Run]) -> dict[str, float]:
    from labfleet.analysis.noise import noise_floors, samples_from_runs

    return {hw: floor.sd for hw, floor in noise_floors(samples_from_runs(repeated)).items()}


def llm_view(ledger: Ledger, session_id: int) -> dict[str, Any]:
    """The LLM researcher's calls: how many, tokens and dollars (recorded as ``llm_call`` events)."""
    return llm_json(ledger.llm_usage(session_id))


def llm_json(usage: LlmUsage) -> dict[str, Any]:
    return {"calls": usage.calls, "failed": usage.failed, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "usd": round(usage.usd, 6)}


def results_view(ledger: Ledger, session_id: int | None = None, last: int | None = 50) -> list[dict[str, Any]]:
    """One row per experiment with its latest run; the ``last`` most recent (None: all)."""
    sid = _session(ledger, session_id).id
    return results_from(ledger.result_rows(sid, last), noise_view(ledger, sid), ledger.done_counts(sid))


def results_from(rows: Iterable[ResultRow], noise: Mapping[str, float],
                 counts: Mapping[tuple[int, str | None], int]) -> list[dict[str, Any]]:
    """The results view of result rows, the noise floors and the done runs per (experiment, class)."""
    out = []
    for r in rows:
        n = counts.get((r.id, r.hardware), 0)
        sd = noise.get(r.hardware or "")
        metric = r.metric if r.metric is not None else r.run_metric
        out.append({
            "experiment": r.id, "parent": r.parent_id, "commit": r.commit_sha[:10],
            "decision": r.decision, "status": r.status, "metric": metric, "run_metric": r.run_metric,
            "runs_done": n, "uncertainty": round(sd / n**0.5, 6) if sd is not None and n else None,
            "description": r.description, "hypothesis": r.hypothesis, "knobs": json.loads(r.knobs),
            "tags": json.loads(r.tags), "seed": r.seed, "budget_seconds": r.budget_seconds,
            "run": r.run_id, "attempt": r.attempt, "worker": r.worker, "hardware": r.hardware,
            "reason": r.reason, "figures": json.loads(r.figures) if r.figures else {},
            "started_at": r.started_at, "ended_at": r.ended_at, "log_path": r.log_path,
        })
    return out


def best_view(ledger: Ledger, repo: Path, session_id: int | None = None) -> dict[str, Any]:
    session = _session(ledger, session_id)
    sid = session.id
    rows = ledger.lineage(sid)
    if not rows:
        raise LabfleetError(f"session {sid} has no result yet (the baseline has not finished)")
    from labfleet import workspace  # git only for the diff

    baseline, best = rows[0], rows[-1]
    diff = workspace.diff(repo, baseline.commit, best.commit) if best is not baseline else ""
    return {
        "session": sid,
        "experiment": best.id,
        "description": best.description,
        "metric": best.metric,
        "baseline_metric": baseline.metric,
        "improvement": None if best.metric is None or baseline.metric is None else round(best.metric - baseline.metric, 6),
        "commit": best.commit,
        "branch": session.branch,
        "keeps": len(rows) - 1,
        "knobs": dict(best.knobs),
        "diff": diff,
    }


def results_tsv(ledger: Ledger, metric: str, session_id: int | None = None) -> str:
    """autoresearch's results.tsv: commit, metric, memory_gb, status (keep/discard/crash), description."""
    return _tsv(ledger.result_rows(_session(ledger, session_id).id), metric)
