"""The researcher contract: proposes experiments from a frozen snapshot of the ledger.

Call order, driven only by the session loop:

    researcher = make_researcher(name, seed=...)
    researcher.propose(state, n)      # whenever workers are free: at most n proposals
    researcher.observe(state, result) # once per finished experiment, in finishing order
    ... repeat ...

A researcher never touches workers, the ledger, git or files: it sees ``SessionState``
and ``Result`` records (read-only) and returns ``Proposal`` records. One that reads the
target's code (``wants_sources``) is handed a read-only ``view.Sources``: the editable
files at a commit, the brief, run log tails; it reads nothing else. After a restart
the session calls ``propose`` with the full history, so a researcher that keeps
internal state must rebuild it from ``state.history`` (``observe`` is not replayed).

A researcher that has nothing left to try returns an empty list; the session stops
when no researcher work is pending and nothing is running.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from labfleet.records import Proposal, Result, SessionState


class Researcher(abc.ABC):
    """Base class. Subclasses set ``name`` and implement ``propose``."""

    name: ClassVar[str]
    # True for researchers that read the target's files (the LLM): make_researcher passes
    # sources= (a read-only ``view.Sources`` of the target), never the target itself
    wants_sources: ClassVar[bool] = False
    # True for researchers that read ``state.findings`` (the LLM): the session then fills it
    wants_findings: ClassVar[bool] = False

    @abc.abstractmethod
    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        """Up to ``n`` new proposals (``n >= 1``: the number of free workers to fill)."""

    def observe(self, state: SessionState, result: Result) -> None:  # noqa: B027 - optional hook
        """A finished experiment (optional: stateless researchers read ``state.history``)."""
