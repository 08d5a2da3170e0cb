"""Knob-space helpers shared by the built-in researchers: sampling, grids, identity."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

from labfleet.records import Experiment, SessionState
from labfleet.target import Knob, KnobValue


def key(knobs: Mapping[str, KnobValue]) -> tuple[tuple[str, KnobValue], ...]:
    """A hashable identity for a full set of knob values."""
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in knobs.items()))


def tried(state: SessionState) -> set[tuple[tuple[str, KnobValue], ...]]:
    """Knob settings already run or waiting to run."""
    experiments: Iterable[Experiment] = [r.experiment for r in state.history] + list(state.pending)
    return {key(e.knobs) for e in experiments}


def first_new(
    candidates: Iterable[dict[str, KnobValue]], seen: set[tuple[tuple[str, KnobValue], ...]], n: int
) -> list[dict[str, KnobValue]]:
    """The first ``n`` candidate settings not in ``seen`` (which records them)."""
    new = []
    for knobs in candidates:
        if key(knobs) in seen:
            continue
        seen.add(key(knobs))
        new.append(knobs)
        if len(new) == n:
            break
    return new


def describe(knobs: Mapping[str, KnobValue]) -> str:
    from labfleet.target import format_value

    return ", ".join(f"{k}={format_value(v)}" for k, v in knobs.items())


def fit(value: float, knob: Knob) -> KnobValue:
    """``value`` clipped into the range: an int for integer knobs, else 4 significant digits."""
    assert knob.low is not None and knob.high is not None
    value = min(knob.high, max(knob.low, value))
    if knob.integer:
        return int(round(value))
    short = float(f"{value:.4g}")  # short, readable values in diffs
    return short if knob.low <= short <= knob.high else value  # rounding must not leave the range


def sample(knob: Knob, rng: random.Random) -> KnobValue:
    """Uniform over choices; uniform (log-uniform with ``log``) over a range."""
    if knob.choices is not None:
        return rng.choice(knob.choices)
    assert knob.low is not None and knob.high is not None
    if knob.log:
        return fit(math.exp(rng.uniform(math.log(knob.low), math.log(knob.high))), knob)
    return fit(rng.uniform(knob.low, knob.high), knob)


def grid_values(knob: Knob, points: int) -> list[KnobValue]:
    """``points`` values spanning a range (geometric for log ranges); choices as given."""
    if knob.choices is not None:
        return list(knob.choices)
    assert knob.low is not None and knob.high is not None
    if points == 1:
        return [fit((knob.low + knob.high) / 2, knob)]
    if knob.log:
        ratio = (knob.high / knob.low) ** (1 / (points - 1))
        raw = [knob.low * ratio**i for i in range(points)]
    else:
        raw = [knob.low + (knob.high - knob.low) * i / (points - 1) for i in range(points)]
    values: list[KnobValue] = []
    for v in raw:
        cast = fit(v, knob)
        if cast not in values:
            values.append(cast)
    return values


def shift(knob: Knob, value: KnobValue, fraction: float) -> KnobValue:
    """``value`` moved by ``fraction`` of the knob's range (of its log range for log knobs), through ``fit``.

    An integer knob moves by at least 1 when ``fraction`` is not 0, so small steps do
    not collapse onto the value itself. Ranges only: choices have no distance.
    """
    assert knob.low is not None and knob.high is not None
    x = min(knob.high, max(knob.low, float(value)))
    if knob.log:
        target = math.exp(math.log(x) + fraction * (math.log(knob.high) - math.log(knob.low)))
    else:
        target = x + fraction * (knob.high - knob.low)
    new = fit(target, knob)
    if knob.integer and fraction and new == round(x):
        new = fit(round(x) + (1 if fraction > 0 else -1), knob)
    return new
