"""A scripted researcher: proposes a fixed list in order, then nothing; records what it saw.

The small fake for tests of the other stages (session, scheduler, executors, front
ends): its proposals are known in advance, so a test asserts what the system did
with them.
"""

from __future__ import annotations

from collections.abc import Iterable

from labfleet.records import Proposal, Result, SessionState
from labfleet.researchers.base import Researcher


class ScriptedResearcher(Researcher):
    """Proposes a fixed list, in order; then nothing (nothing either before a baseline exists)."""

    name = "scripted"

    def __init__(self, proposals: Iterable[Proposal] = (), seed: int = 0) -> None:
        self.todo = list(proposals)
        self.seed = seed
        self.observed: list[int] = []  # experiment ids, in the order observe saw them
        self.sizes: list[int] = []  # the n of every propose call

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        self.sizes.append(n)
        if state.champion is None and state.baseline is None:
            return []
        out, self.todo = self.todo[:n], self.todo[n:]
        return out

    def observe(self, state: SessionState, result: Result) -> None:
        self.observed.append(result.experiment.id)
