"""Deciding: an experiment's runs against the champion, under the measured noise.

A result is compared with the champion on its hardware class and budget. With the
noise measured, a keep must beat it by ``z`` standard errors of the difference;
a result better but within the noise earns a confirmation repeat (``Repeat``) on
the same class. With [tiers], a screened result that is not worse is a winner
(``Validate``): the validate class is scarce, so ``rank_winners`` orders the
waiting by the probability that they beat the champion given the noise, sends the
best to validation first, drops the ones the champion has since passed before they
cost a run, and confirms the rest cheaply on the screen class while the validate
class is the bottleneck (a confirmation either drops a lucky winner or raises its
rank). Validated runs decide alone: keep, discard, or one more validation seed.

Provisional keeps: a screened winner that beats the lead beyond the screen class's
noise becomes the *lead* at once (``becomes_lead``): the researcher proposes around
it and later screens are judged against it (``lead_snapshot``), as without tiers,
while its validation decides whether it is kept (confirmed) or discarded (the lead
falls back to the confirmed champion). The confirmed champion alone is what
validation runs are judged against, what the branch holds, and what counts as kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from labfleet.analysis.noise import NoiseFloor, Verdict, judge
from labfleet.enums import Role, VerdictOutcome
from labfleet.records import Decision, Experiment, Run, RunStatus
from labfleet.scheduler.base import (
    VALIDATION_SEED_OFFSET,
    Baseline,
    Discard,
    Fail,
    Keep,
    Queue,
    Repeat,
    Snapshot,
    Validate,
    Wait,
)
from labfleet.scheduler.placing import role_allows
from labfleet.target import DEFAULT_TIERS, Tiers


def _avg(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def compared(runs: Sequence[Run]) -> tuple[str, float, list[float]]:
    """The hardware class and budget most of ``runs`` ran on, and their metrics there."""
    groups: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        assert run.metric is not None
        groups.setdefault((run.hardware or "", run.budget_seconds or 0.0), []).append(run.metric)
    (hardware, budget), metrics = max(groups.items(), key=lambda kv: len(kv[1]))
    return hardware, budget, metrics


def hardware_offset(
    unbiased: Mapping[tuple[int, str, float], Sequence[float]], hardware: str, other: str, budget: float,
) -> float | None:
    """Mean metric on ``hardware`` minus on ``other`` over experiments run on both (unbiased runs)."""
    by_exp: dict[int, dict[str, Sequence[float]]] = {}
    for (exp_id, hw, b), values in unbiased.items():
        if b == budget and hw in (hardware, other):
            by_exp.setdefault(exp_id, {})[hw] = values
    diffs = [_avg(v[hardware]) - _avg(v[other]) for v in by_exp.values() if len(v) == 2]
    return _avg(diffs) if diffs else None


def champion_metrics(snap: Snapshot, hardware: str, budget: float) -> list[float]:
    """The champion's metrics on ``hardware`` at ``budget``, normalized if it never ran there.

    An H200 runs more steps than an H100 in the same budget, so numbers are compared
    within a class; a class the champion has no run on gets its runs from another
    class shifted by the offset measured on experiments that ran on both. Unbiased
    runs (calibration, validation) first: the champion's screening run won a selection.
    """
    champion = snap.champion
    assert champion is not None and snap.champion_metric is not None
    key = (champion.id, hardware, budget)
    own = snap.unbiased.get(key)
    if own:
        return list(own) + _shifted_from_other_classes(snap, champion.id, hardware, budget)
    own = snap.samples.get(key)
    if own:
        return list(own)
    for (exp_id, other, b), values in snap.unbiased.items():
        if exp_id == champion.id and b == budget:
            offset = hardware_offset(snap.unbiased, hardware, other, budget)
            if offset is not None:
                return [v + offset for v in values]
    return [snap.champion_metric]


CONFIRM_SEED_OFFSET = 100  # seeds of confirmations queued beside a validation (never a screening seed)
POOL_MIN_EXPERIMENTS = 1  # other experiments a class offset must come from to pool a candidate's runs across it


def pooled_evidence(snap: Snapshot, exp_id: int, done: Sequence[Run]) -> tuple[str, float, list[float]]:
    """A validated candidate's unbiased runs on every tier, on its validation class's scale (``judge_pooled``).

    Its validation runs, plus its fresh-seed runs on the screen class (confirmations, a
    lead's calibration) shifted by the offset between the classes measured on other
    experiments (never on itself, which would copy its own validation mean back). Its
    first screening run is left out: it won a selection. A confirmation on the plentiful
    screen class then counts as much as another seed on the scarce validate class.
    """
    validated = [r for r in done if r.role == Role.VALIDATE]
    hardware, budget, metrics = compared(validated)
    metrics = list(metrics)
    others = {k: v for k, v in snap.unbiased.items() if k[0] != exp_id}
    offsets: dict[str, float | None] = {}
    for run in done:
        if run.role not in (Role.CONFIRM, Role.CALIBRATE, Role.NOISE) or run.metric is None:
            continue
        other = run.hardware or ""
        if other == hardware or (run.budget_seconds or 0.0) != budget:
            continue
        if other not in offsets:
            both = {k[0] for k in others if k[1] == hardware and k[2] == budget} & \
                {k[0] for k in others if k[1] == other and k[2] == budget}
            offsets[other] = hardware_offset(others, hardware, other, budget) \
                if len(both) >= POOL_MIN_EXPERIMENTS else None
        offset = offsets[other]
        if offset is not None:
            metrics.append(run.metric + offset)
    return hardware, budget, metrics


def judge_pooled(snap: Snapshot, exp_id: int, runs: Sequence[Run], noise: Mapping[str, float]) -> Verdict:
    """A validated candidate against the champion on its validation class, screen and validate evidence pooled."""
    hardware, budget, metrics = pooled_evidence(snap, exp_id, _done(runs))
    return judge_on(snap, metrics, hardware, budget, noise)


MIN_OFFSET_EXPERIMENTS = 2  # experiments (besides the champion) a class offset must come from to pool across it


def _shifted_from_other_classes(snap: Snapshot, champion_id: int, hardware: str, budget: float) -> list[float]:
    """The champion's unbiased runs on other classes, shifted onto ``hardware`` by the measured offset.

    Every comparison on the validate class is against the champion there, often one
    validation run: its other unbiased runs (calibration on the screen class) add to
    that reference once the offset between the classes is measured on at least
    ``MIN_OFFSET_EXPERIMENTS`` other experiments (never on the champion alone, which
    would only copy its own mean back).
    """
    others = {k: v for k, v in snap.unbiased.items() if k[0] != champion_id}
    out: list[float] = []
    for (exp_id, other, b), values in snap.unbiased.items():
        if exp_id != champion_id or b != budget or other == hardware:
            continue
        both = {k[0] for k in others if k[1] == hardware and k[2] == budget} & \
            {k[0] for k in others if k[1] == other and k[2] == budget}
        offset = hardware_offset(others, hardware, other, budget)
        if offset is not None and len(both) >= MIN_OFFSET_EXPERIMENTS:
            out += [v + offset for v in values]
    return out


def class_noise(floors: Mapping[str, NoiseFloor], prior_df: int = 8) -> dict[str, float]:
    """Per-class noise sd, each partly pooled with the other classes' (``prior_df`` degrees of freedom at most).

    A class with few repeats (the validate class: a few H200s, one validation seed per
    winner) has a noisy sd of its own: an estimate too high makes every validation
    "unsure" and costs another scarce run, one too low keeps lucky winners. Its own
    figure is combined with the others' pooled one, weighted by degrees of freedom,
    the others counting for ``prior_df`` at most; a well-measured class keeps its own.
    """
    out = {}
    for hw, floor in floors.items():
        rest = [f for h, f in floors.items() if h != hw]
        df_rest = sum(f.df for f in rest)
        if not rest or df_rest == 0:
            out[hw] = floor.sd
            continue
        var_rest = sum(f.df * f.sd**2 for f in rest) / df_rest
        w = min(df_rest, prior_df)
        out[hw] = math.sqrt((floor.df * floor.sd**2 + w * var_rest) / (floor.df + w))
    return out


def judge_on(snap: Snapshot, metrics: Sequence[float], hardware: str, budget: float,
             noise: Mapping[str, float]) -> Verdict:
    """``metrics`` against the champion on ``hardware`` (``noise``: class -> sd of one run)."""
    sd = noise.get(hardware) if snap.keep == "noise" else None
    return judge(list(metrics), champion_metrics(snap, hardware, budget), sd, snap.direction,
                 z=snap.z, margin=snap.margin)


def probability_better(verdict: Verdict) -> float:
    """The probability that the candidate truly beats the champion, given the noise (normal model)."""
    if verdict.se is None or verdict.se <= 0:
        return 1.0 if verdict.improvement > verdict.threshold else 0.0
    return 0.5 * (1.0 + math.erf(verdict.improvement / (verdict.se * math.sqrt(2.0))))


def _done(runs: Iterable[Run]) -> list[Run]:
    return [r for r in runs if r.status == RunStatus.DONE and r.metric is not None]


# a winner the session's end (--hours) left unconfirmed: never kept on one lucky seed
ENDED_WITHIN_NOISE = "within the noise, and the session ended before another seed"
ENDED_UNVALIDATED = "the session ended before it could be validated"


def decide(snap: Snapshot, exp: Experiment, runs: Sequence[Run], noise: Mapping[str, float]) -> object:
    """Keep | Discard | Fail | Repeat | Validate | Wait for a proposed experiment once its runs are final."""
    # a provisional lead's calibration run measures it for later screens: its decision does not wait for it
    if exp.decision != Decision.PENDING or not runs or any(not r.status.final and r.role != "calibrate" for r in runs):
        return Wait("runs still active" if runs else "no runs")
    runs = [r for r in runs if r.status.final]
    if snap.champion_metric is None:
        return Wait("the baseline is not known yet")
    done = _done(runs)
    if not done:
        return Fail(runs[-1])
    validated = [r for r in done if r.role == Role.VALIDATE]
    if validated and snap.tiers is not None:
        hardware, budget, metrics = pooled_evidence(snap, exp.id, done)
    else:
        hardware, budget, metrics = compared(validated or done)
    verdict = judge_on(snap, metrics, hardware, budget, noise)
    last = done[-1]
    if not validated and verdict.outcome != VerdictOutcome.WORSE:
        if snap.tiers is not None:
            confirmed = any(r.role == Role.CONFIRM for r in done)
            if confirmed and verdict.outcome == VerdictOutcome.BETTER:
                # screen and confirmation seeds together beyond the noise: the confirmation decides,
                # the scarce validate class is not needed for it
                return Keep(_avg(metrics), verdict, last)
            if snap.winding_down and confirmed:
                return Discard(_avg(metrics), verdict, last, "within the noise when the session ended")
            return Validate(verdict, last)  # after the end, rank_winners decides it
        if verdict.outcome == VerdictOutcome.UNSURE and len(metrics) <= snap.confirm_repeats:
            if snap.ended:
                return Discard(_avg(metrics), verdict, last, ENDED_WITHIN_NOISE)
            return Repeat(exp.seed + len(runs), Role.CONFIRM, hardware, verdict, last)
    repeats = (snap.tiers or DEFAULT_TIERS).validate_.repeats
    # at most repeats + confirm_repeats validation seeds, and one pooled seed more than that in all
    more = len(validated) < repeats + snap.confirm_repeats and len(metrics) <= repeats + snap.confirm_repeats
    if validated and verdict.outcome == VerdictOutcome.UNSURE and more:
        # better on the fast class but within the noise: one more seed there and (with tiers) a cheap
        # confirmation on the screen class at the same time, pooled, then decide
        # (winding down or ended: decided on what it has, so nothing is left pending at the end)
        if snap.ended:
            return Discard(_avg(metrics), verdict, last, ENDED_WITHIN_NOISE)
        if not snap.winding_down:
            extra = ()
            screen = [r for r in done
                      if r.role != Role.VALIDATE and role_allows(snap.tiers, Role.SCREEN, r.hardware or "")]
            if snap.tiers is not None and screen:
                extra = (Queue(exp.id, exp.seed + CONFIRM_SEED_OFFSET + len(done), Role.CONFIRM, screen[0].hardware),)
            return Repeat(exp.seed + VALIDATION_SEED_OFFSET + len(validated), Role.VALIDATE, hardware, verdict, last,
                          extra=extra)
    if verdict.outcome == VerdictOutcome.BETTER:
        return Keep(_avg(metrics), verdict, last)
    return Discard(_avg(metrics), verdict, last)


def decide_baseline(exp: Experiment, runs: Sequence[Run]) -> object:
    """The baseline counts from its first done run; later seeds on that class refine its figure.

    ``Fail`` when every run ended without a metric and none was lost (the target is broken).
    """
    done = _done(runs)
    if exp.decision != Decision.PENDING:
        if not done:
            return Wait()
        first = done[0]
        same = [r.metric for r in done if (r.hardware, r.budget_seconds) == (first.hardware, first.budget_seconds)]
        return Baseline(_avg(same), first, refine=True)  # type: ignore[arg-type]
    if not done:
        if runs and all(r.status.final and r.status != RunStatus.LOST for r in runs):
            return Fail(runs[0])
        return Wait("the baseline has not finished")
    return Baseline(done[0].metric, done[0])  # type: ignore[arg-type]


def rank_winners(
    snap: Snapshot, waiting: Sequence[tuple[Experiment, Sequence[Run]]], slots: int, noise: Mapping[str, float],
    confirm: bool = True,
) -> tuple[list[int], list[tuple[int, Discard]], list[Queue]]:
    """Screened winners waiting for the validate class: (promote these, discard these, confirm these).

    Ranked by the probability of beating the champion; the best ``slots`` are
    promoted; those the champion has passed since are discarded before they cost a
    run; with ``confirm``, the rest that have a single screening seed get a
    confirmation on their screen class (cheap, and the screen class is not the
    bottleneck while winners queue for validation).
    """
    ranked: list[tuple[float, float, int, Sequence[Run]]] = []
    discards: list[tuple[int, Discard]] = []
    for exp, runs in waiting:
        done = _done(runs)
        if not done:
            continue
        hardware, budget, metrics = compared(done)
        verdict = judge_on(snap, metrics, hardware, budget, noise)
        if verdict.outcome == VerdictOutcome.WORSE:
            discards.append((exp.id, Discard(_avg(metrics), verdict, done[-1], "no longer beats the best")))
            continue
        if snap.ended:  # nothing starts after --hours: a winner not validated by then is not kept
            discards.append((exp.id, Discard(_avg(metrics), verdict, done[-1], ENDED_UNVALIDATED)))
            continue
        p_better = probability_better(verdict)
        if p_better < snap.drop_below:
            discards.append((exp.id, Discard(_avg(metrics), verdict, done[-1],
                                             f"fell behind: P(better) {p_better:.2f} < {snap.drop_below:.2f}")))
            continue
        ranked.append((-probability_better(verdict), -verdict.improvement, exp.id, done))
    ranked.sort(key=lambda r: r[:3])
    promote = [exp_id for _, _, exp_id, _ in ranked[:max(slots, 0)]]
    confirms: list[Queue] = []
    if snap.winding_down:
        # nothing new starts once proposing stops: winners the validate class cannot take now are
        # decided on what they have (never kept unvalidated), so the fleet is not held for them
        for _, _, exp_id, done in ranked[max(slots, 0):]:
            _, _, metrics = compared(done)
            discards.append((exp_id, Discard(_avg(metrics), judge_on(snap, metrics, *compared(done)[:2], noise),
                                             done[-1], "not validated: the session ended with better-ranked"
                                             " winners ahead")))
        return promote, discards, confirms
    if confirm:
        by_id = {exp.id: exp for exp, _ in waiting}
        for _, _, exp_id, done in ranked[max(slots, 0):]:
            hardware, _, metrics = compared(done)
            if len(metrics) <= snap.confirm_repeats and role_allows(snap.tiers, "screen", hardware):
                exp = by_id[exp_id]
                confirms.append(Queue(exp_id, exp.seed + len(done), "confirm", hardware))
    return promote, discards, confirms


def plan_calibration(
    base: Experiment, runs: Sequence[Run], classes: Sequence[str], tiers: Tiers | None, want: int,
) -> tuple[tuple[int, str] | None, list[Queue]]:
    """The baseline on every hardware class, ``want`` runs each (1 + noise repeats).

    Returns (pin the first queued run to this class, or None; runs to queue).
    Idempotent: it counts the runs already there, so a resume adds nothing twice.
    """
    classes = list(dict.fromkeys(classes))
    screen = [c for c in classes if role_allows(tiers, "screen", c)] or classes
    classes = sorted(classes, key=lambda c: c not in screen)  # the first run screens
    runs = [r for r in runs if r.status not in (RunStatus.LOST, RunStatus.CANCELLED)]
    pin = None
    places = [r.place_on or r.hardware for r in runs]
    if runs and runs[0].status == RunStatus.QUEUED and runs[0].place_on is None:
        pin = (runs[0].id, classes[0])
        places[0] = classes[0]
    queue: list[Queue] = []
    seeds = len(runs)
    for hw in classes:
        have = sum(1 for p in places if p == hw)
        for k in range(have, want):
            role = Role.VALIDATE if tiers is not None and hw not in screen else (Role.NOISE if k else Role.CALIBRATE)
            queue.append(Queue(base.id, base.seed + seeds, role, hw))
            seeds += 1
    return pin, queue


def plan_beside_validation(exp: Experiment, runs: Sequence[Run], tiers: Tiers | None) -> list[Queue]:
    """A screen-class confirmation queued with a winner's first validation seed, so both decide at once.

    The validate class is scarce and one seed there rarely decides a gain within a few
    noise sd's: a fresh seed on the plentiful screen class, run at the same time and
    pooled through the class offset (``pooled_evidence``), halves the rounds a winner
    waits. None when it already has a fresh seed on a screen class (a lead's calibration).
    """
    if tiers is None:
        return []
    live = [r for r in runs if r.status not in (RunStatus.LOST, RunStatus.CANCELLED)]
    if any(r.role in (Role.CONFIRM, Role.CALIBRATE) for r in live):
        return []
    screened = [r for r in live if r.role == Role.SCREEN and r.hardware and role_allows(tiers, Role.SCREEN, r.hardware)]
    if not screened:
        return []
    return [Queue(exp.id, exp.seed + CONFIRM_SEED_OFFSET, Role.CONFIRM, screened[0].hardware)]


def plan_champion_calibration(
    exp: Experiment, classes: Sequence[str], tiers: Tiers | None,
    unbiased: Mapping[tuple[int, str, float], Sequence[float]], budgets: Mapping[str, float],
) -> list[Queue]:
    """One fresh-seed run of a new champion on every class it has no unbiased run on.

    Its own screening run won a selection, so later candidates would be measured
    against its luck; the calibration run is what they are compared with, and it
    measures the class offsets on the current code. ``budgets``: role -> budget.
    """
    out = []
    for k, hw in enumerate(dict.fromkeys(classes)):
        role = Role.CALIBRATE if role_allows(tiers, Role.SCREEN, hw) else Role.VALIDATE
        if unbiased.get((exp.id, hw, budgets[role])):
            continue
        out.append(Queue(exp.id, exp.seed + VALIDATION_SEED_OFFSET // 2 + k, role, hw))
    return out


def lead_snapshot(snap: Snapshot, lead: Experiment | None, lead_metric: float | None) -> Snapshot:
    """The snapshot screens are judged against: the provisional lead in the champion's place, if any."""
    if lead is None or lead_metric is None:
        return snap
    return dataclasses.replace(snap, champion=lead, champion_metric=lead_metric)


def becomes_lead(snap: Snapshot, decision: object, beats_champion: bool = False) -> bool:
    """Whether a screened winner (``Validate``; ``snap``: judged against the lead) leads provisionally.

    It leads when it beats the lead beyond the screen noise; or, with ``beats_champion``
    (it beats the confirmed champion beyond the noise, see ``still_leads``), when it beats
    the lead at all: winners that arrive together are then not led by whichever was
    collected first, and the researcher centres on the best screened estimate.
    """
    if snap.tiers is None or not isinstance(decision, Validate):
        return False
    return decision.verdict.outcome == VerdictOutcome.BETTER or (beats_champion and decision.verdict.improvement > 0)


def still_leads(snap: Snapshot, runs: Sequence[Run], noise: Mapping[str, float]) -> bool:
    """After a keep: whether a provisional lead's screening runs still beat the (new) confirmed champion."""
    done = [r for r in _done(runs) if r.role != Role.VALIDATE]
    if not done or snap.champion_metric is None:
        return False
    hardware, budget, metrics = compared(done)
    return judge_on(snap, metrics, hardware, budget, noise).outcome == VerdictOutcome.BETTER


def plan_noise_fill(base: Experiment, runs: Sequence[Run], free: Sequence[str], tiers: Tiers | None) -> list[Queue]:
    """Extra seeds of the baseline for free workers while the researcher's first call is in flight.

    Before the first answer there is nothing to run but the baseline, and a slow model
    would leave the fleet idle for the whole call. Another seed of the baseline is a
    noise measurement the session needs anyway (every keep is judged against it), so
    each free worker (``free``: its hardware class) gets one, pinned to its class: a
    noise run on a screen class, a validation-role run on a validate-only class (as
    ``plan_calibration`` does). Seeds follow the highest the baseline has used.
    """
    if not free:
        return []
    screen = [c for c in dict.fromkeys(free) if role_allows(tiers, "screen", c)]
    seed = max([r.seed for r in runs if r.seed is not None] + [base.seed + len(runs) - 1, base.seed]) + 1
    out = []
    for k, hw in enumerate(free):
        role = Role.NOISE if tiers is None or hw in screen else Role.VALIDATE
        out.append(Queue(base.id, seed + k, role, hw))
    return out
