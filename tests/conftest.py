"""Shared fixtures: tiny real targets (git repos, ``labfleet.testing.targets``) whose train.py misbehaves on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labfleet.executors.local import LocalExecutor
from labfleet.ledger import Ledger
from labfleet.researchers.base import Researcher
from labfleet.session import SessionConfig, SessionLoop, start_session
from labfleet.target import load_target
from labfleet.testing.scripted import ScriptedResearcher as Scripted
from labfleet.testing.targets import GOOD_TRAIN, KNOB_TRAIN, KNOBS_TOML, SEARCH_TOML, git, make_target

# What test modules import from here (no test module imports another).
__all__ = ["AGENT_TOML", "Scripted", "agent_lab", "git", "lab", "make_target", "processes_with", "run_cli", "run_session",
           "wait_for"]

# Tests stop daemons and sessions as a person would, with Ctrl-C (SIGINT). A test run started
# where SIGINT is ignored (a background job of a shell without job control) would hand that to
# every process it starts, and none of them would stop: give the children the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def target_factory(tmp_path: Path) -> Callable[..., Path]:
    count = iter(range(1000))

    def factory(train: str = GOOD_TRAIN, **kwargs) -> Path:
        return make_target(tmp_path / f"target{next(count)}", train, **kwargs)

    return factory


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own setup cache; nothing touches ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LABFLEET_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tinygpt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One setup cache for the bundled tinygpt shared by the tests that train it."""
    return tmp_path_factory.mktemp("tinygpt-cache")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "labfleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )


def lab(tmp_path: Path, train: str = KNOB_TRAIN) -> Path:
    """The knob fixture target for session tests: 1 s budget, 6 s timeout."""
    return make_target(tmp_path / "lab", train, extra_toml=KNOBS_TOML, budget=1, timeout=6)


# SLEEP is a knob here, so an agent can submit a slow experiment to cancel
AGENT_TOML = SEARCH_TOML + 'SLEEP = { file = "train.py", low = 0.0, high = 60.0 }\n'


def agent_lab(tmp_path: Path) -> Path:
    """The knob fixture target an external agent drives (slow experiments allowed: 90 s timeout)."""
    return make_target(tmp_path / "lab", KNOB_TRAIN, extra_toml=AGENT_TOML, budget=1, timeout=90)


def run_session(folder: Path, researcher: Researcher, workers: int = 2, **config) -> tuple[Ledger, SessionLoop]:
    """A whole session on local workers, to its end."""
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=workers, **config)
    sid = start_session(target, ledger, cfg)
    loop = SessionLoop(target, ledger, LocalExecutor(workers), researcher, sid, cfg, folder / ".labfleet")
    loop.run()
    return ledger, loop


def wait_for(condition: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def processes_with(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().split(") ")[-1][:1]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                pids.append(int(proc.name))
    return pids
