"""Shared fixtures: tiny real targets (git repos, ``labfleet.testing.targets``) whose train.py misbehaves on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from labfleet.testing.targets import GOOD_TRAIN, git, make_target

__all__ = ["git", "make_target", "run_cli"]  # what test modules import from here

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
