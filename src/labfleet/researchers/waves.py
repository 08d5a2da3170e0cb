"""Waves: two-level factorial designs around the champion, one group of knobs at a time.

A wave studies ``factors`` knobs at once: every knob at a low and a high level around
the champion (``step`` of its range down and up, in log space for log knobs; the two
neighbouring choices for choices), in a full 2^k factorial or a regular 2^(k-p)
fraction sized to the fleet. Its results give main effects and interactions
(``labfleet.analysis.effects.wave_effects``), not just a best cell.

Waves are asynchronous so no worker idles: a call first hands out the current
wave's cells not yet placed, then starts the next wave on the current champion.
Groups rotate through the knobs in the target's order (cyclically, the last group
topped up from the first knobs); once every group has had a wave, the step halves,
and after ``MAX_HALVINGS`` halvings it starts over at the full step. A group is
never studied twice at the same step around the same knob values, and a wave whose
cells were all tried already is skipped; when nothing is left around the champion
(every group at every step), it returns [].

A wave is finished once every cell has a result, decided or not: with [tiers] the
best cells wait for validation, and their screening runs (``state.screened``) count
at once, so the wave's best guess is proposed without waiting for the fast class.

Stateless in substance: the wave number, group, step, centre and design are written
into each proposal's tags, and the current wave and its placed cells are read back
from ``state.history`` and ``state.pending`` (a restarted session resumes the same
wave). Caches only save re-reading the history: ``propose`` costs O(new results).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labfleet.enums import Decision
from labfleet.errors import ConfigError
from labfleet.records import Experiment, Proposal, Result, SessionState
from labfleet.researchers import space
from labfleet.researchers.base import Researcher
from labfleet.target import Knob, KnobValue, format_value

FOLLOWUP_TAG = "best_of_wave"  # not "wave": effects are estimated from a wave's design cells only
COMBINE_TAG = "combines"  # a combination of concurrent waves' best cells: "1+2"
MAX_HALVINGS = 6  # step 0.5 -> 0.0078 of the range: finer than a noisy metric resolves
MIN_RUNS = 4
_DESIGN = re.compile(r"^2\^(?:(\d+)|\((\d+)-(\d+)\))$")

Key = tuple[tuple[str, KnobValue], ...]


@dataclass(frozen=True)
class Wave:
    """One wave's design, fully determined by its tags and the centre's knob values."""

    number: int
    group: int  # index of the knob group
    level: int  # halvings of the step
    centre: int  # experiment id of the champion it is centred on
    factors: tuple[str, ...]
    design: str  # "2^3", "2^(4-1)"
    cells: tuple[Mapping[str, KnobValue], ...]  # full knob settings, in the design's (Yates) order
    order: tuple[int, ...]  # the order cells are handed out (seeded shuffle: partial waves stay balanced on average)

    @property
    def runs(self) -> int:
        return len(self.cells)


@dataclass(frozen=True)
class _Tagged:
    """What one experiment's tags say about its wave."""

    wave: int
    cell: int
    group: int
    level: int
    centre: int
    factors: tuple[str, ...]
    runs: int


def _runs(design: str) -> int | None:
    match = _DESIGN.match(design)
    if match is None:
        return None
    full, k, p = match.groups()
    return 2 ** int(full) if full is not None else 2 ** (int(k) - int(p))


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def level_pair(knob: Knob, value: KnobValue, fraction: float) -> tuple[KnobValue, KnobValue] | None:
    """The (low, high) levels of one knob around ``value``; None when it cannot take two."""
    if knob.choices is not None:
        choices = knob.choices
        if len(choices) < 2:
            return None
        if value not in choices:
            return choices[0], choices[1]
        i = choices.index(value)
        if 0 < i < len(choices) - 1:
            return choices[i - 1], choices[i + 1]
        return (choices[0], choices[1]) if i == 0 else (choices[-2], choices[-1])  # an edge: itself and its neighbour
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    low, high = space.shift(knob, value, -fraction), space.shift(knob, value, fraction)
    return None if low == high else (low, high)


class WavesResearcher(Researcher):
    """Two-level factorial waves over rotating knob groups, centred on the champion."""

    name = "waves"

    def __init__(self, seed: int = 0, factors: int = 3, step: float = 0.5) -> None:
        if factors < 1:
            raise ConfigError(f"researcher 'waves': factors must be at least 1, got {factors}")
        if not 0 < step <= 1:
            raise ConfigError(f"researcher 'waves': step must be in (0, 1], got {step}")
        self.seed = seed
        self.factors = factors
        self.step = step
        self._reset(None)

    def _reset(self, session_id: int | None) -> None:
        self._session = session_id
        self._done_ids: set[int] = set()  # history experiments already read
        self._done_keys: set[Key] = set()
        self._knobs: dict[int, Mapping[str, KnobValue]] = {}  # experiment id -> knob values (centres)
        self._tagged: dict[int, list[_Tagged]] = {}  # wave number -> its finished experiments' tags
        self._results: dict[int, list[Result]] = {}  # wave number -> its finished results
        self._followed: set[int] = set()  # waves whose best guess was proposed
        self._built: dict[tuple[object, ...], Wave | None] = {}

    # ------------------------------------------------------------------ proposing

    def propose(self, state: SessionState, n: int) -> list[Proposal]:
        champion = state.champion or state.baseline
        if champion is None or not state.knobs:
            return []
        names = self.studied(state.knobs)
        if not names:
            return []
        self._sync(state)
        seen = set(self._done_keys)
        tagged = {number: list(items) for number, items in self._tagged.items()}
        knobs_by_id = dict(self._knobs)
        followed = set(self._followed)
        for exp in state.pending:
            if FOLLOWUP_TAG in exp.tags:
                followed.add(int(exp.tags[FOLLOWUP_TAG]))
            seen.add(space.key(exp.knobs))
            knobs_by_id.setdefault(exp.id, exp.knobs)
            info = self._read_tags(exp)
            if info is not None:
                tagged.setdefault(info.wave, []).append(info)

        # a wave counts as done on its screen results: winners still waiting for validation
        # (state.screened) give their screening run now, not once their validation decides
        results = {number: list(items) for number, items in self._results.items()}
        wave_tags = {number: list(items) for number, items in self._tagged.items()}
        for result in state.screened:
            info = self._read_tags(result.experiment)
            if info is not None and result.experiment.id not in self._done_ids:
                results.setdefault(info.wave, []).append(result)
                wave_tags.setdefault(info.wave, []).append(info)
        proposals: list[Proposal] = self._best_guesses(state, seen, knobs_by_id, followed, n, results, wave_tags)
        proposals += self._combinations(state, seen, knobs_by_id, n - len(proposals), results, wave_tags)
        last: _Tagged | None = None
        if tagged:
            number = max(tagged)
            last = tagged[number][0]
            wave = self._rebuild(state, last, knobs_by_id)
            if wave is not None:
                placed = {info.cell for info in tagged[number]}
                proposals += self._hand_out(state, wave, placed, seen, n)
        if len(proposals) < n:
            identities = {
                (space.key(knobs_by_id[items[0].centre]), items[0].group, items[0].level)
                for items in tagged.values() if items[0].centre in knobs_by_id
            }
            workers = n + len(state.pending)
            number = last.wave if last is not None else 0
            group, level = (last.group, last.level) if last is not None else (-1, 0)
            count = len(self.groups(names))
            for _ in range(count * (MAX_HALVINGS + 1) * 2):
                if len(proposals) >= n:
                    break
                group += 1
                if group % count == 0:  # every group of this round had a wave: halve the step
                    level = (level + 1) % (MAX_HALVINGS + 1)
                    if level:
                        group -= count
                    # past the finest step: the next round, knobs grouped afresh, at the full step
                identity = (space.key(champion.knobs), group, level)
                if identity in identities:  # this group was already studied around these values at this step
                    continue
                wave = self._build(state, number + 1, group, level, champion.id, champion.knobs, workers)
                if wave is None:
                    continue
                new = self._hand_out(state, wave, set(), seen, n - len(proposals))
                if not new:
                    continue  # every cell already tried: the wave would teach nothing new
                identities.add(identity)
                number += 1
                proposals += new
        return proposals

    def _best_guesses(
        self, state: SessionState, seen: set[Key], knobs_by_id: Mapping[int, Mapping[str, KnobValue]],
        followed: set[int], n: int, results_by_wave: Mapping[int, Sequence[Result]] | None = None,
        tags_by_wave: Mapping[int, Sequence[_Tagged]] | None = None,
    ) -> list[Proposal]:
        """For each finished wave: its centre with every clearly helpful level applied at once.

        A single cell rarely beats the champion beyond the noise, but a main effect
        averages half the wave's runs against the other half; combining the levels
        whose effects are beyond 2 standard errors is the wave's best guess, and the
        session keeps it if it is truly better. A wave is finished once every cell has a
        result: a decided one (``results_by_wave``, default the history read so far) or a
        screened one still waiting for validation.
        """
        out: list[Proposal] = []
        tagged = self._tagged if tags_by_wave is None else tags_by_wave
        for number, results in sorted((self._results if results_by_wave is None else results_by_wave).items()):
            if len(out) >= n or number in followed:
                continue
            info = tagged[number][0]
            if len(results) < info.runs or info.centre not in knobs_by_id:
                continue  # the wave is not finished
            followed.add(number)
            ok = [r for r in results if r.ok]
            hardware = [r.run.hardware for r in ok]
            sd = state.noise.get(max(set(hardware), key=hardware.count)) if hardware else None
            if sd is None or len(ok) < MIN_RUNS:
                continue
            guess = dict(knobs_by_id[info.centre])
            moved = []
            for name in info.factors:
                levels = sorted({r.experiment.knobs[name] for r in ok}, key=repr)
                if len(levels) != 2:
                    continue
                a = [r.run.metric for r in ok if r.experiment.knobs[name] == levels[0]]
                b = [r.run.metric for r in ok if r.experiment.knobs[name] == levels[1]]
                if not a or not b:
                    continue
                effect = sum(b) / len(b) - sum(a) / len(a)  # type: ignore[arg-type]
                se = sd * math.sqrt(1 / len(a) + 1 / len(b))
                if abs(effect) > 2 * se:
                    better_b = (effect < 0) == (state.direction == "minimize")
                    guess[name] = levels[1] if better_b else levels[0]
                    moved.append(name)
            if not moved or space.key(guess) in seen:
                continue
            seen.add(space.key(guess))
            values = " ".join(f"{name}={format_value(guess[name])}" for name in moved)
            out.append(Proposal(
                description=f"wave {number} best guess: {values}",
                hypothesis=f"the main effects of wave {number} beyond the noise, combined",
                knobs=guess, parent=info.centre, tags={FOLLOWUP_TAG: str(number), "tier": "validate"},
            ))
        return out

    def _combinations(
        self, state: SessionState, seen: set[Key], knobs_by_id: Mapping[int, Mapping[str, KnobValue]], n: int,
        results_by_wave: Mapping[int, Sequence[Result]], tags_by_wave: Mapping[int, Sequence[_Tagged]],
    ) -> list[Proposal]:
        """Concurrent waves around one centre, combined: the centre with every such wave's best cell applied.

        The fleet runs several waves at once around the same champion, each over its own
        group of knobs; a gain one finds and a gain another finds are otherwise only put
        together waves later (a wave centred on one winner rediscovers the other). Once two
        or more finished waves around a centre each have a winner (a cell kept, or not worse
        than the champion and waiting to be decided), their best winners' levels together are one proposal, validated at once with [tiers] (as a best
        guess is): on a surface where the groups add up, the combination beats each.
        """
        if n <= 0:
            return []
        by_centre: dict[int, list[tuple[int, Result, tuple[str, ...]]]] = {}
        for number, results in sorted(results_by_wave.items()):
            info = tags_by_wave[number][0]
            if len(results) < info.runs or info.centre not in knobs_by_id:
                continue  # not finished
            ok = [r for r in results if r.ok and r.run.metric is not None]
            if not ok:
                continue
            hardware = [r.run.hardware for r in ok]
            common = max(set(hardware), key=hardware.count)
            # winners: kept, or not worse than the champion and waiting (for validation or a confirmation)
            winners = [r for r in ok if r.run.hardware == common
                       and r.experiment.decision in (Decision.KEPT, Decision.PENDING)]
            if winners:
                sign = 1.0 if state.direction == "minimize" else -1.0
                best = min(winners, key=lambda r: sign * r.run.metric)  # type: ignore[operator]
                by_centre.setdefault(info.centre, []).append((number, best, info.factors))
        out: list[Proposal] = []
        for centre, bests in by_centre.items():
            if len(out) >= n or len(bests) < 2:
                continue
            guess = dict(knobs_by_id[centre])
            used: set[str] = set()
            numbers = []
            for number, best, factors in bests:
                if used & set(factors):
                    continue  # overlapping groups (a round's last group is topped up): the first wave's levels
                used |= set(factors)
                numbers.append(number)
                guess.update({name: best.experiment.knobs[name] for name in factors if name in best.experiment.knobs})
            if len(numbers) < 2 or space.key(guess) in seen:
                continue
            seen.add(space.key(guess))
            label = "+".join(str(k) for k in numbers)
            moved = [name for name in guess if guess[name] != knobs_by_id[centre].get(name)]
            values = " ".join(f"{name}={format_value(guess[name])}" for name in moved)
            out.append(Proposal(
                description=f"waves {label} combined: {values}",
                hypothesis=f"the best cells of waves {label} around experiment {centre} add up",
                knobs=guess, parent=centre, tags={COMBINE_TAG: label, "tier": "validate"},
            ))
        return out

    def studied(self, knobs: Mapping[str, Knob]) -> list[str]:
        """Knobs a wave can vary, in the target's order: ranges, and choices with two or more values."""
        return [name for name, knob in knobs.items() if knob.choices is None or len(knob.choices) >= 2]

    def groups(self, names: Sequence[str], round_: int = 0) -> list[tuple[str, ...]]:
        """Consecutive runs of ``factors`` knobs; the last is topped up from the first knobs.

        Round 0 takes the target's order; each later round a seeded shuffle, so a long
        session studies new combinations instead of running dry.
        """
        if round_:
            names = list(names)
            random.Random(f"{self.seed}-round-{round_}").shuffle(names)
        size = min(self.factors, len(names))
        count = math.ceil(len(names) / size)
        return [tuple(names[(g * size + j) % len(names)] for j in range(size)) for g in range(count)]

    def _hand_out(
        self, state: SessionState, wave: Wave, placed: set[int], seen: set[Key], n: int
    ) -> list[Proposal]:
        """Up to ``n`` of the wave's cells not placed yet and not tried (``seen`` records them)."""
        out: list[Proposal] = []
        for i in wave.order:
            if len(out) >= n:
                break
            if i in placed or space.key(wave.cells[i]) in seen:
                continue
            cell = wave.cells[i]
            seen.add(space.key(cell))
            values = " ".join(f"{name}={format_value(cell[name])}" for name in wave.factors)
            step = self.step * 0.5**wave.level
            out.append(Proposal(
                description=f"wave {wave.number} cell {i}: {values}",
                hypothesis=(f"{', '.join(wave.factors)} move {state.metric} around experiment {wave.centre}; "
                            f"a {wave.design} design at {step:g} of each range separates their effects"),
                knobs=cell,
                parent=wave.centre,
                tags={
                    "wave": str(wave.number), "cell": str(i), "design": wave.design,
                    "factors": ",".join(wave.factors), "group": str(wave.group), "step": f"{step:g}",
                    "centre": str(wave.centre),
                },
            ))
        return out

    # ------------------------------------------------------------------ designs

    def _build(
        self, state: SessionState, number: int, group: int, level: int,
        centre: int, centre_knobs: Mapping[str, KnobValue], size: int,
    ) -> Wave | None:
        """Wave ``number``: ``group`` at step level ``level`` around experiment ``centre``, for ``size`` workers.

        Its runs: ``size`` rounded up to a power of two, at least 4 and enough to separate
        every factor, at most the full factorial. None when no knob of the group can move.
        """
        names = self.studied(state.knobs)
        round_, index = divmod(group, len(self.groups(names)))
        groups = self.groups(names, round_)
        if group < 0:
            return None
        group_factors = groups[index]
        cache_key = (number, group, level, centre, size)
        if cache_key in self._built:
            return self._built[cache_key]
        fraction = self.step * 0.5**level
        pairs: dict[str, tuple[KnobValue, KnobValue]] = {}
        for name in group_factors:
            if name in centre_knobs:
                pair = level_pair(state.knobs[name], centre_knobs[name], fraction)
                if pair is not None:
                    pairs[name] = pair
        wave = None
        if pairs:
            from labfleet.analysis.effects import design_label, two_level_design  # numpy: only once a wave is made

            k = len(pairs)
            runs = min(max(MIN_RUNS, _pow2_at_least(size), _pow2_at_least(k + 1)), 2**k)
            design = two_level_design(list(pairs), runs)
            cells = tuple({**centre_knobs, **{name: pairs[name][row[name] > 0] for name in pairs}} for row in design)
            order = list(range(len(cells)))
            random.Random(f"{self.seed}-wave-{number}").shuffle(order)
            wave = Wave(number, group, level, centre, tuple(pairs), design_label(k, runs), cells, tuple(order))
        if len(self._built) > 256:
            self._built.clear()
        self._built[cache_key] = wave
        return wave

    def _rebuild(
        self, state: SessionState, info: _Tagged, knobs_by_id: Mapping[int, Mapping[str, KnobValue]]
    ) -> Wave | None:
        """The recorded wave ``info`` belongs to, recomputed from its tags (None: it cannot be)."""
        centre_knobs = knobs_by_id.get(info.centre)
        if centre_knobs is None:
            return None
        # Sized by its own run count, the design comes out as it was made.
        wave = self._build(state, info.wave, info.group, info.level, info.centre, centre_knobs, info.runs)
        if wave is None or wave.factors != info.factors or wave.runs != info.runs:
            return None  # the knobs changed since: leave that wave behind
        return wave

    # ------------------------------------------------------------------ reading the ledger

    def _read_tags(self, exp: Experiment) -> _Tagged | None:
        tags = exp.tags
        try:
            runs = _runs(tags["design"])
            step = float(tags["step"])
            info = _Tagged(
                wave=int(tags["wave"]), cell=int(tags["cell"]), group=int(tags["group"]),
                level=max(0, round(math.log2(self.step / step))), centre=int(tags["centre"]),
                factors=tuple(tags["factors"].split(",")), runs=runs or 0,
            )
        except (KeyError, ValueError, ZeroDivisionError):
            return None  # not one of ours
        return info if runs else None

    def _sync(self, state: SessionState) -> None:
        """Read results not read before; start over if the history is not the one cached."""
        if state.session_id != self._session:
            self._reset(state.session_id)
        known = sum(1 for r in state.history if r.experiment.id in self._done_ids)
        if known != len(self._done_ids):  # another history than the cached one: read it afresh
            self._reset(state.session_id)
        for result in state.history:
            exp = result.experiment
            if exp.id in self._done_ids:
                continue
            self._done_ids.add(exp.id)
            self._done_keys.add(space.key(exp.knobs))
            self._knobs[exp.id] = exp.knobs
            info = self._read_tags(exp)
            if info is not None:
                self._tagged.setdefault(info.wave, []).append(info)
                self._results.setdefault(info.wave, []).append(result)
            if FOLLOWUP_TAG in exp.tags:
                self._followed.add(int(exp.tags[FOLLOWUP_TAG]))
        for exp in (state.champion, state.baseline):
            if exp is not None:
                self._knobs.setdefault(exp.id, exp.knobs)

