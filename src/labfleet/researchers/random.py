"""Random search: every knob sampled independently (log-uniform on log ranges)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from labfleet.records import Proposal, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import KnobValue

MAX_DRAWS = 1000  # per proposal, before deciding the space is exhausted


class RandomResearcher(Researcher):
    """Uniform samples of all knobs (choices uniformly, log ranges log-uniformly).

    Knob values fully specify a version, so every proposal starts from the baseline.
    Settings already run or pending are skipped. The generator is seeded once: after a
    restart it draws the same sequence again, and the settings already in the ledger
    are skipped, so the session carries on where it stopped.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self._keys: dict[int, tuple[tuple[str, KnobValue], ...]] = {}  # experiment id -> its setting
        self._seen: set[tuple[tuple[str, KnobValue], ...]] = set()  # the settings of every id in _keys

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        if state.baseline is None or not state.knobs:
            return []
        picks = space.first_new(self._draws(state, n * MAX_DRAWS), self._tried(state), n)
        return [
            Proposal(description=f"random: {space.describe(knobs)}", knobs=knobs, parent=state.baseline.id)
            for knobs in picks
        ]

    def _tried(self, state: SessionState) -> set[tuple[tuple[str, KnobValue], ...]]:
        """``space.tried``, kept on from call to call: each experiment's key is computed once (its
        knobs never change), only the pending ones newer than every one seen are looked at, and the
        whole history and pending are scanned only when they hold an experiment never seen (one
        decided between two calls, an older one reopened by another connection)."""
        keys, seen = self._keys, self._seen
        for exp in reversed(state.pending):  # by id: the new ones are the last
            if exp.id in keys:
                break
            seen.add(keys.setdefault(exp.id, space.key(exp.knobs)))
        if len(keys) < len(state.history) + len(state.pending):  # one not seen yet (older, or never pending)
            for exp in (*(r.experiment for r in state.history), *state.pending):
                if exp.id not in keys:
                    seen.add(keys.setdefault(exp.id, space.key(exp.knobs)))
        return seen

    def _draws(self, state: SessionState, count: int) -> Iterator[dict[str, KnobValue]]:
        for _ in range(count):
            yield {name: space.sample(knob, self.rng) for name, knob in state.knobs.items()}
