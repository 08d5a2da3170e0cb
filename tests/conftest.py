"""Shared fixtures: tiny real targets (git repos) whose train.py misbehaves on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

# Tests stop daemons and sessions as a person would, with Ctrl-C (SIGINT). A test run started
# where SIGINT is ignored (a background job of a shell without job control) would hand that to
# every process it starts, and none of them would stop: give the children the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]

# A frozen evaluation module that prints the summary block and signs the metric line,
# the way the bundled tinygpt's prepare.py does.
EVALKIT = '''\
"""Frozen: prints the result block and signs the metric line."""
import hashlib
import hmac

_KEY = None


def _set_signing_key(key):
    global _KEY
    _KEY = key


def report(value, **figures):
    text = f"{value:.6f}"
    print("---")
    print(f"val_bpb:          {text}")
    for key, figure in figures.items():
        print(f"{key + ':':<18}{figure}")
    if _KEY:
        mac = hmac.new(bytes.fromhex(_KEY), f"val_bpb={text}".encode(), hashlib.sha256)
        print(f"signature:        {mac.hexdigest()}", flush=True)
'''

# A frozen launcher: reads the one-time key from the pipe the harness passed and closes
# it before editable code runs (the environment holds only the descriptor's number).
LAUNCH = '''\
import os, runpy, sys
fd = os.environ.pop("LABFLEET_SIGNING_FD", None)
key = os.read(int(fd), 256).decode() if fd else None
if fd:
    os.close(int(fd))
sys.path.insert(0, os.getcwd())
import evalkit
evalkit._set_signing_key(key)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

# Setup: counts how often it ran, and leaves data for the run in the cache dir.
PREPARE = '''\
import os, pathlib
cache = pathlib.Path(os.environ["LABFLEET_CACHE_DIR"])
counter = cache / "setup-count"
counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
(cache / "data.txt").write_text("data")
'''

GOOD_TRAIN = '''\
import os
import evalkit

# hyperparameters
LEARNING_RATE = 3e-3  # step size
N_LAYER = 2
data = open(os.path.join(os.environ["LABFLEET_CACHE_DIR"], "data.txt")).read()
seed = int(os.environ["LABFLEET_SEED"])
evalkit.report(
    1.5 + LEARNING_RATE + seed / 1000,
    budget=os.environ["LABFLEET_BUDGET_SECONDS"],
    threads=os.environ["LABFLEET_THREADS"],
    device=os.environ["LABFLEET_DEVICE"],
    key_visible=int("LABFLEET_SIGNING_KEY" in os.environ or "LABFLEET_SIGNING_FD" in os.environ),
    data=data,
)
'''


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout


def make_target(
    folder: Path,
    train: str = GOOD_TRAIN,
    *,
    signed: bool = True,
    budget: float = 1,
    timeout: float = 8,
    extra_toml: str = "",
) -> Path:
    """A committed fixture target in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    run = "python launch.py train.py" if signed else "python train.py"
    frozen = '["evalkit.py", "launch.py", "prepare.py"]' if signed else '["evalkit.py", "prepare.py"]'
    (folder / "labfleet.toml").write_text(
        textwrap.dedent(
            f"""\
            [target]
            name = "fixture"
            editable = ["train.py"]
            frozen = {frozen}
            setup = "python prepare.py"
            run = "{run}"
            metric = "val_bpb"
            direction = "minimize"
            budget_seconds = {budget}
            timeout_seconds = {timeout}
            signed = {str(signed).lower()}
            """
        )
        + extra_toml
    )
    (folder / "evalkit.py").write_text(EVALKIT)
    (folder / "prepare.py").write_text(PREPARE)
    if signed:
        (folder / "launch.py").write_text(LAUNCH)
    (folder / "train.py").write_text(textwrap.dedent(train))
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fixture")
    return folder


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
