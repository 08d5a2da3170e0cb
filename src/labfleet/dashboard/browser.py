"""Headless Chromium for the report's PNGs (and the tests): start it, drive one page, screenshot panels.

The report's PNGs are screenshots of the page's own chart panels, so a PNG shows
exactly what the page shows and no second drawing code exists. Debian's
``chromium`` (``apt-get install chromium``) is found on PATH or through
``$LABFLEET_CHROMIUM``; without it ``labfleet report`` writes the page only and says
so. The DevTools client is a small stdlib WebSocket (text frames, one page).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labfleet.errors import BrowserError

CHROMIUM_ENV = "LABFLEET_CHROMIUM"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1080  # px: under the page's 1100 px break, every panel takes the full width
HEIGHT = 900


def _check(ok: Any, message: str | bytes) -> None:
    if not ok:
        raise BrowserError(message if isinstance(message, str) else message.decode("latin-1"))


def find_chromium() -> str | None:
    """The Chromium to use: ``$LABFLEET_CHROMIUM`` or the first of NAMES on PATH; None when there is none."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    for name in NAMES:
        if path := shutil.which(name):
            return path
    return None


class CDP:
    """A minimal Chrome DevTools Protocol client over a stdlib WebSocket (text frames, one page)."""

    def __init__(self, ws_url: str) -> None:
        parts = urlsplit(ws_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            _check(chunk, "DevTools closed the connection during the handshake")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        _check(b" 101 " in head.split(b"\r\n", 1)[0], head)
        self.ids = 0

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            _check(chunk, "DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytearray([0x80 | opcode])
        if n < 126:
            head.append(0x80 | n)
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self) -> dict[str, Any]:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            _check(opcode != 0x8, "DevTools closed the connection")
            message += payload
            if b0 & 0x80 and opcode in (0x0, 0x1):
                return json.loads(message)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        self._send(0x1, json.dumps({"id": self.ids, "method": method, "params": params}).encode())
        while True:
            reply = self._receive()
            if reply.get("id") == self.ids:
                _check("error" not in reply, str(reply))
                return reply.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        _check("exceptionDetails" not in result, str(result))
        return result["result"].get("value")

    def until(self, expression: str, seconds: float) -> Any:
        deadline = time.monotonic() + seconds
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"  # mid-navigation
        while True:
            value = self.js(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {seconds} s waiting for: {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def browser(profile: Path | None = None, width: int = WIDTH, height: int = HEIGHT) -> Iterator[CDP]:
    """A headless Chromium with one page (``width`` x ``height``), stopped (its whole process group) at the end."""
    exe = find_chromium()
    if exe is None:
        raise BrowserError(f"no Chromium found: install Debian's `chromium` or set ${CHROMIUM_ENV}")
    with tempfile.TemporaryDirectory(prefix="labfleet-chromium-") as tmp:
        profile = profile or Path(tmp)
        proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", "--mute-audio",
             "--allow-file-access-from-files", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        cdp = None
        try:
            deadline = time.monotonic() + 30
            port_file = profile / "DevToolsActivePort"
            while not (port_file.is_file() and port_file.read_text().strip()):
                _check(time.monotonic() < deadline and proc.poll() is None, "chromium did not start")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                pages = [t for t in json.load(reply) if t["type"] == "page"]
            cdp = CDP(pages[0]["webSocketDebuggerUrl"])
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
            cdp.call("Page.enable")
            cdp.call("Page.addScriptToEvaluateOnNewDocument", source=(
                "window.__errors = []; addEventListener('error', e => __errors.push(String(e.message)));"
                "addEventListener('unhandledrejection', e => __errors.push(String(e.reason)));"
                "addEventListener('securitypolicyviolation', e => __errors.push('CSP: ' + e.violatedDirective));"))
            yield cdp
        finally:
            if cdp is not None:
                cdp.close()
            os.killpg(proc.pid, 15)  # the chromium we started, with its helpers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)


RENDERED = "window.labfleet && window.labfleet.rendered === true"


def open_page(page: CDP, path: Path, seconds: float = 30) -> None:
    """Load a static report and wait until app.js says it has drawn every chart."""
    page.call("Page.navigate", url=Path(path).resolve().as_uri())
    page.until(RENDERED, seconds)


def screenshot_panels(path: Path, out: Path, names: Sequence[str]) -> list[Path]:
    """``NAME.png`` in ``out`` for each chart panel ``#panel-NAME`` the page shows (hidden ones are skipped)."""
    written = []
    with browser() as page:
        open_page(page, path)
        page.js("document.body.classList.add('export')")
        for name in names:
            box = page.js(f"(() => {{ const el = document.getElementById('panel-{name}');"
                          " if (!el || el.hidden || el.dataset.empty || !el.offsetParent) return null;"
                          " el.scrollIntoView(); const r = el.getBoundingClientRect();"
                          " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()")
            if not box:
                continue
            shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={**box, "scale": 1})
            target = Path(out) / f"{name}.png"
            target.write_bytes(base64.b64decode(shot["data"]))
            written.append(target)
        errors = page.js("window.__errors")
    _check(not errors, f"the report page had script errors: {errors}")
    return written
