"""What the fleet costs: each worker's price per hour times the time it spent running.

Busy time is what a run occupied a worker (started to ended, or to now while it
runs); idle workers on a real cloud cost money too, which the SkyPilot executor's
autostop keeps short, so this is the figure a user can act on.

Pure over the ledger's records: ``WorkerCost`` rows (``Ledger.worker_costs``, summed
by an indexed query) and a ``Snapshot``'s runs and workers.
"""

from __future__ import annotations

from collections.abc import Iterable

from labfleet.ledger.rows import Snapshot, WorkerCost

__all__ = ["WorkerCost", "cost_over_time", "fleet_usd"]


def fleet_usd(costs: Iterable[WorkerCost]) -> float:
    """GPU dollars spent so far (``Ledger.worker_costs(session, now)`` counts running runs up to ``now``)."""
    return sum(w.usd for w in costs)


def cost_over_time(snapshot: Snapshot) -> list[tuple[float, float]]:
    """(time, cumulative dollars) at each finished run's end, for the report's cost plot."""
    prices = {w.id: w.price_per_hour for w in snapshot.workers}
    ended = [r for r in snapshot.runs
             if r.started_at is not None and r.ended_at is not None and r.worker in prices]
    total, points = 0.0, []
    for r in sorted(ended, key=lambda r: r.ended_at or 0.0):
        total += prices[r.worker or ""] * max(0.0, (r.ended_at or 0.0) - (r.started_at or 0.0)) / 3600
        points.append((r.ended_at or 0.0, total))
    return points
