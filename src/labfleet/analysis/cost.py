"""What the fleet costs: each worker's price per hour times the time it spent running.

Busy time is what a run occupied a worker (started to ended, or to now while it
runs); idle workers on a real cloud cost money too, which the SkyPilot executor's
autostop keeps short, so this is the figure a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from labfleet.ledger import Ledger

BUSY_SQL = """
SELECT r.worker AS worker, w.hardware AS hardware, w.price_per_hour AS price,
       SUM(MAX(0, COALESCE(r.ended_at, :now) - r.started_at)) AS busy
FROM runs r JOIN workers w ON w.session_id = r.session_id AND w.id = r.worker
WHERE r.session_id = :sid AND r.started_at IS NOT NULL
GROUP BY r.worker
"""


@dataclass(frozen=True)
class WorkerCost:
    worker: str
    hardware: str
    price_per_hour: float
    busy_seconds: float

    @property
    def usd(self) -> float:
        return self.price_per_hour * self.busy_seconds / 3600


def worker_costs(ledger: Ledger, session_id: int, now: float) -> list[WorkerCost]:
    rows = ledger.db.execute(BUSY_SQL, {"now": now, "sid": session_id})
    return [WorkerCost(r["worker"], r["hardware"], r["price"], r["busy"] or 0.0) for r in rows]


def fleet_usd(ledger: Ledger, session_id: int, now: float) -> float:
    """GPU dollars spent so far (running runs counted up to ``now``)."""
    return sum(w.usd for w in worker_costs(ledger, session_id, now))


def cost_over_time(ledger: Ledger, session_id: int) -> list[tuple[float, float]]:
    """(time, cumulative dollars) at each finished run's end, for the report's cost plot."""
    rows = ledger.db.execute(
        "SELECT r.started_at AS s, r.ended_at AS e, w.price_per_hour AS p FROM runs r JOIN workers w"
        " ON w.session_id = r.session_id AND w.id = r.worker WHERE r.session_id = ? AND r.started_at IS NOT NULL"
        " AND r.ended_at IS NOT NULL ORDER BY r.ended_at",
        (session_id,),
    )
    total, points = 0.0, []
    for r in rows:
        total += r["p"] * max(0.0, r["e"] - r["s"]) / 3600
        points.append((r["e"], total))
    return points
