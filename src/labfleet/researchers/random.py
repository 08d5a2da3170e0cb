"""Random search: every knob sampled independently (log-uniform on log ranges)."""

from __future__ import annotations

import random

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher

MAX_DRAWS = 1000  # per proposal, before deciding the space is exhausted


class RandomResearcher(Researcher):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        draws = ({name: space.sample(knob, self.rng) for name, knob in state.knobs.items()} for _ in range(n * MAX_DRAWS))
        return [
            Proposal(description=f"random: {space.describe(knobs)}", knobs=knobs, parent=state.baseline.id)
            for knobs in space.first_new(draws, space.tried(state), n)
        ]
