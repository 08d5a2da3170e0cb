"""The session lock: one orchestrator per ledger (an flock on ``session.lock`` beside it)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from labfleet.ledger.rows import SessionLocked

LOCK_FILE = "session.lock"


class SessionLock:
    """One orchestrator per ledger: an flock on a file holding the owner's pid.

    The kernel drops the lock when the process dies (even by kill -9), so a stale
    lock never blocks a resume.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.file: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise SessionLocked(
                f"another labfleet session is running on this ledger (pid {holder}); "
                "stop it first, or watch it with `labfleet status`"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the orchestrator holding the ledger, or None if no session runs."""
    path = state_dir / LOCK_FILE
    if not path.exists():
        return None
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None
