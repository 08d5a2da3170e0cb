"""The dashboard's web app: a read-only JSON API over the ledger, the page, and a change stream.

Every request (and every tick of the change stream) opens its own read-only SQLite
connection: the session writes from another process in WAL mode, so a fresh
connection always sees its latest commit and never blocks it. The numbers come
from the same functions as the CLI (``labfleet.views``) and the report
(``labfleet.dashboard.document``, over ``labfleet.analysis``), so the page,
``labfleet status`` and ``labfleet report`` agree; the report is this page, static.

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
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import ASGIApp, Receive, Scope, Send

from labfleet import ledger as ledgers
from labfleet.dashboard import TOKEN_ENV
from labfleet.dashboard.document import STATIC, Views
from labfleet.errors import LabfleetError, LedgerError, NoLedger
from labfleet.ledger import LEDGER_FILE, Ledger
from labfleet.target import STATE_DIR

POLL_SECONDS = 0.5  # how often the change stream looks at the ledger
KEEPALIVE_SECONDS = 15.0  # a comment line, so proxies and browsers keep an idle stream open
STREAM_SECONDS = 600.0  # a stream ends after this; EventSource reconnects by itself (no stuck shutdowns)
LATEST_RUNS = 20  # the latest runs whose statuses go into the change fingerprint
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


# --------------------------------------------------------------------------- reading the ledger


def read_only(path: Path) -> Ledger:
    """The ledger over a ``mode=ro`` connection: the dashboard cannot write, even by mistake."""
    if not path.is_file():
        raise NoLedger(f"no ledger at {path} yet: start a session with `labfleet run`")
    return ledgers.open(path, readonly=True)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the dashboard to this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Dashboard:
    """What the routes read: one target folder's ledger and its metric's name and direction."""

    def __init__(self, target_dir: Path) -> None:
        self.root = Path(target_dir).resolve()
        self.state_dir = self.root / STATE_DIR
        self.ledger_path = self.state_dir / LEDGER_FILE
        self.views = Views(name=self.root.name)
        try:
            from labfleet.target import load_target

            target = load_target(self.root, check_files=False)
            groups = {name: knob.group for name, knob in target.knobs.items() if knob.group}
            self.views = Views(target.spec.metric, target.spec.direction, groups, target.spec.name)
        except LabfleetError:
            pass  # a copied ledger without labfleet.toml still shows, with generic names
        self.metric, self.direction, self.name = self.views.metric, self.views.direction, self.views.name

    @contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """A fresh read-only connection, closed after the request."""
        ledger = read_only(self.ledger_path)
        try:
            if ledger.session() is None:
                raise NoLedger("the ledger has no session yet: start one with `labfleet run`")
            yield ledger
        finally:
            ledger.close()

    # ----------------------------------------------------------------- the change fingerprint

    def fingerprint(self) -> dict[str, Any]:
        """The ledger's latest ids and a hash of what changes without a new id (statuses, decisions)."""
        try:
            ledger = read_only(self.ledger_path)
        except NoLedger:
            return {"event": None, "run": None, "experiment": None, "running": 0, "hash": "none"}
        try:
            ids, parts = ledger.fingerprint(LATEST_RUNS)
        except LedgerError as exc:  # e.g. a ledger mid-creation: report it as a change later
            return {"event": None, "run": None, "experiment": None, "running": 0, "hash": f"error:{exc}"}
        finally:
            ledger.close()
        digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
        return {**ids, "hash": digest}

    # ----------------------------------------------------------------- the views (labfleet.dashboard.document)

    def status(self) -> dict[str, Any]:
        try:
            with self.ledger() as ledger:
                return self.views.status(ledger, self.state_dir)
        except NoLedger as exc:
            return {"session": None, "message": str(exc), "target": self.name, "metric": self.metric,
                    "direction": self.direction, "now": time.time()}

    def progress(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            return self.views.progress(ledger)

    def timeline(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            return self.views.timeline(ledger)

    def experiments(self, last: int | None) -> dict[str, Any]:
        with self.ledger() as ledger:
            return self.views.experiments(ledger, None, last)

    def experiment(self, exp_id: int) -> dict[str, Any]:
        from labfleet.agents import AgentError, show
        from labfleet.dashboard.document import clean

        with self.ledger() as ledger:
            try:
                detail = show(ledger, exp_id)
            except AgentError as exc:
                raise HTTPException(404, str(exc)) from None
        detail["wave"] = detail["tags"].get("wave", "")
        return clean(detail)

    def analysis(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            return self.views.analysis(ledger)


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
    async def api_stream(request: Request) -> EventSourceResponse:
        """Server-sent events: ``hello`` on connect, then ``changed`` whenever the ledger changed."""

        async def events() -> AsyncIterator[ServerSentEvent]:
            last = await asyncio.to_thread(board.fingerprint)
            yield ServerSentEvent(json.dumps(last), event="hello", retry=1000)
            started = time.monotonic()
            while time.monotonic() - started < STREAM_SECONDS and not stopping.is_set():
                await asyncio.sleep(POLL_SECONDS)
                if stopping.is_set() or await request.is_disconnected():
                    return
                now = await asyncio.to_thread(board.fingerprint)
                if now != last:
                    last = now
                    yield ServerSentEvent(json.dumps(now), event="changed")

        # the library sends the keep-alive comments and ends the stream when the client goes
        return EventSourceResponse(events(), ping=int(KEEPALIVE_SECONDS), headers={"X-Accel-Buffering": "no"})

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
