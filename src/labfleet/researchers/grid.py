"""Grid search: the Cartesian product of every knob's values, in a fixed order."""

from __future__ import annotations

import itertools

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher


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
        combos = (dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes))
        return [
            Proposal(description=f"grid: {space.describe(knobs)}", knobs=knobs, parent=state.baseline.id)
            for knobs in space.first_new(combos, space.tried(state), n)
        ]
