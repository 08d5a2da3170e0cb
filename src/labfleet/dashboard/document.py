"""The page's data: one JSON document per session, built from the ledger's views and the analysis.

The dashboard serves its parts (``/api/status``, ``/api/progress``, ``/api/timeline``,
``/api/experiments``, ``/api/analysis``) and refetches them when the ledger changes;
``labfleet report`` inlines the whole document, the page and the chart library into one
static HTML file (``static_page``). Either way ``static/app.js`` draws it: colours,
time units and number formats live there only. Numbers here are raw (seconds, metric
values); sentences (findings) come from the analysis modules. No FastAPI here, so the
report does not need a web server.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labfleet.analysis import report
from labfleet.ledger import Ledger
from labfleet.records import RunStatus
from labfleet.views import results_view, status_view

STATIC = Path(__file__).resolve().parent / "static"
LIBRARY = STATIC / "vendor" / "echarts.min.js"
# session config keys the page may show (the config never holds keys, but show only what helps)
DATA_OPEN = '<script id="labfleet-data" type="application/json">'
CONFIG_KEYS = ("workers", "budget_seconds", "keep", "executor", "price", "max_experiments", "hours", "patience")


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (the page formats null as n/a)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [clean(v) for v in value]
    return value


def _role(parent: int | None, roles: list[str]) -> str:
    """One word for the table: how far the experiment went (validated, confirmed, or its first run's role)."""
    if parent is None:
        return "baseline"
    for role in ("validate", "confirm"):
        if role in roles:
            return role
    return roles[0] if roles else ""


class Views:
    """The document's parts for one target's metric (its name, direction and knob groups)."""

    def __init__(self, metric: str = "metric", direction: str = "minimize", groups: Mapping[str, str] | None = None,
                 name: str = "") -> None:
        self.metric, self.direction, self.groups, self.name = metric, direction, dict(groups or {}), name
        self._held: report.ReportData | None = None  # while document() builds every part from one read

    def data(self, ledger: Ledger, sid: int | None = None) -> report.ReportData:
        if self._held is not None and sid in (None, self._held.sid):
            return self._held
        return report.load(ledger, sid, self.metric, self.direction, self.groups)

    def status(self, ledger: Ledger, state_dir: Path | None, sid: int | None = None) -> dict[str, Any]:
        data = self.data(ledger, sid)
        view = status_view(ledger, state_dir or ledger.path.parent, data.sid)
        head = report.headline(data)
        running_exps = {r.experiment_id for r in data.runs if r.status == RunStatus.RUNNING}
        queued = sum(1 for e in data.experiments.values()
                     if str(e.decision) == "pending" and e.id not in running_exps)
        decisions = view["decisions"]
        return clean({
            "session": data.sid, "state": view["state"], "target": self.name or view["target"],
            "researcher": view["researcher"], "branch": view["branch"], "metric": self.metric,
            "direction": self.direction,
            "config": {k: view["config"][k] for k in CONFIG_KEYS if view["config"].get(k) is not None},
            "elapsed_seconds": view["elapsed_seconds"], "started_at": data.start, "now": time.time(),
            "best": view["best"], "baseline_metric": view["baseline_metric"], "gain": head.gain,
            "gain_se": head.gain_se,
            "experiments": {
                "total": view["experiments"], "decided": head.done + head.failed, "done": head.done,
                "kept": decisions.get("kept", 0), "discarded": decisions.get("discarded", 0),
                "failed": head.failed, "pending": head.pending, "running": len(running_exps), "queued": queued,
            },
            "decisions": decisions, "runs": view["runs"], "finished_runs": view["finished_runs"],
            "per_hour": head.per_hour, "utilization": head.utilization, "workers": len(report.worker_rows(data)),
            "cost_usd": view["cost_usd"], "priced": head.priced, "llm": view["llm"],
            "phase": data.progress.current, "diminishing": data.progress.diminishing,
            "since_keep": data.progress.since_keep, "noise": view["noise"], "running": view["running"],
            "surrogate": head.surrogate,
            # said loudly at the top of the page: these results were measured without the run box
            "alarm": f"WARNING: {head.unboxed}. See `labfleet doctor`." if head.unboxed else "",
        })

    def progress(self, ledger: Ledger, sid: int | None = None) -> dict[str, Any]:
        data = self.data(ledger, sid)
        xs = {p.experiment: i for i, p in enumerate(data.points)}
        best_x, best_y = report.running_best_steps(data, xs)
        points = []
        for i, p in enumerate(data.points):
            exp = data.experiments.get(p.experiment)
            decision = "baseline" if exp is not None and exp.parent_id is None else str(exp.decision if exp else "")
            points.append({"x": i, "experiment": p.experiment, "at": p.at, "metric": p.metric, "kept": p.kept,
                           "decision": decision, "group": p.group,
                           "description": exp.description if exp else ""})
        phases = [{**vars(ph), "x0": xs[ph.first] - 0.5, "x1": xs[ph.last] + 0.5}
                  for ph in data.progress.phases if ph.first in xs and ph.last in xs]
        base, best = data.baseline, data.best
        return clean({
            "metric": self.metric, "direction": self.direction, "points": points,
            "best": [{"x": x, "metric": y} for x, y in zip(best_x, best_y, strict=True)],
            "phases": phases, "baseline_metric": base.metric if base else None,
            "best_metric": best.metric if best else None, "current": data.progress.current,
            "findings": data.progress.findings, "keeps": report.keeps_rows(data),
        })

    def timeline(self, ledger: Ledger, sid: int | None = None) -> dict[str, Any]:
        data = self.data(ledger, sid)
        rows: dict[str, list[dict[str, Any]]] = {w: [] for w, _ in report.worker_rows(data)}
        for run in data.runs:
            if run.started_at is None or not run.worker:
                continue
            exp = data.experiments.get(run.experiment_id)
            rows.setdefault(run.worker, []).append({
                "run": run.id, "experiment": run.experiment_id, "start": run.started_at, "end": run.ended_at,
                "status": str(run.status), "outcome": report.run_outcome(run, exp), "role": run.role,
                "metric": run.metric, "description": exp.description if exp else "",
            })
        hardware = dict(report.worker_rows(data))
        return clean({
            "start": data.start, "end": data.end, "now": time.time(),
            "running": any(r["end"] is None for runs in rows.values() for r in runs),
            "utilization": report.utilization(data), "busy_seconds": report.busy_seconds(data),
            "workers": [{"worker": w, "hardware": hardware.get(w, "?"), "runs": rows[w]} for w in rows],
        })

    def experiments(self, ledger: Ledger, sid: int | None = None, last: int | None = None) -> dict[str, Any]:
        rows = results_view(ledger, sid, last=last)
        roles: dict[int, list[str]] = {}
        for run in self.data(ledger, sid).runs:  # ordered by id
            have = roles.setdefault(run.experiment_id, [])
            if run.role not in have:
                have.append(run.role)
        out = []
        for row in rows:
            exp_roles = roles.get(row["experiment"], [])
            tags = row["tags"]
            out.append({
                "id": row["experiment"], "parent": row["parent"], "status": row["status"] or "none",
                "decision": row["decision"], "role": _role(row["parent"], exp_roles),
                "roles": exp_roles, "tier": "validate" if "validate" in exp_roles else "screen",
                "wave": tags.get("wave", ""), "metric": row["metric"], "uncertainty": row["uncertainty"],
                "runs_done": row["runs_done"], "worker": row["worker"], "hardware": row["hardware"],
                "description": row["description"], "reason": row["reason"], "commit": row["commit"],
                "started_at": row["started_at"], "ended_at": row["ended_at"],
            })
        return clean({"metric": self.metric, "direction": self.direction, "experiments": out})

    def analysis(self, ledger: Ledger, sid: int | None = None) -> dict[str, Any]:
        data = self.data(ledger, sid)
        head = report.headline(data)
        costs = ledger.worker_costs(data.sid, time.time())
        spent = report.spend(data, head.priced)
        bars, effect_lines, note = report.session_effects(data)
        return clean({
            "metric": self.metric, "direction": self.direction,
            "hardware": {**data.hardware.to_json(), "same_code": report.same_code(data)},
            "noise": [{**floor.to_json()} for _, floor in sorted(data.noise.items())],
            "noise_findings": report.noise_findings(data),
            "effects": {
                "bars": [{**vars(b), "significant": b.significant} for b in bars],
                "findings": effect_lines, "note": note,
            },
            "phases": data.progress.to_json(),
            "cost": {"usd": head.usd, "priced": head.priced, "findings": report.cost_findings(data, head),
                     "start": data.start, "end": data.end,
                     "spend": [{"at": t, "total": c} for t, c in spent],
                     "best": [{"spend": c, "metric": m} for c, m in report.best_per_spend(data, spent)],
                     "workers": [{"worker": c.worker, "hardware": c.hardware, "price_per_hour": c.price_per_hour,
                                  "busy_seconds": c.busy_seconds, "usd": c.usd} for c in costs]},
        })

    def document(self, ledger: Ledger, sid: int | None, *, title: str = "", holdout: list[str] | None = None,
                 state_dir: Path | None = None) -> dict[str, Any]:
        """Every part for one session, as ``labfleet report`` inlines it (``report``: what only the file has)."""
        self._held = self.data(ledger, sid)
        sid = self._held.sid
        try:
            status = self.status(ledger, state_dir, sid)
            return {
                "status": status, "progress": self.progress(ledger, sid), "timeline": self.timeline(ledger, sid),
                "experiments": self.experiments(ledger, sid)["experiments"], "analysis": self.analysis(ledger, sid),
                "report": {"title": title or f"{status['target']}: session {sid}", "holdout": holdout or [],
                           "built_at": time.time()},
            }
        finally:
            self._held = None


def static_page(doc: Mapping[str, Any]) -> str:
    """The dashboard's page with its style, the chart library, ``app.js`` and ``doc`` inlined: one file."""
    import html

    title = html.escape(str(doc["report"]["title"]))
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{title}}", title)
    data = json.dumps(clean(doc), separators=(",", ":"), allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # never ends the block
    style = (STATIC / "style.css").read_text(encoding="utf-8")
    inline = {
        '<link rel="stylesheet" href="static/style.css{{qs}}">': f"<style>\n{style}</style>",
        '<script src="static/vendor/echarts.min.js{{qs}}"></script>':
            f"{DATA_OPEN}{data}</script>\n"
            f"<script>\n{_script(LIBRARY)}</script>",
        '<script src="static/app.js{{qs}}"></script>': f"<script>\n{_script(STATIC / 'app.js')}</script>",
    }
    for tag, body in inline.items():
        assert tag in page, f"index.html lost {tag}"
        page = page.replace(tag, body)
    return page


def inlined(page: str) -> dict[str, Any]:
    """The document a static report carries (the inverse of ``static_page``'s data block)."""
    start = page.index(DATA_OPEN) + len(DATA_OPEN)
    return json.loads(page[start:page.index("</script>", start)])


def _script(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text.replace("</script", "<\\/script")  # cannot occur in JS outside strings; harmless inside them
