"""Knob-space helpers shared by the built-in researchers: sampling, neighbours, identity."""

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


def _cast(value: float, knob: Knob) -> KnobValue:
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
        return _cast(math.exp(rng.uniform(math.log(knob.low), math.log(knob.high))), knob)
    return _cast(rng.uniform(knob.low, knob.high), knob)


def neighbours(knob: Knob, value: KnobValue) -> list[KnobValue]:
    """The values one step away: adjacent choices; x2 and /2 on log ranges; +-1/8 of linear ones."""
    if knob.choices is not None:
        if value not in knob.choices:
            return list(knob.choices)
        i = knob.choices.index(value)
        return [knob.choices[j] for j in (i + 1, i - 1) if 0 <= j < len(knob.choices)]
    assert knob.low is not None and knob.high is not None
    x = float(value)  # type: ignore[arg-type]
    if knob.log and x > 0:
        steps = [x * 2, x / 2]
    else:
        width = (knob.high - knob.low) / 8
        steps = [x + width, x - width]
    out = []
    for step in steps:
        v = _cast(step, knob)
        if v != value and v not in out:
            out.append(v)
    return out


def grid_values(knob: Knob, points: int) -> list[KnobValue]:
    """``points`` values spanning a range (geometric for log ranges); choices as given."""
    if knob.choices is not None:
        return list(knob.choices)
    assert knob.low is not None and knob.high is not None
    if points == 1:
        return [_cast((knob.low + knob.high) / 2, knob)]
    if knob.log:
        ratio = (knob.high / knob.low) ** (1 / (points - 1))
        raw = [knob.low * ratio**i for i in range(points)]
    else:
        raw = [knob.low + (knob.high - knob.low) * i / (points - 1) for i in range(points)]
    values: list[KnobValue] = []
    for v in raw:
        cast = _cast(v, knob)
        if cast not in values:
            values.append(cast)
    return values
