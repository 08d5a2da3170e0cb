"""When proposing stops: the session's limits, checked against figures the loop reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

from labfleet.scheduler.base import Limits


def stop_reason(
    limits: Limits, *, direction: str, proposed: int, elapsed_seconds: float, champion_metric: float | None,
    decided_since_keep: int, fleet_usd: float, researcher_done: bool, active_runs: int,
) -> str:
    """Why proposing should stop now ("" to go on). Runs already queued or running still finish,
    except at --hours: then nothing more starts (the loop drops the queue; see ``starts_left``)."""
    if researcher_done and not limits.serve and not active_runs:
        return "the researcher has nothing more to propose"
    if limits.max_experiments is not None and proposed >= limits.max_experiments:
        return f"reached --max-experiments {limits.max_experiments}"
    if limits.hours is not None and elapsed_seconds >= limits.hours * 3600:
        return f"reached --hours {limits.hours:g}"
    if limits.until is not None and champion_metric is not None:
        reached = champion_metric <= limits.until if direction == "minimize" else champion_metric >= limits.until
        if reached:
            return f"reached --until {limits.until:g}"
    if limits.patience is not None and decided_since_keep >= limits.patience:
        return f"no keep in the last {limits.patience} experiments (--patience {limits.patience}): diminishing returns"
    if limits.max_usd is not None and fleet_usd >= limits.max_usd:
        return f"reached --max-usd {limits.max_usd:g}"
    return ""


def starts_left(now: float, end: float | None, run_seconds: float, running_starts: Sequence[float],
                free: int) -> int | None:
    """Runs that can still start before the session's end (``--hours``): what the queue may hold.

    Each free worker starts one now and then one every ``run_seconds``; each running
    run's worker its next at the run's expected end (``start + run_seconds``, now if
    it is overdue). Whatever would start after ``end`` never starts: proposals queued
    for it are model calls and commits for nothing, and the session's end waits on no
    run. None: no end (no --hours), or no run time known yet.
    """
    if end is None or run_seconds <= 0:
        return None
    if now >= end:
        return 0

    def slots(t: float) -> int:
        return math.ceil((end - t) / run_seconds) if t < end else 0

    return free * slots(now) + sum(slots(max(start + run_seconds, now)) for start in running_starts)
