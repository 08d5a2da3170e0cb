"""Grid search: the Cartesian product of every knob's values, in a fixed order."""

from __future__ import annotations

import itertools

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import format_value


class GridResearcher(Researcher):
    """Ranges are cut into ``points`` values (geometric for log ranges); returns [] when done."""

    name = "grid"

    def __init__(self, points: int = 3) -> None:
        self.points = points

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        names = list(state.knobs)
        axes = [space.grid_values(state.knobs[name], self.points) for name in names]
        seen = space.tried(state)
        proposals = []
        for combo in itertools.product(*axes):
            knobs = dict(zip(names, combo, strict=True))
            if space.key(knobs) in seen:
                continue
            seen.add(space.key(knobs))
            text = ", ".join(f"{k}={format_value(v)}" for k, v in knobs.items())
            proposals.append(Proposal(description=f"grid: {text}", knobs=knobs, parent=state.baseline.id))
            if len(proposals) == n:
                break
        return proposals
