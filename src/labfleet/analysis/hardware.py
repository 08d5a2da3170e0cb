"""Hardware classes: how fast each one is, and how its metric differs for the same code.

An H200 runs more steps than an H100 in the same five minutes, so it reaches a lower
loss with identical code: results are compared within a class, and across classes
only through an offset measured on experiments that ran on both (the session's
calibration runs of the baseline on every class give the first such pair).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labfleet.records import Run, RunStatus

STEP_KEYS = ("num_steps", "steps")
TOKEN_RATE_KEYS = ("tokens_per_second", "tok_per_sec")
SECONDS_KEYS = ("training_seconds", "elapsed_seconds")


def _figure(figures: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = figures.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class ClassSummary:
    hardware: str
    runs: int  # done runs
    steps_per_run: float | None
    steps_per_second: float | None
    tokens_per_second: float | None
    price_per_hour: float = 0.0
    # versus the reference class, on experiments that ran on both
    speed_ratio: float | None = None  # steps per run here / there
    metric_offset: float | None = None  # metric here minus there, same code and budget
    offset_se: float | None = None
    pairs: int = 0


@dataclass(frozen=True)
class HardwareReport:
    reference: str | None
    classes: dict[str, ClassSummary] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def offset(self, hardware: str, reference: str) -> float | None:
        """metric on ``hardware`` minus metric on ``reference`` for the same code, if measured."""
        a, b = self.classes.get(hardware), self.classes.get(reference)
        if hardware == reference:
            return 0.0
        if a is None or b is None:
            return None
        oa = 0.0 if hardware == self.reference else a.metric_offset
        ob = 0.0 if reference == self.reference else b.metric_offset
        return None if oa is None or ob is None else oa - ob

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "classes": {k: vars(v) for k, v in self.classes.items()},
            "findings": self.findings,
        }


def hardware_report(
    runs: Iterable[Run], prices: Mapping[str, float] | None = None, metric: str = "metric",
) -> HardwareReport:
    """Speed per class from the runs' figures; metric offsets from paired experiments."""
    done = [r for r in runs if r.status == RunStatus.DONE and r.hardware and r.metric is not None]
    by_class: dict[str, list[Run]] = {}
    for run in done:
        by_class.setdefault(run.hardware or "", []).append(run)
    if not by_class:
        return HardwareReport(None)
    reference = max(by_class, key=lambda hw: (len(by_class[hw]), hw))
    # (experiment, budget) -> class -> metrics and steps
    cells: dict[tuple[int, float | None], dict[str, list[Run]]] = {}
    for run in done:
        cells.setdefault((run.experiment_id, run.budget_seconds), {}).setdefault(run.hardware or "", []).append(run)
    classes: dict[str, ClassSummary] = {}
    for hw, class_runs in sorted(by_class.items()):
        steps = [s for r in class_runs if (s := _figure(r.figures, STEP_KEYS)) is not None]
        rates = [s for r in class_runs if (s := _figure(r.figures, TOKEN_RATE_KEYS)) is not None]
        step_rates = []
        for r in class_runs:
            n, secs = _figure(r.figures, STEP_KEYS), _figure(r.figures, SECONDS_KEYS) or r.budget_seconds
            if n is not None and secs:
                step_rates.append(n / secs)
        diffs, ratios = [], []
        if hw != reference:
            for per_class in cells.values():
                here, there = per_class.get(hw), per_class.get(reference)
                if not here or not there:
                    continue
                diffs.append(_mean([r.metric for r in here]) - _mean([r.metric for r in there]))  # type: ignore[misc, operator]
                sh = _mean([s for r in here if (s := _figure(r.figures, STEP_KEYS)) is not None])
                st = _mean([s for r in there if (s := _figure(r.figures, STEP_KEYS)) is not None])
                if sh and st:
                    ratios.append(sh / st)
        offset = _mean(diffs)
        se = (math.sqrt(sum((d - offset) ** 2 for d in diffs) / (len(diffs) - 1)) / math.sqrt(len(diffs))
              if offset is not None and len(diffs) > 1 else None)
        classes[hw] = ClassSummary(
            hardware=hw, runs=len(class_runs), steps_per_run=_mean(steps), steps_per_second=_mean(step_rates),
            tokens_per_second=_mean(rates), price_per_hour=(prices or {}).get(hw, 0.0),
            speed_ratio=_mean(ratios), metric_offset=offset, offset_se=se, pairs=len(diffs),
        )
    return HardwareReport(reference, classes, _findings(reference, classes, metric))


def _findings(reference: str, classes: Mapping[str, ClassSummary], metric: str) -> list[str]:
    lines = []
    ref = classes[reference]
    for hw, c in classes.items():
        if hw == reference:
            continue
        ratio = c.speed_ratio
        if ratio is None and c.steps_per_second and ref.steps_per_second:
            ratio = c.steps_per_second / ref.steps_per_second
        if ratio is not None:
            more = "more" if ratio >= 1 else "fewer"
            lines.append(f"{hw} runs {abs(ratio - 1) * 100:.0f}% {more} steps than {reference} in the same budget")
        if c.metric_offset is not None:
            sign = "lower" if c.metric_offset < 0 else "higher"
            unc = f" ± {c.offset_se:.4f}" if c.offset_se is not None else ""
            lines.append(
                f"{hw}'s {metric} is {abs(c.metric_offset):.4f}{unc} {sign} than {reference}'s for the same code"
                f" ({c.pairs} paired experiment{'s' if c.pairs != 1 else ''}): compare within a class"
            )
        if c.price_per_hour and ref.price_per_hour and ratio:
            value = ratio / (c.price_per_hour / ref.price_per_hour)
            lines.append(f"{hw} gives {value:.2f}x the steps per dollar of {reference}")
    return lines
