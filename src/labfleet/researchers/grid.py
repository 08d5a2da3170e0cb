"""Grid search: the Cartesian product of every knob's values, in a fixed order."""

from __future__ import annotations

import itertools

from labfleet.errors import ConfigError
from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import Knob, KnobValue


class GridResearcher(Researcher):
    """Every combination of knob values, in ``itertools.product`` order over the knobs.

    Choices are taken as given; ranges are cut into ``points`` values (geometric on
    log ranges, rounded and deduplicated on integer ones). Combinations already run or
    pending are skipped, so the position in the grid comes from the ledger alone (a
    restart resumes). Returns [] once the grid is exhausted. ``seed`` is accepted for
    a uniform constructor and unused: the order is fixed.
    """

    name = "grid"

    def __init__(self, seed: int = 0, points: int = 3) -> None:
        if points < 1:
            raise ConfigError(f"researcher 'grid': points must be at least 1, got {points}")
        self.seed = seed
        self.points = points

    def values(self, knob: Knob) -> list[KnobValue]:
        """One knob's axis of the grid."""
        return space.grid_values(knob, self.points)

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        names = list(state.knobs)
        axes = [self.values(state.knobs[name]) for name in names]
        combos = (dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes))
        return [
            Proposal(description=f"grid: {space.describe(knobs)}", knobs=knobs, parent=state.baseline.id)
            for knobs in space.first_new(combos, space.tried(state), n)
        ]
