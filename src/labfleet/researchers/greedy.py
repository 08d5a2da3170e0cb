"""Greedy: autoresearch's loop. One change at a time, always from the current best."""

from __future__ import annotations

import random
from collections.abc import Mapping

from labfleet.errors import ConfigError
from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import Knob, KnobValue, format_value

LOG_FACTOR = 2.0  # first step on log ranges: x2 and /2
LINEAR_FRACTION = 1 / 8  # first step on linear ranges: +-1/8 of the range


def steps(knob: Knob, value: KnobValue, level: int) -> list[KnobValue]:
    """The values one step of size ``level`` away (0: x2, /2 or +-1/8; each level halves the step).

    Choices: level 0 gives the neighbouring choices, level 1 every other choice.
    Integer knobs always move by at least 1, so small steps do not collapse.
    """
    if knob.choices is not None:
        if value not in knob.choices:
            return list(knob.choices) if level == 0 else []
        i = knob.choices.index(value)
        near = [knob.choices[j] for j in (i + 1, i - 1) if 0 <= j < len(knob.choices)]
        if level == 0:
            return near
        return [c for c in knob.choices if c != value and c not in near] if level == 1 else []
    assert knob.low is not None and knob.high is not None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return []
    x = float(value)
    if knob.log and x > 0:
        factor = LOG_FACTOR ** (0.5**level)
        raw = [(x * factor, 1), (x / factor, -1)]
    else:
        width = (knob.high - knob.low) * LINEAR_FRACTION * 0.5**level
        raw = [(x + width, 1), (x - width, -1)]
    out: list[KnobValue] = []
    for target, direction in raw:
        new = space.fit(target, knob)
        if knob.integer and new == x:
            new = space.fit(x + direction, knob)
        if new != x and new not in out:
            out.append(new)
    return out


class GreedyResearcher(Researcher):
    """Each proposal changes one knob of the champion (``state.champion``, else the baseline).

    Steps: x2 or /2 on log ranges, +-1/8 of the range on linear ones, the neighbouring
    choice for choices. A batch of ``n`` takes different knobs first (round-robin over
    a seeded shuffle), then the other direction. Settings already run or pending are
    never proposed again; once every step around the champion is tried, the step is
    halved (x2**0.5, then x2**0.25, ...; other choices), up to ``levels`` sizes, and
    after that it returns [] (the champion is a local optimum at the finest step).

    Stateless: everything comes from the snapshot, so a restart changes nothing.
    """

    name = "greedy"

    def __init__(self, seed: int = 0, levels: int = 3) -> None:
        if levels < 1:
            raise ConfigError(f"researcher 'greedy': levels must be at least 1, got {levels}")
        self.seed = seed
        self.levels = levels

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        champion = state.champion or state.baseline
        if champion is None or not state.knobs:
            return []
        base = dict(champion.knobs)
        seen = space.tried(state)
        # Seeded by the snapshot, not by call count: the same ledger gives the same batch.
        rng = random.Random(f"{self.seed}-{champion.id}-{len(state.history)}-{len(state.pending)}")
        proposals: list[Proposal] = []
        for level in range(self.levels):
            for name, value in self._candidates(state.knobs, base, level, rng):
                knobs = {**base, name: value}
                if space.key(knobs) in seen:
                    continue
                seen.add(space.key(knobs))
                old, new = format_value(base[name]), format_value(value)
                proposals.append(Proposal(
                    description=f"{name} {old} -> {new}",
                    hypothesis=f"{name} at {new} instead of {old} improves {state.metric}",
                    knobs=knobs,
                    parent=champion.id,
                ))
                if len(proposals) == n:
                    return proposals
        return proposals

    @staticmethod
    def _candidates(
        knobs: Mapping[str, Knob], base: Mapping[str, KnobValue], level: int, rng: random.Random
    ) -> list[tuple[str, KnobValue]]:
        """Single-knob moves at one step size: one per knob first, then the second direction."""
        per_knob = []
        for name, knob in knobs.items():
            if name not in base:  # a knob the champion's version does not record: leave it alone
                continue
            moves = steps(knob, base[name], level)
            rng.shuffle(moves)
            per_knob.append([(name, v) for v in moves])
        rng.shuffle(per_knob)
        depth = max((len(m) for m in per_knob), default=0)
        return [moves[i] for i in range(depth) for moves in per_knob if i < len(moves)]
