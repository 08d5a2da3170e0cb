"""labfleet: autonomous ML research in parallel over a fleet of accelerators.

The layers (see DESIGN.md) follow the flow: researchers -> scheduler -> executors ->
harness -> ledger -> analysis, wired only by the session loop. The top level exports
the vocabulary every layer shares: the frozen records (``records``), the enums
(``enums``) and the exceptions (``errors``). Heavy dependencies (torch, ray, skypilot,
LLM SDKs, pydantic) are never imported here.
"""

from labfleet.enums import Decision, Direction, Outcome, Role, RunStatus, SessionStatus, VerdictOutcome
from labfleet.errors import (
    AgentError,
    BrowserError,
    ConfigError,
    ExecutorError,
    FrozenChanged,
    GitError,
    HarnessError,
    IdeaError,
    LabfleetError,
    LedgerError,
    LedgerReadOnly,
    LLMError,
    NoLedger,
    PatchError,
    SessionError,
    SessionLocked,
)
from labfleet.records import Experiment, Proposal, Result, Run, RunRequest, RunResult, SessionState

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "BrowserError",
    "ConfigError",
    "Decision",
    "Direction",
    "ExecutorError",
    "Experiment",
    "FrozenChanged",
    "GitError",
    "HarnessError",
    "IdeaError",
    "LLMError",
    "LabfleetError",
    "LedgerError",
    "LedgerReadOnly",
    "NoLedger",
    "Outcome",
    "PatchError",
    "Proposal",
    "Result",
    "Role",
    "Run",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "SessionError",
    "SessionLocked",
    "SessionState",
    "SessionStatus",
    "VerdictOutcome",
    "__version__",
]
