"""The fixture target: a tiny real target (a git repo) for tests of every stage, no torch needed.

``make_target(folder)`` writes and commits it: an editable ``train.py`` that prints a
metric computed from its constants, a frozen ``evalkit.py`` that prints the result
block and signs the metric line (as the bundled tinygpt's ``prepare.py`` does), a
frozen launcher that takes the signing key before editable code runs, and a frozen
setup (``prepare.py``) that counts how often it ran. ``KNOB_TRAIN`` and ``KNOBS_TOML``
make it a knob target whose metric is a smooth function of its knobs (best at
``LEARNING_RATE = 1e-2``). Runs take well under a second.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

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


# A train.py whose metric is a smooth function of its knobs: best at LEARNING_RATE = 1e-2.
KNOB_TRAIN = """\
import math, os, time
import evalkit

LEARNING_RATE = 1e-3  # step size
N_LAYER = 2
SLEEP = 0.0
time.sleep(SLEEP)
seed = int(os.environ["LABFLEET_SEED"])
evalkit.report(1.0 + (math.log10(LEARNING_RATE) + 2) ** 2 + 0.01 * N_LAYER, num_steps=10, peak_memory_mb=2048)
"""
KNOBS_TOML = """
[knobs]
LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
N_LAYER = { file = "train.py", choices = [1, 2, 3] }
SLEEP = { file = "train.py", low = 0.0, high = 30.0 }
"""
# The same knobs less SLEEP: sessions search only the knobs that shape the metric.
SEARCH_TOML = KNOBS_TOML.replace('SLEEP = { file = "train.py", low = 0.0, high = 30.0 }\n', "")


def knob_target(folder: Path, train: str = KNOB_TRAIN, **options: object) -> Path:
    """The fixture target with knobs (``KNOB_TRAIN``, ``KNOBS_TOML``), 1 s budget, 6 s timeout."""
    settings: dict[str, object] = {"extra_toml": KNOBS_TOML, "budget": 1, "timeout": 6, **options}
    return make_target(folder, train, **settings)  # type: ignore[arg-type]
