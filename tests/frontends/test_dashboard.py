"""The dashboard against a real ledger: API numbers, security, the live stream, and a real browser.

One short real session (2 workers, 1 s budgets) builds the ledger every test reads;
the stream and browser tests write to it from another process, the way a running
session does, and check that the change reaches the client without a reload.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
import httpx2 as httpx  # noqa: E402  (starlette's TestClient uses it too)
from fastapi.testclient import TestClient  # noqa: E402

from labfleet.dashboard import browser as browser_module  # noqa: E402
from labfleet.dashboard.app import check_bind, create_app  # noqa: E402
from labfleet.ledger import Ledger  # noqa: E402
from labfleet.records import Proposal  # noqa: E402
from labfleet.views import results_view, status_view  # noqa: E402
from tests.conftest import Scripted, lab, run_session  # noqa: E402

LOCAL = "http://127.0.0.1"  # the app answers only to loopback Host headers without a token
SCREENSHOT = Path(os.environ.get("LABFLEET_DASHBOARD_SCREENSHOT", "/tmp/dashboard.png"))

# Adds one decided experiment (and an event) the way a session in another process would.
WRITER = """
import sys
from labfleet.ledger import Ledger
from labfleet.records import Decision, RunStatus
ledger = Ledger(sys.argv[1])
sid = ledger.session()["id"]
base = ledger.baseline(sid)
exp, run = ledger.add_experiment(sid, parent_id=base.id, commit=base.commit, patch="", description=sys.argv[2],
                                 hypothesis="written by another process", knobs=dict(base.knobs), tags={},
                                 seed=7, budget_seconds=1.0)
ledger.mark_running(run, worker="local-0", hardware="cpu", run_dir="", log_path="")
if sys.argv[3:] != ["running"]:
    ledger.finish_run(run, RunStatus.DONE, metric=2.5)
    ledger.decide(exp, Decision.DISCARDED, 2.5)
ledger.event(sid, "note", by="test_dashboard")
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A target with a finished real session: keeps, discards, a small wave, repeats."""
    tmp = tmp_path_factory.mktemp("dashboard")
    proposals = [Proposal("lr up", knobs={"LEARNING_RATE": 3e-3}, hypothesis="the default step is too timid"),
                 Proposal("lr best", knobs={"LEARNING_RATE": 1e-2})]
    proposals += [Proposal(f"wave 1 cell {i}", knobs={"LEARNING_RATE": lr, "N_LAYER": n}, tags={"wave": "1"})
                  for i, (lr, n) in enumerate([(5e-3, 1), (5e-3, 3), (2e-2, 1), (2e-2, 3)])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABFLEET_CACHE", str(tmp / "cache"))
        target = lab(tmp)
        ledger, _ = run_session(target, Scripted(proposals), workers=2, max_experiments=10)
        ledger.close()
    return target


@pytest.fixture
def own(folder: Path, tmp_path: Path) -> Path:
    """A copy of the target for a test that writes to its ledger."""
    return Path(shutil.copytree(folder, tmp_path / "own"))


@pytest.fixture
def client(folder: Path) -> TestClient:
    return TestClient(create_app(folder, None), base_url=LOCAL)


def ledger_of(folder: Path) -> Ledger:
    return Ledger.for_target(folder / ".labfleet")


def write_from_another_process(folder: Path, description: str, *extra: str) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(folder / ".labfleet" / "ledger.sqlite"), description, *extra],
                   check=True, timeout=30, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})


def counts(folder: Path) -> tuple[int, ...]:
    ledger = ledger_of(folder)
    try:
        return tuple(ledger.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("sessions", "experiments", "runs", "events", "workers"))
    finally:
        ledger.close()


# --------------------------------------------------------------------------- the API


def test_status_matches_the_cli_view(client: TestClient, folder: Path) -> None:
    ledger = ledger_of(folder)
    view = status_view(ledger, folder / ".labfleet")
    ledger.close()
    got = client.get("/api/status").json()
    assert got["session"] == view["session"] and got["state"] == view["state"] == "finished"
    assert got["metric"] == "val_bpb" and got["direction"] == "minimize"
    assert got["best"]["metric"] == pytest.approx(view["best"]["metric"]) == pytest.approx(1.02)
    assert got["baseline_metric"] == pytest.approx(view["baseline_metric"]) == pytest.approx(2.02)
    assert got["gain"] == pytest.approx(view["baseline_metric"] - view["best"]["metric"])
    decided = sum(n for d, n in view["decisions"].items() if d != "baseline")
    assert got["experiments"]["decided"] == decided and got["experiments"]["total"] == view["experiments"]
    assert got["experiments"]["kept"] == view["decisions"].get("kept", 0)
    assert got["experiments"]["running"] == 0 and got["experiments"]["queued"] == 0
    assert got["decisions"] == view["decisions"] and got["runs"] == view["runs"]
    assert got["cost_usd"] == pytest.approx(view["cost_usd"]) and got["llm"] == view["llm"]
    assert got["noise"] == view["noise"] and got["workers"] == 2
    assert 0 < got["utilization"] <= 1 and got["per_hour"] > 0
    assert got["phase"] == "LEARNING_RATE"
    assert "researcher_options" not in got["config"]  # only the harmless settings


def test_progress_timeline_and_experiments(client: TestClient, folder: Path) -> None:
    ledger = ledger_of(folder)
    rows = results_view(ledger, last=None)
    ledger.close()
    progress = client.get("/api/progress").json()
    decided = [r for r in rows if r["decision"] != "pending"]
    assert [p["experiment"] for p in progress["points"]][0] == 1  # the baseline first
    assert sorted(p["experiment"] for p in progress["points"]) == sorted(r["experiment"] for r in decided)
    assert [p["x"] for p in progress["points"]] == list(range(len(decided)))
    kept = {p["experiment"] for p in progress["points"] if p["kept"]}
    assert kept == {r["experiment"] for r in rows if r["decision"] in ("kept", "baseline")}
    assert progress["best"][-1]["metric"] == pytest.approx(1.02)  # the running best ends at the best
    assert progress["phases"] and progress["phases"][0]["name"] == "LEARNING_RATE"

    timeline = client.get("/api/timeline").json()
    assert [w["worker"] for w in timeline["workers"]] == ["local-0", "local-1"]
    runs = [r for w in timeline["workers"] for r in w["runs"]]
    assert len(runs) == sum(r["runs_done"] for r in rows)  # every run ran and finished
    assert all(r["end"] is not None and r["end"] >= r["start"] for r in runs)
    assert {r["role"] for r in runs} >= {"screen", "noise"}
    assert {r["outcome"] for r in runs} <= {"baseline", "kept", "discarded"}

    table = client.get("/api/experiments").json()["experiments"]
    assert [t["id"] for t in table] == [r["experiment"] for r in rows]
    for t, r in zip(table, rows, strict=True):
        assert (t["decision"], t["status"], t["worker"], t["description"]) == (
            r["decision"], r["status"], r["worker"], r["description"])
        assert t["metric"] == pytest.approx(r["metric"]) and t["uncertainty"] == r["uncertainty"]
    assert {t["wave"] for t in table} == {"", "1"}
    assert table[0]["role"] == "baseline" and {t["role"] for t in table[1:]} <= {"screen", "confirm", "validate"}
    assert len(client.get("/api/experiments", params={"last": 2}).json()["experiments"]) == 2


def test_analysis_has_hardware_noise_effects_and_phases(client: TestClient) -> None:
    a = client.get("/api/analysis").json()
    assert a["hardware"]["reference"] == "cpu" and a["hardware"]["classes"]["cpu"]["runs"] >= 7
    assert [n["hardware"] for n in a["noise"]] == ["cpu"] and a["noise_findings"]
    names = {b["name"] for b in a["effects"]["bars"]}
    assert {"LEARNING_RATE", "N_LAYER"} <= names
    assert any("N_LAYER" in line for line in a["effects"]["findings"])
    assert a["phases"]["current"] == "LEARNING_RATE" and a["phases"]["findings"]
    assert [w["worker"] for w in a["cost"]["workers"]] == ["local-0", "local-1"]


def test_detail_returns_the_diff_and_unknown_is_404(client: TestClient) -> None:
    d = client.get("/api/experiments/2").json()
    assert d["description"] == "lr up" and d["hypothesis"] == "the default step is too timid"
    assert "+LEARNING_RATE = 3e-3" in d["diff"] and "-LEARNING_RATE = 1e-3" in d["diff"]
    assert d["parent"] == 1 and len(d["commit"]) == 40
    assert d["runs"][0]["figures"]["num_steps"] == 10 and "val_bpb" in d["log_tail"]
    assert client.get("/api/experiments/9999").status_code == 404


def test_page_and_static_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text and "{{" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert client.get("/static/vendor/echarts.min.js").status_code == 200
    # no external requests from the page: no http(s) URL in our static files; the vendored library's only
    # URLs are XML namespaces and its licence's address, and its licence ships beside it
    static = Path(__file__).parents[2] / "src" / "labfleet" / "dashboard" / "static"
    for path in static.iterdir():
        if path.is_file():
            text = path.read_text()
            assert "http://" not in text and "https://" not in text, path
    vendored = (static / "vendor" / "echarts.min.js").read_text()
    assert set(re.findall(r"https?://[^\s\"')]+", vendored)) <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", "http://www.w3.org/2000/xmlns/",
        "http://www.w3.org/XML/1998/namespace", "http://www.apache.org/licenses/LICENSE-2.0",
        "https://github.com/ecomfe/zrender/blob/master/LICENSE"}
    assert "Apache License" in (static / "vendor" / "LICENSE-echarts.txt").read_text()


# --------------------------------------------------------------------------- security


def test_token_is_required_on_every_request(folder: Path) -> None:
    token = "s3cret-tok"
    client = TestClient(create_app(folder, token), base_url="http://dashboard.example:8765")
    for path in ("/", "/static/app.js", "/api/status", "/api/experiments/2", "/api/stream", "/api/nowhere"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, params={"token": "wrong"}).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401, path
    assert client.get("/api/status", params={"token": token}).json()["session"] == 1
    assert client.get("/api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    page = client.get("/", params={"token": token})
    assert page.status_code == 200 and f"static/app.js?token={token}" in page.text  # the page passes it on
    assert client.get("/static/style.css", params={"token": token}).status_code == 200


def test_without_a_token_only_loopback_hosts_are_answered(folder: Path) -> None:
    """A DNS-rebinding page (Host: evil.example) cannot read a token-less dashboard."""
    app = create_app(folder, None)
    assert TestClient(app, base_url="http://evil.example").get("/api/status").status_code == 403
    assert TestClient(app, base_url="http://localhost:8765").get("/api/status").status_code == 200


def test_only_get_exists_and_nothing_changes(client: TestClient, folder: Path) -> None:
    before = counts(folder)
    for path in ("/", "/api/status", "/api/experiments", "/api/experiments/2", "/api/stream", "/static/app.js"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert client.request(method, path, json={"decision": "kept"}).status_code == 405, (method, path)
    assert counts(folder) == before


def test_binding_beyond_loopback_needs_a_token(folder: Path) -> None:
    from labfleet.errors import LabfleetError

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "tok")
    with pytest.raises(LabfleetError, match="token"):
        check_bind("0.0.0.0", None)
    env = {k: v for k, v in os.environ.items() if k != "LABFLEET_DASHBOARD_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "labfleet.dashboard", "-C", str(folder), "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "token" in out.stderr


def test_a_target_without_a_session_waits(tmp_path: Path) -> None:
    client = TestClient(create_app(tmp_path, None), base_url=LOCAL)
    status = client.get("/api/status").json()
    assert status["session"] is None and "labfleet run" in status["message"]
    assert client.get("/api/progress").status_code == 503
    assert not (tmp_path / ".labfleet").exists()  # reading never creates a ledger


# --------------------------------------------------------------------------- the live stream


@contextmanager
def serving(folder: Path, token: str | None = None) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread; stopped at the end."""
    import uvicorn

    app = create_app(folder, token)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the dashboard server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.stopping.set()  # what serve() does on Ctrl-C: open streams end
        server.should_exit = True
        thread.join(15)


def next_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    """The next server-sent event (comments and retry lines skipped)."""
    name, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            return name, json.loads(data)
    raise AssertionError("the stream ended")


def test_stream_pushes_a_change_written_by_another_process(own: Path) -> None:
    folder = own
    with serving(folder) as base, httpx.Client(timeout=httpx.Timeout(10, read=3)) as http:
        with http.stream("GET", f"{base}/api/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            name, hello = next_event(lines)
            assert name == "hello" and hello["experiment"] is not None
            write_from_another_process(folder, "streamed")
            written = time.monotonic()
            name, changed = next_event(lines)  # a read timeout (3 s) fails the test
            assert name == "changed" and time.monotonic() - written < 3
            assert changed["experiment"] > hello["experiment"] and changed["event"] != hello["event"]


# --------------------------------------------------------------------------- a real browser


def chromium() -> str:
    """Debian's chromium; installed with apt-get (bounded) when missing and we are root, else skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=300, env=env)
            if not shutil.which("chromium"):  # a fresh machine: no package lists yet
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=120, env=env)
                subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=300,
                               env=env)
        except subprocess.TimeoutExpired:
            pass
        if path := shutil.which("chromium"):
            return path
    pytest.skip("no headless Chromium (install Debian's `chromium` package to run the browser test)")


@contextmanager
def browser(tmp_path: Path) -> Iterator[browser_module.CDP]:
    chromium()  # installs it when missing (as root), else skips
    with browser_module.browser(tmp_path / "chromium-profile", width=1400, height=900) as page:
        yield page


def test_browser_shows_a_change_from_another_process_without_reloading(own: Path, tmp_path: Path) -> None:
    folder, token = own, "browser-token"
    with serving(folder, token) as base, browser(tmp_path) as page:
        page.call("Page.navigate", url=f"{base}/?token={token}")  # the page passes the token on by itself
        before = int(page.until("/^\\d+$/.test(document.getElementById('card-decided').textContent)"
                                " && document.getElementById('live').textContent === 'live'"
                                " && document.querySelectorAll('#experiments tbody tr').length > 0"
                                " && document.getElementById('card-decided').textContent", 20))
        assert page.js("document.querySelectorAll('#experiments tbody tr').length") == before + 1  # + the baseline
        # the progress chart has a dot (or a failure mark) for every decided experiment and the baseline
        dots = ("labfleet.charts.progress.getOption().series.filter(s => s.type === 'scatter')"
                ".reduce((n, s) => n + s.data.length, 0)")
        assert page.js(dots) == before + 1
        assert page.js("document.querySelector('#progress canvas') !== null")
        page.js("window.__sameDocument = 42")
        write_from_another_process(folder, '<b id="xss">escaped</b> from another process')
        page.until(f"document.getElementById('card-decided').textContent === '{before + 1}'", 5)
        assert page.js("window.__sameDocument") == 42  # updated in place, not reloaded
        page.until("document.querySelectorAll('#experiments tbody tr').length === " + str(before + 2), 3)
        assert page.js("document.getElementById('xss')") is None  # ledger text is text, not markup
        assert page.js("document.querySelector('#experiments tbody').textContent.includes('<b id=\"xss\">')")

        # sorting by a header and filtering by a select
        page.js("document.querySelector('th[data-sort=\"metric\"]').click()")
        metrics = page.js("[...document.querySelectorAll('#experiments tbody tr td:nth-child(6)')]"
                          ".map(td => parseFloat(td.textContent))")
        assert metrics == sorted(metrics)
        page.js("{ const s = document.getElementById('f-wave'); s.value = '1'; s.dispatchEvent(new Event('change')); }")
        assert page.js("document.querySelectorAll('#experiments tbody tr').length") == 4
        page.js("{ const s = document.getElementById('f-wave'); s.value = ''; s.dispatchEvent(new Event('change')); }")

        # a run that starts in another process shows as a bar that grows every second, without a refetch
        write_from_another_process(folder, "still running", "running")
        page.until("document.getElementById('card-decided-sub').textContent.includes('1 running')", 5)
        width = ("(() => { const s = labfleet.charts.timeline.getOption().series.find(s => s.id === 'running');"
                 " return s && s.data.length ? labfleet.barWidth(s.data[0].run.run) : null; })()")
        first = page.until(width, 3)
        time.sleep(2.2)
        assert page.js(width) > first
        assert "still running" in page.js("document.getElementById('running-now').textContent")

        page.js("window.scrollTo(0, 0)")
        shot = page.call("Page.captureScreenshot", format="png")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))

        # the detail panel: description, hypothesis, a coloured diff, the log tail
        page.js("[...document.querySelectorAll('#experiments tbody tr')]"
                ".find(tr => tr.firstChild.textContent === 'e2').click()")
        page.until("document.querySelector('#detail-body pre.diff .add') !== null", 5)
        text = page.js("document.getElementById('detail-body').textContent")
        assert "lr up" in text and "the default step is too timid" in text and "val_bpb" in text
        assert page.js("document.querySelector('#detail-body pre.diff .add').textContent") == (
            "+LEARNING_RATE = 3e-3  # step size")
        shot = page.call("Page.captureScreenshot", format="png")
        SCREENSHOT.with_name(SCREENSHOT.stem + "-detail.png").write_bytes(base64.b64decode(shot["data"]))
        assert page.js("window.__errors") == []
