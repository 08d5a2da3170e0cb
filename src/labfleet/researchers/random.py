"""Random search: every knob sampled independently (log-uniform on log ranges)."""

from __future__ import annotations

import random

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import format_value

MAX_DRAWS = 1000  # per proposal, before deciding the space is exhausted


class RandomResearcher(Researcher):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        seen = space.tried(state)
        proposals = []
        for _ in range(n * MAX_DRAWS):
            knobs = {name: space.sample(knob, self.rng) for name, knob in state.knobs.items()}
            if space.key(knobs) in seen:
                continue
            seen.add(space.key(knobs))
            text = ", ".join(f"{k}={format_value(v)}" for k, v in knobs.items())
            proposals.append(Proposal(description=f"random: {text}", knobs=knobs, parent=state.baseline.id))
            if len(proposals) == n:
                break
        return proposals
