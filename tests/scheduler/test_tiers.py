"""Tier decisions on constructed snapshots: pooled judging, confirmations, wind-down, ranking.

Figures as in test_scheduler: noise sd 0.01 on every class, minimize, z = 2. The
champion (the baseline, e1) ran 1.00 on H100 and 0.95 on H200, so the measured
offset H200 - H100 is -0.05 (from e1 alone: the candidate itself never counts).
"""

from __future__ import annotations

from labfleet.records import Decision, Experiment, Run, RunStatus
from labfleet.scheduler import (
    Discard,
    Keep,
    Queue,
    Repeat,
    Snapshot,
    Validate,
    decide,
    judge_pooled,
    plan_beside_validation,
    rank_winners,
)
from labfleet.scheduler.base import VALIDATION_SEED_OFFSET
from labfleet.scheduler.deciding import CONFIRM_SEED_OFFSET
from labfleet.target import Tiers

NOISE = {"H100": 0.01, "H200": 0.01}
TIERS = Tiers.model_validate({"screen": {"classes": ["H100"]}, "validate": {"classes": ["H200"], "repeats": 2}})
_ids = iter(range(1, 10_000))


def exp(id: int, seed: int = 0) -> Experiment:
    return Experiment(id, 1, 1, f"c{id}", "", f"e{id}", "", {}, {}, seed, 300.0, Decision.PENDING, 0.0)


def run(exp_id: int, metric: float, hardware: str = "H100", role: str = "screen") -> Run:
    return Run(next(_ids), exp_id, 1, RunStatus.DONE, f"{hardware}-0", hardware, 0.0, 0.0, 1.0, metric, {}, "",
               None, None, role=role, budget_seconds=300.0)


def snap(winding_down: bool = False, tiers: Tiers | None = TIERS, drop_below: float = 0.0) -> Snapshot:
    champion = Experiment(1, 1, None, "c1", "", "baseline", "", {}, {}, 0, 300.0, Decision.BASELINE, 0.0)
    samples = {(1, "H100", 300.0): [1.00], (1, "H200", 300.0): [0.95]}
    return Snapshot("minimize", champion, 1.00, samples, dict(samples), classes=("H100", "H200"), tiers=tiers,
                    winding_down=winding_down, drop_below=drop_below)


# ------------------------------------------------------------------------------- pooled judging


def test_a_screen_class_confirmation_counts_with_the_validation_seed_through_the_offset():
    # the validation alone: gain 0.025 < 2 * 0.01 * sqrt(2) = 0.0283, unsure; the confirmation 0.97
    # on H100 is 0.92 on H200's scale: mean 0.9225, gain 0.0275 > 2 * 0.01 * sqrt(1/2 + 1) = 0.0245
    alone = [run(2, 0.96), run(2, 0.925, "H200", "validate")]
    assert isinstance(decide(snap(), exp(2), alone, NOISE), Repeat)
    pooled = alone + [run(2, 0.97, "H100", "confirm")]
    verdict = judge_pooled(snap(), 2, pooled, NOISE)
    assert abs(verdict.improvement - 0.0275) < 1e-9 and verdict.outcome == "better"
    assert isinstance(decide(snap(), exp(2), pooled, NOISE), Keep)


def test_the_winning_screen_run_is_never_pooled():
    # a lucky screen (0.90 on H100 = 0.85 on H200) would make this a keep; it won a selection: left out
    runs = [run(2, 0.90), run(2, 0.94, "H200", "validate")]
    assert abs(judge_pooled(snap(), 2, runs, NOISE).improvement - 0.01) < 1e-9


def test_an_unsure_validation_repeats_on_both_tiers_at_once():
    more = decide(snap(), exp(4, seed=5), [run(4, 0.96), run(4, 0.94, "H200", "validate")], NOISE)
    assert isinstance(more, Repeat) and more.role == "validate" and more.place_on == "H200"
    assert more.seed == 5 + VALIDATION_SEED_OFFSET + 1
    assert more.extra == (Queue(4, 5 + CONFIRM_SEED_OFFSET + 2, "confirm", "H100"),)


def test_a_confirmation_beyond_the_noise_keeps_without_the_validate_class():
    # screen and confirmation 0.97 against 1.00 on H100: gain 0.03 > 0.0245
    assert isinstance(decide(snap(), exp(2), [run(2, 0.97), run(2, 0.97, "H100", "confirm")], NOISE), Keep)
    # within the noise: it still waits for validation ...
    unsure = [run(2, 0.98), run(2, 0.99, "H100", "confirm")]
    assert isinstance(decide(snap(), exp(2), unsure, NOISE), Validate)
    # ... unless the session is winding down: decided on what it has, never kept unvalidated
    assert isinstance(decide(snap(winding_down=True), exp(2), unsure, NOISE), Discard)


def test_winding_down_decides_an_unsure_validation_on_what_it_has():
    runs = [run(4, 0.96), run(4, 0.94, "H200", "validate")]  # unsure: normally one more round
    assert isinstance(decide(snap(), exp(4), runs, NOISE), Repeat)
    assert isinstance(decide(snap(winding_down=True), exp(4), runs, NOISE), Discard)
    clear = [run(4, 0.96), run(4, 0.90, "H200", "validate")]
    assert isinstance(decide(snap(winding_down=True), exp(4), clear, NOISE), Keep)


# ------------------------------------------------------------------------------- the waiting winners


def test_winners_are_validated_best_first_and_the_rest_confirmed_cheaply():
    waiting = [(exp(i), [run(i, m)]) for i, m in ((2, 0.99), (3, 0.97), (4, 0.98))]
    promote, discards, confirms = rank_winners(snap(), waiting, 2, NOISE)
    assert promote == [3, 4] and not discards
    assert [(q.experiment_id, q.role, q.place_on) for q in confirms] == [(2, "confirm", "H100")]


def test_winding_down_validates_what_the_slots_take_and_decides_the_rest():
    waiting = [(exp(i), [run(i, m)]) for i, m in ((2, 0.99), (3, 0.97), (4, 0.98), (5, 1.02))]
    promote, discards, confirms = rank_winners(snap(winding_down=True), waiting, 1, NOISE)
    assert promote == [3] and not confirms  # nothing new is started on the screen class
    assert sorted(exp_id for exp_id, _ in discards) == [2, 4, 5]
    reasons = {exp_id: d.reason for exp_id, d in discards}
    assert reasons[5] == "no longer beats the best" and "session ended" in reasons[2]


def test_a_validation_gets_a_confirmation_beside_it_unless_it_has_a_fresh_seed_already():
    screened = [run(2, 0.97)]
    assert plan_beside_validation(exp(2, seed=3), screened, TIERS) == [Queue(2, 3 + CONFIRM_SEED_OFFSET, "confirm", "H100")]
    assert plan_beside_validation(exp(2), screened + [run(2, 0.98, "H100", "calibrate")], TIERS) == []
    assert plan_beside_validation(exp(2), screened, None) == []  # no tiers: nothing to pool


def test_a_winner_that_falls_behind_is_dropped_before_it_costs_a_run():
    # one screen run each against one champion run: se 0.01414; 0.99 is P(better) = 0.76, 0.998 is 0.56
    waiting = [(exp(2), [run(2, 0.99)]), (exp(3), [run(3, 0.998)])]
    promote, discards, confirms = rank_winners(snap(drop_below=0.7), waiting, 0, NOISE)
    assert not promote and [q.experiment_id for q in confirms] == [2]
    assert [exp_id for exp_id, _ in discards] == [3] and "P(better) 0.56 < 0.70" in discards[0][1].reason
    _, kept_waiting, _ = rank_winners(snap(), waiting, 0, NOISE)
    assert not kept_waiting  # off by default: both wait
