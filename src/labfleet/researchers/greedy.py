"""Greedy: autoresearch's loop. One change at a time, always from the current best."""

from __future__ import annotations

import random

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import format_value


class GreedyResearcher(Researcher):
    """Each proposal moves one knob of the champion one step (x2 or /2, or the next choice).

    Stateless: everything comes from the snapshot. Untried single steps are taken in a
    seeded random order; when every neighbour of the champion has been tried, it takes
    two-step moves, and returns nothing once those are exhausted too.
    """

    name = "greedy"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        champion = state.champion or state.baseline
        if champion is None or not state.knobs:
            return []
        base = dict(champion.knobs)
        seen = space.tried(state)
        rng = random.Random(f"{self.seed}-{champion.id}-{len(state.history)}")
        candidates: list[tuple[str, object]] = []
        for name, knob in state.knobs.items():
            for value in space.neighbours(knob, base[name]):
                candidates.append((name, value))
        rng.shuffle(candidates)
        if not any(space.key({**base, k: v}) not in seen for k, v in candidates):
            candidates = [(k, w) for k, v in candidates for w in space.neighbours(state.knobs[k], v)]
            rng.shuffle(candidates)
        proposals = []
        for name, value in candidates:
            knobs = {**base, name: value}
            if space.key(knobs) in seen:
                continue
            seen.add(space.key(knobs))
            old, new = format_value(base[name]), format_value(value)  # type: ignore[arg-type]
            proposals.append(Proposal(
                description=f"{name} {old} -> {new}",
                hypothesis=f"moving {name} from {old} to {new} improves {state.metric}",
                knobs=knobs, parent=champion.id,
            ))
            if len(proposals) == n:
                break
        return proposals
