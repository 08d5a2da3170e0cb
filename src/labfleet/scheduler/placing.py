"""Placement: which queued run goes on which free worker.

Validation first (winners waiting to be kept), then calibration and noise runs,
then confirmations, then screens, oldest first within a role. A run pinned to a
class (``place_on``) goes only there; otherwise the [tiers] classes decide. With
tiers, validate-class workers that nothing needs take screens (``backfill``): a
fast worker idle while proposals wait is time the fleet pays for and wastes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from labfleet.enums import Role
from labfleet.executors.base import Worker
from labfleet.scheduler.base import ROLE_PRIORITY, Placement
from labfleet.target import Tiers


def role_allows(tiers: Tiers | None, role: str, hardware: str) -> bool:
    """Whether a run of ``role`` may run on ``hardware`` under the [tiers] classes."""
    if tiers is None:
        return True
    classes = tiers.validate_.classes if role == Role.VALIDATE else tiers.screen.classes
    return not classes or hardware in classes


def eligible(tiers: Tiers | None, row: Mapping[str, Any], worker: Worker, backfill: bool = False) -> bool:
    if row["place_on"]:
        return bool(worker.hardware == row["place_on"])
    if role_allows(tiers, row["role"], worker.hardware):
        return True
    return backfill and row["role"] == Role.SCREEN and role_allows(tiers, Role.VALIDATE, worker.hardware)


def place(
    queued: Sequence[Mapping[str, Any]], free: Sequence[Worker], tiers: Tiers | None, backfill: bool = False,
    first: Collection[int] = (),
) -> list[Placement]:
    """Pairs of (queued run, free worker), in priority order; each worker at most once.

    With ``backfill``, a screen goes to a validate-class worker only after every run
    that class may take has been placed, and only when no screen-class worker is free.
    ``first``: experiments whose runs go first within their role (the provisional lead:
    its validation decides what the researcher builds on, so it never queues behind
    older winners' extra seeds).
    """
    free = list(free)
    placements: list[Placement] = []
    rows = sorted(queued, key=lambda r: (ROLE_PRIORITY.get(r["role"], 9), bool(first) and r["experiment_id"] not in first, r["id"]))
    left = []
    for row in rows:
        if not free:
            break
        worker = next((w for w in free if eligible(tiers, row, w)), None)
        if worker is None:
            left.append(row)
            continue
        free.remove(worker)
        placements.append(Placement(row["id"], worker.id))
    if backfill and tiers is not None:
        for row in left:
            worker = next((w for w in free if eligible(tiers, row, w, backfill=True)), None)
            if worker is not None:
                free.remove(worker)
                placements.append(Placement(row["id"], worker.id))
    return placements
