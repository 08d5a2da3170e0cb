"""Read-side views over the ledger: what `status`, `results`, `best` and `export` show.

Plain dicts (JSON-ready) built from a few indexed queries, so they stay fast on a
ledger with hundreds of thousands of runs, and so the CLI, the dashboard and the
MCP server show the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from labfleet.errors import LabfleetError
from labfleet.ledger import Ledger, lock_holder

TSV_COLUMNS = ("commit", "{metric}", "memory_gb", "status", "description")


def _session(ledger: Ledger, session_id: int | None) -> Any:
    session = ledger.session(session_id)
    if session is None:
        raise LabfleetError("no session in this ledger yet: start one with `labfleet run`")
    return session


def _box_view(ledger: Ledger, session_id: int) -> dict[str, Any]:
    """Whether runs are boxed: on this machine (``labfleet doctor`` has the details), and as the
    session's runs reported it (runs on other hosts, or an earlier orchestrator's)."""
    from labfleet import sandbox

    support = sandbox.support()
    said = ledger.events_of(session_id, "runs_unboxed")
    warning = "" if support.boxed else support.warning
    if said and not warning:
        warning = f"this session's runs were not all boxed: {said[0].get('warning', '')}"
    return {"boxed": support.boxed, "detail": support.detail, "warning": warning,
            "runs_unboxed": bool(said)}


def status_view(ledger: Ledger, state_dir: Path, session_id: int | None = None) -> dict[str, Any]:
    from labfleet.analysis.cost import fleet_usd

    session = _session(ledger, session_id)
    sid = session["id"]
    runs = ledger.status_counts(sid)
    decisions = ledger.decision_counts(sid)
    baseline = ledger.db.execute(
        "SELECT metric FROM experiments WHERE session_id = ? AND decision = 'baseline'", (sid,)
    ).fetchone()
    best = ledger.db.execute(
        "SELECT id, metric, description, commit_sha FROM experiments WHERE session_id = ?"
        " AND decision IN ('baseline', 'kept') ORDER BY decided_at DESC, id DESC LIMIT 1",
        (sid,),
    ).fetchone()
    running = ledger.db.execute(
        "SELECT r.id, r.worker, r.started_at, e.id AS experiment_id, e.description FROM runs r"
        " JOIN experiments e ON e.id = r.experiment_id WHERE r.session_id = ? AND r.status = 'running'"
        " ORDER BY r.worker",
        (sid,),
    ).fetchall()
    # the lock belongs to whichever session runs now: only the latest one can be it
    latest = ledger.session()
    holder = lock_holder(state_dir) if latest is not None and latest["id"] == sid else None
    config = json.loads(session["config"])
    now = time.time()
    finished_runs = sum(n for s, n in runs.items() if s not in ("queued", "running"))
    return {
        "session": sid,
        "state": "running" if holder else session["status"],
        "orchestrator_pid": holder,
        "daemon": bool(holder) and bool(json.loads(session["config"]).get("serve")),
        "target": session["target"],
        "researcher": session["researcher"],
        "branch": session["branch"],
        "config": config,
        # a session that is not running ended at its last update (a simulated one on its virtual clock)
        "elapsed_seconds": round((now if holder else session["updated_at"]) - session["created_at"], 1),
        "experiments": sum(decisions.values()),
        "decisions": decisions,
        "runs": runs,
        "finished_runs": finished_runs,
        "baseline_metric": baseline["metric"] if baseline else None,
        "noise": noise_view(ledger, sid),
        "cost_usd": round(fleet_usd(ledger, sid, now), 4),
        "llm": llm_view(ledger, sid),
        "best": dict(best) if best and best["metric"] is not None else None,
        "box": _box_view(ledger, sid),
        "running": [
            {"run": r["id"], "experiment": r["experiment_id"], "worker": r["worker"],
             "seconds": round(now - (r["started_at"] or now), 1), "description": r["description"]}
            for r in running
        ],
    }


def noise_view(ledger: Ledger, session_id: int) -> dict[str, float]:
    """The noise floor (sd of one run) per hardware class, from runs repeated with other seeds."""
    from labfleet.analysis.noise import noise_floors
    from labfleet.ledger import run_record

    rows = ledger.db.execute(
        "SELECT * FROM runs WHERE session_id = ? AND status = 'done' AND (experiment_id, hardware) IN"
        " (SELECT experiment_id, hardware FROM runs WHERE session_id = ? AND status = 'done'"
        "  GROUP BY experiment_id, hardware HAVING COUNT(*) > 1)",
        (session_id, session_id),
    ).fetchall()
    from labfleet.analysis.noise import samples_from_runs

    return {hw: floor.sd for hw, floor in noise_floors(samples_from_runs(run_record(r) for r in rows)).items()}


def llm_view(ledger: Ledger, session_id: int) -> dict[str, Any]:
    """The LLM researcher's calls: how many, tokens and dollars (recorded as ``llm_call`` events)."""
    row = ledger.db.execute(
        "SELECT COUNT(*) AS calls, SUM(json_extract(data, '$.ok') = 0) AS failed,"
        " COALESCE(SUM(json_extract(data, '$.input_tokens')), 0) AS input_tokens,"
        " COALESCE(SUM(json_extract(data, '$.output_tokens')), 0) AS output_tokens,"
        " COALESCE(SUM(json_extract(data, '$.usd')), 0.0) AS usd"
        " FROM events WHERE session_id = ? AND kind = 'llm_call'", (session_id,),
    ).fetchone()
    return {"calls": row["calls"], "failed": row["failed"] or 0, "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"], "usd": round(row["usd"], 6)}


def results_view(ledger: Ledger, session_id: int | None = None, last: int | None = 50) -> list[dict[str, Any]]:
    """One row per experiment with its latest run; the ``last`` most recent (None: all)."""
    session = _session(ledger, session_id)
    limit = -1 if last is None else last
    rows = ledger.db.execute(
        """SELECT * FROM (
             SELECT e.id, e.parent_id, e.commit_sha, e.description, e.hypothesis, e.decision, e.metric,
                    e.knobs, e.tags, e.seed, e.budget_seconds,
                    r.id AS run_id, r.status, r.worker, r.hardware, r.metric AS run_metric, r.figures,
                    r.reason, r.started_at, r.ended_at, r.attempt, r.log_path
             FROM experiments e
             LEFT JOIN runs r ON r.id = (SELECT MAX(id) FROM runs WHERE experiment_id = e.id)
             WHERE e.session_id = ? ORDER BY e.id DESC LIMIT ?)
           ORDER BY id""",
        (session["id"], limit),
    ).fetchall()
    noise = noise_view(ledger, session["id"])
    counts = {  # done runs per experiment and class: the n behind each mean
        (c["experiment_id"], c["hardware"]): c["n"] for c in ledger.db.execute(
            "SELECT experiment_id, hardware, COUNT(*) AS n FROM runs WHERE session_id = ? AND status = 'done'"
            " GROUP BY experiment_id, hardware", (session["id"],))
    }
    out = []
    for r in rows:
        n = counts.get((r["id"], r["hardware"]), 0)
        sd = noise.get(r["hardware"] or "")
        metric = r["metric"] if r["metric"] is not None else r["run_metric"]
        out.append({
            "experiment": r["id"], "parent": r["parent_id"], "commit": r["commit_sha"][:10],
            "decision": r["decision"], "status": r["status"], "metric": metric, "run_metric": r["run_metric"],
            "runs_done": n, "uncertainty": round(sd / n**0.5, 6) if sd is not None and n else None,
            "description": r["description"], "hypothesis": r["hypothesis"], "knobs": json.loads(r["knobs"]),
            "tags": json.loads(r["tags"]), "seed": r["seed"], "budget_seconds": r["budget_seconds"],
            "run": r["run_id"], "attempt": r["attempt"], "worker": r["worker"], "hardware": r["hardware"],
            "reason": r["reason"], "figures": json.loads(r["figures"]) if r["figures"] else {},
            "started_at": r["started_at"], "ended_at": r["ended_at"], "log_path": r["log_path"],
        })
    return out


def best_view(ledger: Ledger, repo: Path, session_id: int | None = None) -> dict[str, Any]:
    session = _session(ledger, session_id)
    sid = session["id"]
    rows = ledger.db.execute(
        "SELECT * FROM experiments WHERE session_id = ? AND decision IN ('baseline', 'kept')"
        " ORDER BY decided_at, id",
        (sid,),
    ).fetchall()
    if not rows:
        raise LabfleetError(f"session {sid} has no result yet (the baseline has not finished)")
    from labfleet import workspace  # git only for the diff

    baseline, best = rows[0], rows[-1]
    diff = workspace.diff(repo, baseline["commit_sha"], best["commit_sha"]) if best is not baseline else ""
    return {
        "session": sid,
        "experiment": best["id"],
        "description": best["description"],
        "metric": best["metric"],
        "baseline_metric": baseline["metric"],
        "improvement": None if best["metric"] is None else round(best["metric"] - baseline["metric"], 6),
        "commit": best["commit_sha"],
        "branch": session["branch"],
        "keeps": len(rows) - 1,
        "knobs": json.loads(best["knobs"]),
        "diff": diff,
    }


def results_tsv(ledger: Ledger, metric: str, session_id: int | None = None) -> str:
    """autoresearch's results.tsv: commit, metric, memory_gb, status (keep/discard/crash), description."""
    header = "\t".join(c.format(metric=metric) for c in TSV_COLUMNS)
    lines = [header]
    for row in results_view(ledger, session_id, last=None):
        if row["status"] in ("queued", "running"):
            continue
        kept = row["decision"] in ("kept", "baseline")
        ok = row["status"] == "done"
        memory_mb = row["figures"].get("peak_memory_mb", row["figures"].get("peak_vram_mb", 0.0))
        memory_gb = float(memory_mb) / 1024 if ok and isinstance(memory_mb, int | float) else 0.0
        value = row["metric"] if ok and row["metric"] is not None else 0.0
        status = "keep" if kept else ("discard" if ok else "crash")
        description = " ".join(row["description"].split())  # one line, no tabs
        lines.append(f"{(row['commit'] or '0000000')[:7]}\t{value:.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n"
