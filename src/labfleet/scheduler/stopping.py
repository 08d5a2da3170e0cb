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


def last_end(frees: Sequence[float], end: float, run_seconds: float) -> float:
    """When the session's last run should end: the end that leaves the fleet least idle.

    ``frees``: when each worker is next free (now for a free one, a running run's
    expected end). A worker may start runs until ``end`` (--hours), one every
    ``run_seconds``; its last run ends at one of those steps. Runs started together
    end together, so the last ends cluster: the best last end is the one after which
    the fewest workers wait, summed over the fleet (a worker whose next run would end
    past it stops instead). Candidates: each worker's last and next-to-last possible end.
    """
    if not frees:
        return end
    floor = max(frees)
    steps = [math.ceil((end - f) / run_seconds) if f < end else 0 for f in frees]
    candidates = {f + k * run_seconds for f, n in zip(frees, steps) for k in (n, n - 1) if k >= 0}
    best, best_idle = end, math.inf
    for cand in sorted(c for c in candidates if c >= floor):
        idle = 0.0
        for f, n in zip(frees, steps):
            k = min(n, math.floor((cand - f) / run_seconds + 1e-9))
            idle += cand - (f + k * run_seconds)
        if idle < best_idle - 1e-9:
            best, best_idle = cand, idle
    return best


def starts_left(now: float, end: float | None, run_seconds: float, running_starts: Sequence[float],
                free: int, last: float | None = None) -> int | None:
    """Runs that can still start before the session's end (``--hours``): what the queue may hold.

    Each free worker starts one now and then one every ``run_seconds``; each running
    run's worker its next at the run's expected end (``start + run_seconds``, now if
    it is overdue). Whatever would start after ``end`` never starts: proposals queued
    for it are model calls and commits for nothing, and the session's end waits on no
    run. ``last``: the chosen last end (``last_end``): a run that would end after it
    does not start either. None: no end (no --hours), or no run time known yet.
    """
    if end is None or run_seconds <= 0:
        return None
    if now >= end:
        return 0

    def slots(t: float) -> int:
        n = math.ceil((end - t) / run_seconds) if t < end else 0
        if last is not None:
            n = min(n, max(0, math.floor((last - t) / run_seconds + 1e-9)))
        return n

    return free * slots(now) + sum(slots(max(start + run_seconds, now)) for start in running_starts)


def may_start(now: float, run_seconds: float, last: float | None, workers: int) -> bool:
    """Whether a run started now may end after the session's chosen last end (``last_end``).

    Past it, the whole fleet would wait for the overrun: worth it only when this worker
    would otherwise idle longer than the fleet's wait (run times vary by a few percent:
    that much overrun is no overrun). None: no last end chosen (not near --hours).
    """
    if last is None:
        return True
    overrun = now + run_seconds - last
    return overrun <= 0.02 * run_seconds + max(0.0, last - now) / max(workers, 1)
