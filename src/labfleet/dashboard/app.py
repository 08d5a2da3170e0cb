"""The dashboard's web app: a read-only JSON API over the ledger, the page, and a change stream.

Every request (and every tick of the change stream) opens its own read-only SQLite
connection: the session writes from another process in WAL mode, so a fresh
connection always sees its latest commit and never blocks it. The numbers come
from the same functions as the CLI (``labfleet.views``) and the report
(``labfleet.analysis.report``), so the page, ``labfleet status`` and the report
agree.

Security: loopback by default; any other address needs a token, and with a token
every request (page, static files, API, stream) must carry it (``?token=`` or
``Authorization: Bearer``). Without a token, requests must name a loopback host
(a DNS-rebinding page cannot read the dashboard). Only GET routes exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from labfleet.analysis import report
from labfleet.analysis.cost import worker_costs
from labfleet.dashboard import TOKEN_ENV
from labfleet.errors import LabfleetError, NoLedger
from labfleet.ledger import LEDGER_FILE, Ledger
from labfleet.target import STATE_DIR
from labfleet.views import results_view, status_view

STATIC = Path(__file__).resolve().parent / "static"
POLL_SECONDS = 0.5  # how often the change stream looks at the ledger
KEEPALIVE_SECONDS = 15.0  # a comment line, so proxies and browsers keep an idle stream open
STREAM_SECONDS = 600.0  # a stream ends after this; EventSource reconnects by itself (no stuck shutdowns)
LATEST_RUNS = 20  # the latest runs whose statuses go into the change fingerprint
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# session config keys the page may show (the config never holds keys, but show only what helps)
CONFIG_KEYS = ("workers", "budget_seconds", "keep", "executor", "price", "max_experiments", "hours", "patience")


# --------------------------------------------------------------------------- reading the ledger


class ReadOnlyLedger(Ledger):
    """A ``Ledger`` over a ``mode=ro`` connection: the dashboard cannot write, even by mistake."""

    def __init__(self, path: Path) -> None:  # no super().__init__: that creates tables and migrates
        self.path = Path(path)
        self.clock = time.time
        if not self.path.is_file():
            raise NoLedger(f"no ledger at {self.path} yet: start a session with `labfleet run`")
        self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10,
                                  isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA query_only=ON")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the dashboard to this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (the page formats null as n/a)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [clean(v) for v in value]
    return value


class Dashboard:
    """What the routes read: one target folder's ledger and its metric's name and direction."""

    def __init__(self, target_dir: Path) -> None:
        self.root = Path(target_dir).resolve()
        self.state_dir = self.root / STATE_DIR
        self.ledger_path = self.state_dir / LEDGER_FILE
        self.metric, self.direction, self.groups, self.name = "metric", "minimize", {}, self.root.name
        try:
            from labfleet.target import load_target

            target = load_target(self.root, check_files=False)
            self.metric, self.direction, self.name = target.spec.metric, target.spec.direction, target.spec.name
            self.groups = {name: knob.group for name, knob in target.knobs.items() if knob.group}
        except LabfleetError:
            pass  # a copied ledger without labfleet.toml still shows, with generic names

    @contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """A fresh read-only connection, closed after the request."""
        ledger = ReadOnlyLedger(self.ledger_path)
        try:
            if ledger.session() is None:
                raise NoLedger("the ledger has no session yet: start one with `labfleet run`")
            yield ledger
        finally:
            ledger.close()

    def data(self, ledger: Ledger) -> report.ReportData:
        return report.load(ledger, None, self.metric, self.direction, self.groups)

    # ----------------------------------------------------------------- the change fingerprint

    def fingerprint(self) -> dict[str, Any]:
        """The ledger's latest ids and a hash of what changes without a new id (statuses, decisions)."""
        try:
            ledger = ReadOnlyLedger(self.ledger_path)
        except NoLedger:
            return {"event": None, "run": None, "experiment": None, "running": 0, "hash": "none"}
        try:
            db = ledger.db
            one = lambda sql, *args: db.execute(sql, args).fetchone()[0]  # noqa: E731
            session = db.execute("SELECT id, status, updated_at FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
            sid = session["id"] if session else -1
            active = db.execute("SELECT id, status FROM runs WHERE session_id = ? AND status IN ('queued', 'running')"
                                " ORDER BY id", (sid,)).fetchall()
            pending = db.execute("SELECT id FROM experiments WHERE session_id = ? AND decision = 'pending'"
                                 " ORDER BY id", (sid,)).fetchall()
            latest = db.execute("SELECT id, status, metric, ended_at FROM runs ORDER BY id DESC LIMIT ?",
                                (LATEST_RUNS,)).fetchall()
            ids = {"event": one("SELECT MAX(id) FROM events"), "run": one("SELECT MAX(id) FROM runs"),
                   "experiment": one("SELECT MAX(id) FROM experiments"),
                   "running": sum(1 for r in active if r["status"] == "running")}
            parts = [tuple(session) if session else None, [tuple(r) for r in active], [r[0] for r in pending],
                     [tuple(r) for r in latest], ids]
        except sqlite3.Error as exc:  # e.g. a ledger mid-creation: report it as a change later
            return {"event": None, "run": None, "experiment": None, "running": 0, "hash": f"error:{exc}"}
        finally:
            ledger.close()
        digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
        return {**ids, "hash": digest}

    # ----------------------------------------------------------------- the views

    def status(self) -> dict[str, Any]:
        try:
            with self.ledger() as ledger:
                view = status_view(ledger, self.state_dir)
                data = self.data(ledger)
                head = report.headline(ledger, data)
                sid = view["session"]
                running = ledger.db.execute(
                    "SELECT COUNT(DISTINCT experiment_id) FROM runs WHERE session_id = ? AND status = 'running'",
                    (sid,)).fetchone()[0]
                queued = ledger.db.execute(
                    "SELECT COUNT(*) FROM experiments e WHERE e.session_id = ? AND e.decision = 'pending' AND NOT"
                    " EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.id AND r.status = 'running')",
                    (sid,)).fetchone()[0]
        except NoLedger as exc:
            return {"session": None, "message": str(exc), "target": self.name, "metric": self.metric,
                    "direction": self.direction, "now": time.time()}
        decisions = view["decisions"]
        return clean({
            "session": sid, "state": view["state"], "target": self.name, "researcher": view["researcher"],
            "branch": view["branch"], "metric": self.metric, "direction": self.direction,
            "config": {k: view["config"][k] for k in CONFIG_KEYS if view["config"].get(k) is not None},
            "elapsed_seconds": view["elapsed_seconds"], "started_at": data.start, "now": time.time(),
            "best": view["best"], "baseline_metric": view["baseline_metric"], "gain": head.gain,
            "gain_se": head.gain_se,
            "experiments": {
                "total": view["experiments"], "decided": head.done + head.failed, "done": head.done,
                "kept": decisions.get("kept", 0), "discarded": decisions.get("discarded", 0),
                "failed": head.failed, "pending": head.pending, "running": running, "queued": queued,
            },
            "decisions": decisions, "runs": view["runs"], "finished_runs": view["finished_runs"],
            "per_hour": head.per_hour, "utilization": head.utilization, "workers": len(report.worker_rows(data)),
            "cost_usd": view["cost_usd"], "priced": head.priced, "llm": view["llm"],
            "phase": data.progress.current, "diminishing": data.progress.diminishing,
            "since_keep": data.progress.since_keep, "noise": view["noise"], "running": view["running"],
        })

    def progress(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            data = self.data(ledger)
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
        })

    def timeline(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            data = self.data(ledger)
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

    def experiments(self, last: int | None) -> dict[str, Any]:
        with self.ledger() as ledger:
            rows = results_view(ledger, None, last=last)
            sid = ledger.session()["id"]
            roles: dict[int, list[str]] = {}
            for r in ledger.db.execute("SELECT experiment_id, role FROM runs WHERE session_id = ? ORDER BY id",
                                       (sid,)):
                have = roles.setdefault(r["experiment_id"], [])
                if r["role"] not in have:
                    have.append(r["role"])
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

    def experiment(self, exp_id: int) -> dict[str, Any]:
        from labfleet.agents import AgentError, show

        with self.ledger() as ledger:
            try:
                detail = show(ledger, exp_id)
            except AgentError as exc:
                raise HTTPException(404, str(exc)) from None
        detail["wave"] = detail["tags"].get("wave", "")
        return clean(detail)

    def analysis(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            data = self.data(ledger)
            head = report.headline(ledger, data)
            costs = worker_costs(ledger, data.sid, time.time())
            cost_lines = report.cost_findings(ledger, data, head)
        bars, effect_lines, note = report.session_effects(data)
        return clean({
            "metric": self.metric, "direction": self.direction,
            "hardware": data.hardware.to_json(),
            "noise": [{**floor.to_json()} for _, floor in sorted(data.noise.items())],
            "noise_findings": report.noise_findings(data),
            "effects": {
                "bars": [{**vars(b), "significant": b.significant} for b in bars],
                "findings": effect_lines, "note": note,
            },
            "phases": data.progress.to_json(),
            "cost": {"usd": head.usd, "priced": head.priced, "findings": cost_lines,
                     "workers": [{"worker": c.worker, "hardware": c.hardware, "price_per_hour": c.price_per_hour,
                                  "busy_seconds": c.busy_seconds, "usd": c.usd} for c in costs]},
        })


def _role(parent: int | None, roles: list[str]) -> str:
    """One word for the table: how far the experiment went (validated, confirmed, or its first run's role)."""
    if parent is None:
        return "baseline"
    for role in ("validate", "confirm"):
        if role in roles:
            return role
    return roles[0] if roles else ""


# --------------------------------------------------------------------------- the token and host guard


class Guard:
    """ASGI middleware: with a token, every request carries it; without one, the Host must be loopback.

    Pure ASGI (not BaseHTTPMiddleware) so the event stream is passed through untouched.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
            if not is_loopback(name):
                await _deny(send, 403, "this dashboard answers only to localhost; use --token to serve others")
                return
        elif not self._carries_token(scope, headers):
            await _deny(send, 401, "a token is required: add ?token=... or an Authorization: Bearer header")
            return
        await self.app(scope, receive, send)

    def _carries_token(self, scope: Scope, headers: Mapping[str, str]) -> bool:
        assert self.token is not None
        given = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given.append(auth[7:].strip())
        given += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        return any(hmac.compare_digest(g.encode("utf-8", "replace"), self.token) for g in given)


async def _deny(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """No external requests, no framing, no referrer (the token can be in the URL), no caching of data."""

    CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
           " frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", self.CSP.encode()), (b"referrer-policy", b"no-referrer"),
                         (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"cache-control", b"no-store")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- the app


def create_app(target_dir: Path, token: str | None) -> FastAPI:
    """The dashboard for the target in ``target_dir``; with ``token``, every request must carry it."""
    board = Dashboard(Path(target_dir))
    app = FastAPI(title="labfleet dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    # set when the server is asked to stop: open event streams end, so shutdown does not wait on them
    stopping = app.state.stopping = threading.Event()
    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        """The page; its own links to the static files carry the token it was opened with."""
        given = request.query_params.get("token", "")
        suffix = html.escape("?token=" + quote(given, safe=""), quote=True) if token and given else ""
        return HTMLResponse(index_html.replace("{{qs}}", suffix).replace("{{title}}", html.escape(board.name)))

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return board.status()

    @app.get("/api/progress")
    def api_progress() -> dict[str, Any]:
        return board.progress()

    @app.get("/api/timeline")
    def api_timeline() -> dict[str, Any]:
        return board.timeline()

    @app.get("/api/experiments")
    def api_experiments(last: int | None = None) -> dict[str, Any]:
        return board.experiments(last if last is None or last > 0 else None)

    @app.get("/api/experiments/{exp_id}")
    def api_experiment(exp_id: int) -> dict[str, Any]:
        return board.experiment(exp_id)

    @app.get("/api/analysis")
    def api_analysis() -> dict[str, Any]:
        return board.analysis()

    @app.get("/api/stream")
    async def api_stream(request: Request) -> StreamingResponse:
        """Server-sent events: ``hello`` on connect, then ``changed`` whenever the ledger changed."""

        async def events() -> AsyncIterator[str]:
            last = await asyncio.to_thread(board.fingerprint)
            yield f"retry: 1000\nevent: hello\ndata: {json.dumps(last)}\n\n"
            started = sent = time.monotonic()
            while time.monotonic() - started < STREAM_SECONDS and not stopping.is_set():
                await asyncio.sleep(POLL_SECONDS)
                if stopping.is_set() or await request.is_disconnected():
                    return
                now = await asyncio.to_thread(board.fingerprint)
                if now != last:
                    last, sent = now, time.monotonic()
                    yield f"event: changed\ndata: {json.dumps(now)}\n\n"
                elif time.monotonic() - sent > KEEPALIVE_SECONDS:
                    sent = time.monotonic()
                    yield ": keep-alive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    @app.exception_handler(NoLedger)
    async def no_ledger(request: Request, exc: NoLedger) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Guard, token=token)  # added last: runs first
    return app


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the ledger beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise LabfleetError(f"refusing to serve the dashboard on {host} without a token: pass --token or set"
                            f" {TOKEN_ENV} (or bind 127.0.0.1)")


def serve(target_dir: Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Run the dashboard until Ctrl-C (``token`` falls back to $LABFLEET_DASHBOARD_TOKEN)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)
    root = Path(target_dir).resolve()
    if not (root / "labfleet.toml").is_file() and not (root / STATE_DIR / LEDGER_FILE).is_file():
        raise LabfleetError(f"no labfleet target in {root} (no labfleet.toml, no {STATE_DIR}/{LEDGER_FILE})")
    import uvicorn

    app = create_app(root, token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.stopping.set()  # end the open event streams first
            super().handle_exit(sig, frame)

    shown = f"[{host}]" if ":" in host else host
    hint = " (add ?token=YOUR_TOKEN)" if token else ""
    print(f"labfleet dashboard for {root} on http://{shown}:{port}/{hint}  (Ctrl-C stops it)", file=sys.stderr)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="none", timeout_graceful_shutdown=3)
    Server(config).run()
