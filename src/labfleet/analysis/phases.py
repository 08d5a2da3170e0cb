"""Phases and diminishing returns: what the search is improving now, and how fast.

A session moves through phases: in the seed run, hyperparameters, then
architecture, then width, then the optimizer, then diminishing returns. Here a
phase is a run of consecutive keeps that changed the same kind of thing (a knob's
``group`` in labfleet.toml, else the knob names, else "code"); the stretch after
the last keep, once it is long, is "diminishing returns".

Rates are measured over a sliding window of the latest decided experiments:
improvement per experiment and per hour, against the session's own average.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from labfleet.ledger.rows import Snapshot
from labfleet.records import Decision, Experiment

DIMINISHING = "diminishing returns"
WINDOW = 20  # decided experiments in the sliding window
SLOW_FRACTION = 0.1  # a window improving at under this share of the session's average rate is "diminishing"


@dataclass(frozen=True)
class Point:
    """One decided experiment, in decision order."""

    experiment: int
    at: float  # decided at
    metric: float | None
    kept: bool
    group: str  # what it changed


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float
    first: int  # experiment ids
    last: int
    experiments: int
    keeps: int
    gain: float  # improvement over the phase, > 0 is better


@dataclass(frozen=True)
class Progress:
    phases: list[Phase] = field(default_factory=list)
    window: int = 0  # experiments in the latest window
    gain_per_experiment: float = 0.0  # over the window
    gain_per_hour: float = 0.0
    average_per_experiment: float = 0.0  # over the whole session
    diminishing: bool = False
    since_keep: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def current(self) -> str:
        return self.phases[-1].name if self.phases else "starting"

    def to_json(self) -> dict[str, Any]:
        return {
            "current": self.current, "phases": [vars(p) for p in self.phases], "window": self.window,
            "gain_per_experiment": self.gain_per_experiment, "gain_per_hour": self.gain_per_hour,
            "average_per_experiment": self.average_per_experiment, "diminishing": self.diminishing,
            "since_keep": self.since_keep, "findings": self.findings,
        }


def change_group(knobs: Mapping[str, Any], parent: Mapping[str, Any] | None, groups: Mapping[str, str]) -> str:
    """What an experiment changed: the knobs' group(s), the knob names, or "code"."""
    if parent is None:
        return "baseline"
    changed = sorted(k for k in knobs if knobs.get(k) != parent.get(k))
    if not changed:
        return "code"
    named = sorted({groups.get(k) or k for k in changed})
    return ", ".join(named)


def points(experiments: Iterable[Experiment], decided_at: Mapping[int, float], groups: Mapping[str, str]) -> list[Point]:
    """The decided experiments as points, in decision order (``decided_at``: experiment id -> when)."""
    exps = list(experiments)
    knobs = {e.id: e.knobs for e in exps}
    decided = sorted((e for e in exps if e.decision != Decision.PENDING),
                     key=lambda e: (decided_at.get(e.id) or 0.0, e.id))
    return [
        Point(e.id, decided_at.get(e.id) or 0.0, e.metric, e.decision in (Decision.KEPT, Decision.BASELINE),
              change_group(knobs[e.id], knobs.get(e.parent_id, {}) if e.parent_id else None, groups))
        for e in decided
    ]


def points_from_snapshot(snapshot: Snapshot, groups: Mapping[str, str]) -> list[Point]:
    return points(snapshot.experiments, snapshot.decided_at, groups)


@dataclass
class _Open:
    name: str
    members: list[Point]
    before: float
    after: float
    keeps: int = 1


def progress(points: Sequence[Point], direction: str = "minimize", metric: str = "metric",
             window: int = WINDOW) -> Progress:
    """Phases, windowed improvement rates and the diminishing-returns flag."""
    sign = 1.0 if direction == "minimize" else -1.0
    base = next((p for p in points if p.group == "baseline" and p.metric is not None), None)
    if base is None or base.metric is None:
        return Progress()
    experiments = [p for p in points if p.group != "baseline"]
    best: float = base.metric
    phases: list[Phase] = []
    current: _Open | None = None
    since: list[Point] = []  # experiments since the latest keep
    for p in experiments:
        since.append(p)
        if not (p.kept and p.metric is not None):
            continue
        if current is not None and current.name == p.group:
            current.members += since
            current.keeps += 1
        else:
            if current is not None:
                phases.append(_close(current, sign))
            current = _Open(p.group, since, best, best)
        current.after = best = p.metric
        since = []
    if current is not None:
        phases.append(_close(current, sign))
    # the sliding window of the latest decided experiments
    recent = experiments[-window:]
    n = len(recent)
    before = base.metric
    for p in experiments[: len(experiments) - n]:
        if p.kept and p.metric is not None:
            before = p.metric
    gain = sign * (before - best)
    hours = (recent[-1].at - recent[0].at) / 3600 if n > 1 else 0.0
    average = sign * (base.metric - best) / len(experiments) if experiments else 0.0
    per_exp = gain / n if n else 0.0
    diminishing = len(since) >= window or (len(experiments) >= 2 * window and per_exp < SLOW_FRACTION * average)
    if diminishing and since:
        phases.append(Phase(DIMINISHING, since[0].at, since[-1].at, since[0].experiment, since[-1].experiment,
                            len(since), 0, 0.0))
    result = Progress(phases, n, per_exp, gain / hours if hours > 0 else 0.0, average, diminishing, len(since))
    return replace(result, findings=_findings(result, metric))


def _close(phase: _Open, sign: float) -> Phase:
    first, last = phase.members[0], phase.members[-1]
    return Phase(phase.name, first.at, last.at, first.experiment, last.experiment, len(phase.members),
                 phase.keeps, sign * (phase.before - phase.after))


def _findings(p: Progress, metric: str) -> list[str]:
    lines = []
    for i, phase in enumerate(q for q in p.phases if q.name != DIMINISHING):
        lines.append(f"phase {i + 1}, {phase.name} (e{phase.first}-e{phase.last}): {phase.keeps} keep"
                     f"{'s' if phase.keeps != 1 else ''}, {metric} improved by {phase.gain:.4f}")
    if p.window:
        share = p.gain_per_experiment / p.average_per_experiment if p.average_per_experiment > 0 else 0.0
        lines.append(f"last {p.window} experiments: {p.gain_per_experiment:.5f} per experiment"
                     f" ({share:.0%} of the session's average), {p.gain_per_hour:.4f} per hour")
    if p.diminishing:
        lines.append(f"diminishing returns: {p.since_keep} experiments since the last keep;"
                     " move to another knob group, try a bolder change, or stop")
    return lines
