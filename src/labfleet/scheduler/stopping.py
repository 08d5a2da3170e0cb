"""When proposing stops: the session's limits, checked against figures the loop reads."""

from __future__ import annotations

from labfleet.scheduler.base import Limits


def stop_reason(
    limits: Limits, *, direction: str, proposed: int, elapsed_seconds: float, champion_metric: float | None,
    decided_since_keep: int, fleet_usd: float, researcher_done: bool, active_runs: int,
) -> str:
    """Why proposing should stop now ("" to go on). Runs already queued or running still finish."""
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
