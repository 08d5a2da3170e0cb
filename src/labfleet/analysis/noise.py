"""The noise floor: how much a metric moves when nothing but the seed changes.

Runs of one experiment on one hardware class at one budget differ only by seed, so
their spread is pure noise. Pooling those spreads over every repeated experiment
(the baseline's noise repeats, confirmation repeats, validation repeats) gives a
per-class standard deviation that gets better as the session goes on.

A keep must then beat the champion by more than ``z`` standard errors of the
difference of the two means; a result that looks better but not by that much is
"unsure" and earns a confirmation repeat instead of a keep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from labfleet.enums import Role, VerdictOutcome
from labfleet.records import Run, RunStatus

MIN_DF = 2  # fewer pooled degrees of freedom than this: the noise is not known yet
DEFAULT_Z = 2.0  # one-sided: ~2.3% of pure-noise comparisons pass at once

# (experiment id, hardware class, budget seconds): runs that differ only by seed
Group = tuple[int, str, float]


@dataclass(frozen=True)
class NoiseFloor:
    hardware: str
    sd: float  # pooled standard deviation of one run's metric
    df: int  # pooled degrees of freedom: sum over groups of (runs - 1)
    groups: int  # experiments that contributed repeats

    def to_json(self) -> dict[str, float | int | str]:
        return {"hardware": self.hardware, "sd": self.sd, "df": self.df, "groups": self.groups}


# Runs whose seed was not chosen for looking good: a champion's screening run won a
# selection (its luck is in it), its validation and calibration runs did not.
UNBIASED_ROLES = frozenset({Role.VALIDATE, Role.CALIBRATE, Role.NOISE})


def samples_from_runs(runs: Iterable[Run], roles: frozenset[str] | None = None) -> dict[Group, list[float]]:
    """Done runs' metrics grouped by (experiment, hardware class, budget); only ``roles`` if given."""
    samples: dict[Group, list[float]] = {}
    for run in runs:
        if roles is not None and run.role not in roles:
            continue
        if run.status == RunStatus.DONE and run.metric is not None and run.hardware:
            samples.setdefault((run.experiment_id, run.hardware, run.budget_seconds or 0.0), []).append(run.metric)
    return samples


def noise_floors(samples: Mapping[Group, Sequence[float]]) -> dict[str, NoiseFloor]:
    """Pooled within-group sd per hardware class (only classes with at least MIN_DF)."""
    sums: dict[str, list[float]] = {}  # class -> [sum of squares, df, groups]
    for (_, hardware, _), values in samples.items():
        if len(values) < 2:
            continue
        mean = sum(values) / len(values)
        acc = sums.setdefault(hardware, [0.0, 0, 0])
        acc[0] += sum((v - mean) ** 2 for v in values)
        acc[1] += len(values) - 1
        acc[2] += 1
    return {
        hw: NoiseFloor(hw, math.sqrt(ss / df), int(df), int(groups))
        for hw, (ss, df, groups) in sums.items()
        if df >= MIN_DF
    }


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


@dataclass(frozen=True)
class Verdict:
    """A candidate against the champion on one hardware class."""

    outcome: str  # a VerdictOutcome: better | unsure | worse
    improvement: float  # champion mean minus candidate mean, signed so that > 0 is better
    threshold: float  # what the improvement had to exceed
    se: float | None  # standard error of the difference (None: noise unknown, margin rule)


def judge(
    candidate: Sequence[float], champion: Sequence[float], sd: float | None, direction: str,
    z: float = DEFAULT_Z, margin: float = 0.0,
) -> Verdict:
    """Better (beyond noise), unsure (better, within noise) or worse.

    Without a noise estimate the fixed margin decides alone (better or worse).
    """
    gain = mean(champion) - mean(candidate)
    if direction != "minimize":
        gain = -gain
    if sd is None:
        return Verdict(VerdictOutcome.BETTER if gain > margin else VerdictOutcome.WORSE, gain, margin, None)
    se = sd * math.sqrt(1 / len(candidate) + 1 / len(champion))
    threshold = max(margin, z * se)
    if gain > threshold:
        return Verdict(VerdictOutcome.BETTER, gain, threshold, se)
    return Verdict(VerdictOutcome.UNSURE if gain > 0 else VerdictOutcome.WORSE, gain, threshold, se)


def standard_error(sd: float | None, n: int) -> float | None:
    """The uncertainty of a mean of ``n`` runs (None when the noise is not known)."""
    return None if sd is None or n < 1 else sd / math.sqrt(n)
