"""The scheduler: pure functions over a frozen snapshot that return decisions.

In the manner of Ray Tune's ``TrialScheduler``: nothing here writes the ledger,
starts a run or calls a researcher. The session loop builds a ``Snapshot``, asks,
and applies what it gets back (see ``base.py`` for the call order).

- ``deciding``: keep, discard, fail, repeat (seed, role, class), validate, wait;
  the baseline; ranking of screened winners for the scarce validate class;
  calibration plans; baseline seeds to fill the fleet while the first call is in flight.
- ``placing``: which queued run goes on which free worker.
- ``stopping``: whether to stop proposing, and why; how many runs can still start before --hours.
- ``proposing``: the researcher off the loop (a thread, or virtual latency on the
  simulator's clock), with timeouts, backoff and a pipeline sized from latency.
"""

from __future__ import annotations

from labfleet.scheduler.base import (
    Baseline,
    Discard,
    Fail,
    Keep,
    Limits,
    Placement,
    Queue,
    Repeat,
    Snapshot,
    Validate,
    Wait,
)
from labfleet.scheduler.deciding import (
    becomes_lead,
    champion_metrics,
    class_noise,
    compared,
    decide,
    decide_baseline,
    hardware_offset,
    judge_on,
    judge_pooled,
    lead_snapshot,
    plan_beside_validation,
    plan_calibration,
    plan_champion_calibration,
    plan_noise_fill,
    probability_better,
    rank_winners,
    still_leads,
)
from labfleet.scheduler.placing import place, role_allows
from labfleet.scheduler.stopping import last_end, may_start, starts_left, stop_reason

__all__ = [
    "Baseline",
    "Discard",
    "Fail",
    "Keep",
    "Limits",
    "Placement",
    "Queue",
    "Repeat",
    "Snapshot",
    "Validate",
    "Wait",
    "becomes_lead",
    "champion_metrics",
    "class_noise",
    "compared",
    "decide",
    "decide_baseline",
    "hardware_offset",
    "judge_on",
    "judge_pooled",
    "last_end",
    "lead_snapshot",
    "may_start",
    "plan_beside_validation",
    "place",
    "plan_calibration",
    "plan_champion_calibration",
    "plan_noise_fill",
    "probability_better",
    "rank_winners",
    "role_allows",
    "starts_left",
    "still_leads",
    "stop_reason",
]
