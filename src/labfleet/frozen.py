"""Frozen files pinned: their hashes are recorded once, and changed only by the user.

The first time a target is used (``labfleet init``, or the first session) the
sha256 of every frozen file at HEAD is written to ``.labfleet/frozen.json``.
Afterwards every session start or resume, ``serve`` and ``submit`` check HEAD's
frozen files against that pin and refuse, naming the file, when one differs: a
coding agent with a shell in the target can commit an edit to ``prepare.py``, but
it cannot make labfleet run it. ``labfleet target accept-frozen`` re-pins HEAD's
hashes; it is the only way, and it is logged (in the pin's history and the
ledger's events).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from labfleet import workspace
from labfleet.errors import FrozenChanged
from labfleet.target import STATE_DIR, Target

PIN_FILE = "frozen.json"


def pin_path(target: Target) -> Path:
    return target.root / STATE_DIR / PIN_FILE


def pinned(target: Target) -> dict[str, Any] | None:
    """The pin (commit, hashes, when, history), or None when the target was never pinned."""
    path = pin_path(target)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FrozenChanged(f"{path} is not valid JSON: run `labfleet target accept-frozen` to pin again") from None
    return data


def _write(target: Target, data: dict[str, Any]) -> None:
    workspace.exclude_path(target.root, f"/{STATE_DIR}/")  # never dirties the repo
    path = pin_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _head_hashes(target: Target) -> tuple[str, dict[str, str]]:
    head = workspace.resolve(target.root)
    return head, workspace.commit_file_hashes(target.root, head, target.spec.frozen)


def record(target: Target, by: str) -> dict[str, Any]:
    """Pin HEAD's frozen files if nothing is pinned yet; returns the pin."""
    existing = pinned(target)
    if existing is not None:
        return existing
    head, hashes = _head_hashes(target)
    data = {"commit": head, "hashes": hashes, "at": time.time(), "by": by, "history": []}
    _write(target, data)
    return data


def differences(pin_hashes: dict[str, str], hashes: dict[str, str]) -> list[str]:
    return sorted(p for p in set(pin_hashes) | set(hashes) if pin_hashes.get(p) != hashes.get(p))


def check(target: Target, session_hashes: dict[str, str] | None = None, session_id: int | None = None) -> dict[str, str]:
    """Raise ``FrozenChanged`` naming the file if HEAD (or a resumed session) differs from the pin.

    Pins first when the target was never pinned. Returns the pinned hashes.
    """
    pin = record(target, by="first session")
    head, hashes = _head_hashes(target)
    changed = differences(pin["hashes"], hashes)
    if changed:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(pin["at"]))
        raise FrozenChanged(
            f"frozen file {changed[0]} differs from the one pinned at {pin['commit'][:10]} ({when}): "
            "labfleet will not run on it; if you changed it on purpose, run `labfleet target accept-frozen`"
        )
    if session_hashes is not None:
        changed = differences(pin["hashes"], dict(session_hashes))
        if changed:
            raise FrozenChanged(
                f"session {session_id} was started with a different {changed[0]} than the pinned one: "
                "start a new session (`labfleet run --new`)"
            )
    return dict(pin["hashes"])


def accept(target: Target, ledger: Any | None = None) -> tuple[list[str], dict[str, Any]]:
    """Pin HEAD's frozen files (the user's explicit command); logged. Returns (changed files, pin)."""
    old = pinned(target)
    head, hashes = _head_hashes(target)
    changed = differences(old["hashes"], hashes) if old else sorted(hashes)
    entry = {"at": time.time(), "commit": head, "changed": changed,
             "previous_commit": old["commit"] if old else None,
             "previous": {p: old["hashes"].get(p) for p in changed} if old else {}}
    history = (old or {}).get("history", []) + [entry]
    data = {"commit": head, "hashes": hashes, "at": entry["at"], "by": "accept-frozen", "history": history}
    _write(target, data)
    if ledger is not None:
        ledger.event(None, "frozen_accepted", commit=head, changed=changed)
    return changed, data
