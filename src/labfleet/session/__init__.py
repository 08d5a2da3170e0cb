"""The session: the only place where stages meet (see DESIGN.md).

``loop`` is the controller loop (researcher -> scheduler -> executor -> ledger);
the names below are its public surface, re-exported so ``labfleet.session.X``
keeps working.
"""

from labfleet.session.loop import (
    BRANCH_PREFIX,
    ROLE_PRIORITY,
    TICK_SECONDS,
    VALIDATION_SEED_OFFSET,
    Event,
    SessionConfig,
    SessionError,
    SessionLoop,
    _Champion,
    materialize,
    queue_validation,
    start_session,
)

__all__ = [
    "BRANCH_PREFIX",
    "ROLE_PRIORITY",
    "TICK_SECONDS",
    "VALIDATION_SEED_OFFSET",
    "Event",
    "SessionConfig",
    "SessionError",
    "SessionLoop",
    "materialize",
    "queue_validation",
    "start_session",
]
