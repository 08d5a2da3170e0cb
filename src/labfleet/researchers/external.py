"""The external researcher: proposes nothing; an outside agent submits instead.

A session driven by Claude Code, Codex or an MCP client (``labfleet submit``,
``labfleet mcp``) runs with this researcher under ``labfleet serve``: the
scheduler places whatever arrives in the ledger's queue and decides it as usual.
"""

from __future__ import annotations

from labfleet.records import Proposal, SessionState
from labfleet.researchers.base import Researcher


class ExternalResearcher(Researcher):
    name = "external"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        return []
