"""The session: the only place where stages meet (see DESIGN.md).

``loop`` is the controller loop (researcher -> scheduler -> executor -> ledger);
``config`` the session's settings, split by concern; ``wiring.open_session`` the
one function that makes the stages and hands them to the loop (``labfleet run``,
``serve``, ``simulate`` and the benchmarks all come through it). The names below
are the public surface, re-exported so ``labfleet.session.X`` keeps working.
"""

from labfleet.scheduler.base import Limits
from labfleet.session.config import FleetSettings, KeepRule, ResearcherSettings, SessionConfig
from labfleet.session.loop import (
    BRANCH_PREFIX,
    ROLE_PRIORITY,
    TICK_SECONDS,
    VALIDATION_SEED_OFFSET,
    Event,
    SessionError,
    SessionLoop,
    _Champion,  # noqa: F401 - tests reach the loop's champion record
    materialize,
    queue_validation,
    start_session,
)
from labfleet.session.wiring import WiredSession, open_session

__all__ = [
    "BRANCH_PREFIX",
    "ROLE_PRIORITY",
    "TICK_SECONDS",
    "VALIDATION_SEED_OFFSET",
    "WiredSession",
    "Event",
    "FleetSettings",
    "KeepRule",
    "Limits",
    "ResearcherSettings",
    "SessionConfig",
    "SessionError",
    "SessionLoop",
    "materialize",
    "open_session",
    "queue_validation",
    "start_session",
]
