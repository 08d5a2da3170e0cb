"""labfleet's exceptions: every class in one place, the tree drawn here (a test checks it).

    LabfleetError            anything a user can fix; the CLI prints it as one line
     ├── ConfigError         labfleet.toml is missing, malformed or inconsistent
     ├── GitError            a git command failed (not a git repo, unknown commit, ...)
     │    └── PatchError     a patch does not apply or touches a file it may not
     ├── HarnessError        a run could not even be attempted (bad run directory, ...)
     ├── FrozenChanged       HEAD's frozen files are not the pinned ones
     ├── LedgerError         the ledger cannot do what was asked (no such experiment, ...)
     │    ├── SessionLocked  another process drives this target's session
     │    └── LedgerReadOnly a write through a ledger opened read-only
     ├── SessionError        a session cannot start or resume as asked
     ├── AgentError          an agent verb (submit, promote, ...) refused its input
     ├── ExecutorError       an executor cannot be made or reached (bad fleet, SDK missing)
     ├── LLMError            a model call failed or answered without the tool
     ├── IdeaError           an idea or a wave of ideas cannot be built (also a ValueError)
     ├── NoLedger            no ledger file or no session yet (the dashboard waits)
     └── BrowserError        headless Chromium did not start or the page did not answer in time

Outcomes of experiments (crashed, timeout, nan, ...) are not exceptions: they are
recorded results. Exceptions are for the caller's mistakes. A module may keep a
private exception (a leading underscore) for its own control flow when it never
leaves the module (``executors.skypilot._Lost``).
"""

from __future__ import annotations


class LabfleetError(Exception):
    """Base class: the message is one line a user can act on."""


class ConfigError(LabfleetError):
    pass


class GitError(LabfleetError):
    pass


class PatchError(GitError):
    pass


class HarnessError(LabfleetError):
    pass


class FrozenChanged(LabfleetError):
    """HEAD's frozen files are not the pinned ones."""


class LedgerError(LabfleetError):
    pass


class SessionLocked(LedgerError):
    pass


class LedgerReadOnly(LedgerError):
    """A write through a ledger opened with ``readonly=True``."""


class SessionError(LabfleetError):
    pass


class AgentError(LabfleetError):
    pass


class ExecutorError(LabfleetError):
    pass


class LLMError(LabfleetError):
    """A model call failed (after the SDK's retries) or answered without the tool."""


class IdeaError(LabfleetError, ValueError):
    """An idea or a wave of ideas that cannot be built (bad name, a patch that does not apply alone).

    Also a ``ValueError``, as it was before it joined the tree: callers that catch that keep working.
    """


class NoLedger(LabfleetError):
    """No ledger file or no session yet: the page says it is waiting."""


class BrowserError(LabfleetError):
    """Chromium did not start, or the page did not do what was asked in time (the report's PNGs)."""
