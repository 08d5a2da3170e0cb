"""The ledger: the only code in labfleet that speaks SQL (and the only importer of ``sqlite3``).

- ``schema``: the tables, indexes and the migration of older files;
- ``store``: ``Ledger``, the one writer, and ``open(path, readonly=...)``;
- ``queries``: every read, returning frozen records;
- ``rows``: those records, the frozen ``Snapshot`` of a session, and the ledger's errors;
- ``lock``: the session lock (one orchestrator per ledger);
- ``export``: autoresearch's ``results.tsv``.
"""

from labfleet.ledger.lock import LOCK_FILE, SessionLock, lock_holder
from labfleet.ledger.rows import (
    LedgerError,
    LedgerReadOnly,
    LlmUsage,
    ResultRow,
    RunningRun,
    RunRow,
    SessionLocked,
    SessionRow,
    Snapshot,
    StatusSummary,
    WorkerCost,
    WorkerRow,
    experiment_record,
    run_record,
)
from labfleet.ledger.schema import ACTIVE, MIGRATIONS, SCHEMA, VERSION
from labfleet.ledger.store import LEDGER_FILE, STATE_DIR, Ledger, open  # noqa: A004

__all__ = [
    "ACTIVE", "LEDGER_FILE", "LOCK_FILE", "MIGRATIONS", "SCHEMA", "STATE_DIR", "VERSION", "Ledger", "LedgerError",
    "LedgerReadOnly", "LlmUsage", "ResultRow", "RunRow", "RunningRun", "SessionLock", "SessionLocked",
    "SessionRow", "Snapshot", "StatusSummary", "WorkerCost", "WorkerRow", "experiment_record", "lock_holder",
    "open", "run_record",
]
