"""The ledger package: the only code that speaks SQL (see ``store``)."""

from labfleet.ledger.store import *  # noqa: F403
from labfleet.ledger.store import (  # noqa: F401
    ACTIVE, LEDGER_FILE, LOCK_FILE, MIGRATIONS, SCHEMA, Ledger, LedgerError, SessionLock, SessionLocked,
    experiment_record, lock_holder, run_record,
)
