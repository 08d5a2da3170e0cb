"""The scheduler's decisions on constructed snapshots: no ledger, no processes, no git.

Every figure is worked out by hand: noise sd 0.01 on every class, the champion at
1.00 (minimize), z = 2. A single-run candidate against a single champion run has
se = 0.01 * sqrt(2) = 0.01414, so a keep needs a gain above 0.0283.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from labfleet.errors import ConfigError
from labfleet.executors.base import Worker
from labfleet.records import Decision, Experiment, Proposal, Run, RunStatus, SessionState
from labfleet.researchers.base import Researcher
from labfleet.scheduler import (
    Baseline,
    Discard,
    Fail,
    Keep,
    Limits,
    Repeat,
    Snapshot,
    Validate,
    Wait,
    becomes_lead,
    champion_metrics,
    class_noise,
    decide,
    decide_baseline,
    last_end,
    lead_snapshot,
    may_start,
    place,
    plan_calibration,
    plan_champion_calibration,
    plan_noise_fill,
    probability_better,
    rank_winners,
    starts_left,
    still_leads,
    stop_reason,
)
from labfleet.scheduler.base import VALIDATION_SEED_OFFSET
from labfleet.scheduler.deciding import ENDED_UNVALIDATED, ENDED_WITHIN_NOISE
from labfleet.scheduler.proposing import (
    RunRate,
    ThreadProposer,
    TokenModel,
    VirtualProposer,
    parse_latency,
    pipeline_depth,
    runs_due,
)
from labfleet.target import Tiers

NOISE = {"H100": 0.01, "H200": 0.01}
TIERS = Tiers.model_validate({"screen": {"classes": ["H100"]}, "validate": {"classes": ["H200"], "repeats": 2}})


def exp(id: int, parent: int | None = 1, seed: int = 0, decision: Decision = Decision.PENDING) -> Experiment:
    return Experiment(id, 1, parent, f"c{id}", "", f"e{id}", "", {}, {}, seed, 300.0, decision, 0.0)


_ids = iter(range(1, 10_000))


def run(exp_id: int, metric: float | None, hardware: str = "H100", role: str = "screen",
        status: RunStatus = RunStatus.DONE, place_on: str | None = None) -> Run:
    return Run(next(_ids), exp_id, 1, status, f"{hardware}-0", hardware, 0.0, 0.0, 1.0, metric, {}, "", None, None,
               role=role, place_on=place_on, budget_seconds=300.0)


def snap(tiers: Tiers | None = None, champion_runs: dict[str, list[float]] | None = None, **kw) -> Snapshot:
    champion = exp(1, parent=None, decision=Decision.BASELINE)
    runs = champion_runs or {"H100": [1.00], "H200": [0.95]}
    samples = {(1, hw, 300.0): values for hw, values in runs.items()}
    return Snapshot("minimize", champion, runs.get("H100", [1.0])[0], samples, dict(samples),
                    classes=("H100", "H200"), tiers=tiers, **kw)


# ------------------------------------------------------------------------------- deciding


def test_beyond_the_noise_is_kept_within_it_repeated_worse_discarded():
    s = snap()
    kept = decide(s, exp(2), [run(2, 0.96)], NOISE)
    assert isinstance(kept, Keep) and kept.metric == 0.96 and kept.verdict.outcome == "better"
    unsure = decide(s, exp(3, seed=7), [run(3, 0.99)], NOISE)
    assert isinstance(unsure, Repeat) and (unsure.role, unsure.place_on, unsure.seed) == ("confirm", "H100", 8)
    worse = decide(s, exp(4), [run(4, 1.01)], NOISE)
    assert isinstance(worse, Discard) and worse.metric == 1.01


def test_a_confirmed_result_is_decided_on_the_mean_of_its_seeds():
    s = snap()
    # 0.99 and 0.97: mean 0.98, se = 0.01 * sqrt(1/2 + 1) = 0.0122, threshold 0.0245 > 0.02: still unsure
    assert isinstance(decide(s, exp(2), [run(2, 0.99), run(2, 0.97, role="confirm")], NOISE), Discard)
    kept = decide(s, exp(3), [run(3, 0.98), run(3, 0.96, role="confirm")], NOISE)  # mean 0.97: 0.03 > 0.0245
    assert isinstance(kept, Keep) and kept.metric == pytest.approx(0.97)


def test_wait_fail_and_no_baseline_yet():
    s = snap()
    assert isinstance(decide(s, exp(2), [run(2, None, status=RunStatus.RUNNING)], NOISE), Wait)
    assert isinstance(decide(s, exp(2), [], NOISE), Wait)
    failed = decide(s, exp(2), [run(2, None, status=RunStatus.CRASHED)], NOISE)
    assert isinstance(failed, Fail) and failed.run.status == RunStatus.CRASHED
    unknown = Snapshot("minimize", None, None, {}, {})
    assert isinstance(decide(unknown, exp(2), [run(2, 0.5)], NOISE), Wait)
    assert isinstance(decide(s, exp(2, decision=Decision.KEPT), [run(2, 0.5)], NOISE), Wait)  # decided already


def test_without_noise_the_margin_decides_alone():
    s = snap(keep="margin", margin=0.02)
    assert isinstance(decide(s, exp(2), [run(2, 0.97)], NOISE), Keep)
    assert isinstance(decide(s, exp(3), [run(3, 0.99)], NOISE), Discard)  # better, not by the margin: no repeat


def test_maximize_flips_the_sign():
    champion = exp(1, parent=None, decision=Decision.BASELINE)
    s = Snapshot("maximize", champion, 1.0, {(1, "H100", 300.0): [1.0]}, {(1, "H100", 300.0): [1.0]})
    assert isinstance(decide(s, exp(2), [run(2, 1.05)], NOISE), Keep)
    assert isinstance(decide(s, exp(3), [run(3, 0.95)], NOISE), Discard)


def test_with_tiers_a_screened_winner_waits_for_validation_and_validated_runs_decide_alone():
    s = snap(TIERS)
    waiting = decide(s, exp(2), [run(2, 0.99)], NOISE)
    assert isinstance(waiting, Validate) and waiting.verdict.outcome == "unsure"
    assert isinstance(decide(s, exp(3), [run(3, 1.02)], NOISE), Discard)  # worse: never costs a validate run
    # validated on H200 against the champion's H200 run (0.95): the screening run no longer counts
    kept = decide(s, exp(4), [run(4, 0.90), run(4, 0.92, "H200", "validate"), run(4, 0.91, "H200", "validate")], NOISE)
    assert isinstance(kept, Keep) and kept.metric == pytest.approx(0.915)
    lost = decide(s, exp(5), [run(5, 0.90), run(5, 0.96, "H200", "validate"), run(5, 0.96, "H200", "validate")], NOISE)
    assert isinstance(lost, Discard)  # a lucky screen, found out on the fast class
    more = decide(s, exp(6, seed=3), [run(6, 0.9), run(6, 0.94, "H200", "validate"), run(6, 0.94, "H200", "validate")],
                  NOISE)
    assert isinstance(more, Repeat) and more.role == "validate" and more.place_on == "H200"
    assert more.seed == 3 + VALIDATION_SEED_OFFSET + 2


def test_a_winner_beyond_the_screen_noise_leads_and_later_screens_are_judged_against_it():
    s = snap(TIERS)
    clear = decide(s, exp(2), [run(2, 0.96)], NOISE)  # gain 0.04 > 0.0283: beyond the noise
    assert isinstance(clear, Validate) and becomes_lead(s, clear)
    unsure = decide(s, exp(3), [run(3, 0.99)], NOISE)
    assert isinstance(unsure, Validate) and not becomes_lead(s, unsure)  # validated, but leads nothing
    assert not becomes_lead(snap(), decide(snap(), exp(4), [run(4, 0.96)], NOISE))  # no tiers: a plain keep
    lead = lead_snapshot(s, exp(2), 0.96)
    assert lead.champion.id == 2 and s.champion.id == 1  # the snapshot given is left as it was
    assert lead_snapshot(s, None, None) is s
    lead = lead_snapshot(Snapshot("minimize", s.champion, 1.0, {**s.samples, (2, "H100", 300.0): [0.96]},
                                  s.unbiased, classes=s.classes, tiers=TIERS), exp(2), 0.96)
    # 0.98 beats the champion's 1.00 but not the lead's 0.96: discarded before it costs a validation run
    assert isinstance(decide(lead, exp(5), [run(5, 0.98)], NOISE), Discard)
    assert becomes_lead(lead, decide(lead, exp(6), [run(6, 0.92)], NOISE))  # beats the lead beyond the noise


def test_a_lead_does_not_wait_for_its_calibration_run_and_validation_still_decides():
    s = snap(TIERS)
    runs = [run(2, 0.96), run(2, 0.91, "H200", "validate"), run(2, 0.90, "H200", "validate"),
            run(2, None, role="calibrate", status=RunStatus.QUEUED)]
    kept = decide(s, exp(2), runs, NOISE)
    assert isinstance(kept, Keep) and kept.metric == pytest.approx(0.905)  # against the champion's H200 0.95
    pending = runs[:2] + [run(2, None, "H200", "validate", status=RunStatus.RUNNING)] + runs[3:]
    assert isinstance(decide(s, exp(2), pending, NOISE), Wait)  # a validation still running: wait for it
    lucky = [run(2, 0.96), run(2, 0.96, "H200", "validate"), run(2, 0.96, "H200", "validate"), runs[3]]
    assert isinstance(decide(s, exp(2), lucky, NOISE), Discard)  # not confirmed: the lead reverts


def test_a_lead_stays_only_while_it_still_beats_a_newly_kept_champion():
    lead_runs = [run(2, 0.90), run(2, 0.91, "H200", "validate", status=RunStatus.RUNNING)]
    assert still_leads(snap(TIERS), lead_runs, NOISE)  # 0.90 vs 1.00 on H100: still ahead
    passed = snap(TIERS, {"H100": [0.91], "H200": [0.86]})  # the new champion's H100 run: 0.91
    assert not still_leads(passed, lead_runs, NOISE)
    assert not still_leads(snap(TIERS), [run(2, None, status=RunStatus.CRASHED)], NOISE)


def test_one_validation_run_decides_a_clear_result_and_more_seeds_come_only_while_unsure():
    s = snap(TIERS)  # the champion's H200 run: 0.95; one run each: keep needs a gain above 0.0283
    assert isinstance(decide(s, exp(2), [run(2, 0.96), run(2, 0.91, "H200", "validate")], NOISE), Keep)
    assert isinstance(decide(s, exp(3), [run(3, 0.96), run(3, 0.96, "H200", "validate")], NOISE), Discard)
    more = decide(s, exp(4, seed=5), [run(4, 0.96), run(4, 0.94, "H200", "validate")], NOISE)  # gain 0.01: unsure
    assert isinstance(more, Repeat) and more.role == "validate" and more.place_on == "H200"
    assert more.seed == 5 + VALIDATION_SEED_OFFSET + 1  # the next validation seed, never the first again
    # at most repeats + confirm_repeats validation seeds (2 + 1): then the mean decides
    three = [run(4, 0.96)] + [run(4, 0.94, "H200", "validate") for _ in range(3)]
    assert isinstance(decide(s, exp(4), three, NOISE), Discard)  # 0.01 gain, se 0.01*sqrt(1/3+1) = 0.0115: not 2 se


def test_a_better_winner_within_the_leads_noise_takes_the_lead_only_if_it_clearly_beats_the_champion():
    s = snap(TIERS)
    lead = lead_snapshot(Snapshot("minimize", s.champion, 1.0, {**s.samples, (2, "H100", 300.0): [0.96]},
                                  s.unbiased, classes=s.classes, tiers=TIERS), exp(2), 0.96)
    close = decide(lead, exp(3), [run(3, 0.95)], NOISE)  # 0.01 better than the lead: within its noise
    assert isinstance(close, Validate) and close.verdict.outcome == "unsure"
    assert not becomes_lead(lead, close)  # without knowing it beats the champion: the first lead stays
    beats = still_leads(s, [run(3, 0.95)], NOISE)  # 0.05 below the champion's 1.00: beyond its noise
    assert beats and becomes_lead(lead, close, beats_champion=beats)
    tie = decide(lead, exp(4), [run(4, 0.96)], NOISE)  # no better than the lead: it never takes over
    assert not becomes_lead(lead, tie, beats_champion=True)
    assert not becomes_lead(snap(), close, beats_champion=True)  # no tiers: no leads at all


def test_the_leads_validation_is_placed_before_older_winners_extra_seeds():
    fleet = [Worker("H100-0", "H100"), Worker("H200-0", "H200")]
    queued = [dict(row(1, "validate"), experiment_id=7), dict(row(2, "validate"), experiment_id=9),
              dict(row(3, "screen"), experiment_id=10)]
    assert [(p.run_id, p.worker_id) for p in place(queued, fleet, TIERS)] == [(1, "H200-0"), (3, "H100-0")]
    # the lead's run first (one fast worker); the screen still takes the screen worker
    assert [(p.run_id, p.worker_id) for p in place(queued, fleet, TIERS, first=(9,))] == [(2, "H200-0"), (3, "H100-0")]


def test_runs_due_counts_the_runs_that_end_before_the_answer_after_next():
    # a fleet started together finishes together: the queue must hold a proposal for each
    assert runs_due([0.0] * 16, now=250.0, run_seconds=320.0, latency=90.0) == 16  # all end at 320 < 430
    assert runs_due([0.0] * 16, now=100.0, run_seconds=320.0, latency=90.0) == 0  # 280 < 320: none yet
    assert runs_due([0.0, 200.0, 400.0], now=100.0, run_seconds=320.0, latency=120.0) == 1  # ends 320 < 340
    assert runs_due([0.0] * 4, now=0.0, run_seconds=320.0, latency=0.0) == 0  # no latency: no pipeline
    # proposing stops at 300: workers freed after that take nothing new, so nothing is queued for them
    assert runs_due([0.0] * 16, now=250.0, run_seconds=320.0, latency=90.0, until=300.0) == 0
    assert runs_due([0.0, 100.0], now=250.0, run_seconds=300.0, latency=90.0, until=350.0) == 1


def test_a_class_with_few_repeats_has_its_noise_partly_pooled_with_the_others():
    from labfleet.analysis.noise import NoiseFloor

    floors = {"H100": NoiseFloor("H100", 0.002, 40, 20), "H200": NoiseFloor("H200", 0.004, 2, 2)}
    sd = class_noise(floors)
    assert sd["H200"] == pytest.approx(((2 * 0.004**2 + 8 * 0.002**2) / 10) ** 0.5)  # 8 df from the others at most
    assert sd["H100"] == pytest.approx(((40 * 0.002**2 + 2 * 0.004**2) / 42) ** 0.5)  # well measured: mostly its own
    assert class_noise({"H100": floors["H100"]}) == {"H100": 0.002}  # one class: its own


def test_the_champions_reference_on_a_class_pools_its_other_classes_through_a_measured_offset():
    champion = exp(1, parent=None, decision=Decision.BASELINE)
    unbiased = {(1, "H200", 300.0): [0.95], (1, "H100", 300.0): [0.99, 1.01]}
    # two other experiments ran on both classes: H200 is 0.04 lower
    unbiased |= {(2, "H100", 300.0): [0.90], (2, "H200", 300.0): [0.86], (3, "H100", 300.0): [0.80],
                 (3, "H200", 300.0): [0.76]}
    s = Snapshot("minimize", champion, 1.0, unbiased, unbiased, classes=("H100", "H200"), tiers=TIERS)
    assert champion_metrics(s, "H200", 300.0) == pytest.approx([0.95, 0.95, 0.97])
    # an offset measured on one other experiment only is not trusted for pooling
    few = {k: v for k, v in unbiased.items() if k[0] != 3}
    s = Snapshot("minimize", champion, 1.0, few, few, classes=("H100", "H200"), tiers=TIERS)
    assert champion_metrics(s, "H200", 300.0) == [0.95]


def test_baseline_decisions():
    base = exp(1, parent=None)
    assert isinstance(decide_baseline(base, [run(1, None, status=RunStatus.RUNNING)]), Wait)
    first = decide_baseline(base, [run(1, 1.0), run(1, None, "H200", status=RunStatus.QUEUED)])
    assert isinstance(first, Baseline) and first.metric == 1.0 and not first.refine
    decided = exp(1, parent=None, decision=Decision.BASELINE)
    refined = decide_baseline(decided, [run(1, 1.0), run(1, 1.02, role="noise"), run(1, 0.9, "H200")])
    assert isinstance(refined, Baseline) and refined.refine and refined.metric == pytest.approx(1.01)
    assert isinstance(decide_baseline(base, [run(1, None, status=RunStatus.CRASHED)]), Fail)
    assert isinstance(decide_baseline(base, [run(1, None, status=RunStatus.LOST)]), Wait)  # retried, not broken


# ------------------------------------------------------------------------------- tiers


def test_winners_are_ranked_by_the_probability_of_beating_the_champion():
    s = snap(TIERS)
    waiting = [(exp(2), [run(2, 0.995)]), (exp(3), [run(3, 0.97)]), (exp(4), [run(4, 0.985)]), (exp(5), [run(5, 1.01)])]
    promote, discards, confirms = rank_winners(s, waiting, 2, NOISE)
    assert promote == [3, 4]  # the two most likely to beat the champion, best first
    assert [(i, d.reason) for i, d in discards] == [(5, "no longer beats the best")]  # passed: costs no run
    assert [(q.experiment_id, q.role, q.place_on) for q in confirms] == [(2, "confirm", "H100")]  # cheap, on the screen class
    assert rank_winners(s, waiting, 2, NOISE, confirm=False)[2] == []
    # a winner already confirmed on its screen class is not confirmed twice
    again = rank_winners(s, [(exp(2), [run(2, 0.995), run(2, 0.99, role="confirm")])], 0, NOISE)
    assert again[2] == []


def test_probability_better_follows_the_normal_model():
    s = snap()
    verdict = decide(s, exp(2), [run(2, 0.99)], NOISE).verdict  # gain 0.01, se 0.01414
    assert probability_better(verdict) == pytest.approx(0.760, abs=1e-3)
    assert probability_better(decide(s, exp(3), [run(3, 1.0)], NOISE).verdict) == pytest.approx(0.5)


# ------------------------------------------------------------------------------- placing


def row(id: int, role: str, place_on: str | None = None) -> dict:
    return {"id": id, "role": role, "place_on": place_on}


def test_placement_order_classes_and_backfill():
    fleet = [Worker("H100-0", "H100"), Worker("H200-0", "H200")]
    queued = [row(1, "screen"), row(2, "screen"), row(3, "validate"), row(4, "calibrate", "H100")]
    # validation first, then the pinned calibration, then one screen; the fast worker never screens
    placed = place(queued, fleet, TIERS)
    assert [(p.run_id, p.worker_id) for p in placed] == [(3, "H200-0"), (4, "H100-0")]
    assert [(p.run_id, p.worker_id) for p in place(queued[:2], fleet, TIERS)] == [(1, "H100-0")]
    # with backfill, a fast worker nothing needs takes a screen, after the screen class
    backfilled = place(queued[:2], fleet, TIERS, backfill=True)
    assert [(p.run_id, p.worker_id) for p in backfilled] == [(1, "H100-0"), (2, "H200-0")]
    # without tiers every worker takes anything, oldest first within a role
    assert [p.run_id for p in place([row(5, "screen"), row(6, "confirm")], fleet, None)] == [6, 5]


def test_calibration_plans_are_idempotent_and_use_the_validate_role_on_the_fast_class():
    base = exp(1, parent=None)
    first = run(1, None, status=RunStatus.QUEUED)
    pin, queue = plan_calibration(base, [first], ["H100", "H200", "H100"], TIERS, 3)
    assert pin == (first.id, "H100")
    assert [(q.role, q.place_on, q.seed) for q in queue] == [
        ("noise", "H100", 1), ("noise", "H100", 2), ("validate", "H200", 3), ("validate", "H200", 4),
        ("validate", "H200", 5)]
    have = [run(1, 1.0, place_on="H100")] + [run(1, None, q.place_on, q.role, RunStatus.QUEUED, q.place_on)
                                             for q in queue]
    assert plan_calibration(base, have, ["H100", "H200"], TIERS, 3) == (None, [])
    champion = exp(7, seed=5)
    calib = plan_champion_calibration(champion, ["H100", "H200"], TIERS, {}, {"calibrate": 300.0, "validate": 300.0})
    assert [(q.role, q.place_on) for q in calib] == [("calibrate", "H100"), ("validate", "H200")]
    done = {(7, "H100", 300.0): [0.9]}
    assert len(plan_champion_calibration(champion, ["H100", "H200"], TIERS, done, {"calibrate": 300.0,
                                                                                  "validate": 300.0})) == 1


def test_a_slow_first_call_gets_one_baseline_seed_per_free_worker_pinned_to_its_class():
    base = exp(1, parent=None, seed=10)
    runs = [run(1, 1.0, role="calibrate"), run(1, None, "H200", "validate", RunStatus.RUNNING, "H200")]
    fill = plan_noise_fill(base, runs, ["H100", "H100", "H200"], TIERS)
    # seeds after the two the baseline has (10, 11); the validate-only class runs it in the validate role
    assert [(q.experiment_id, q.seed, q.role, q.place_on) for q in fill] == [
        (1, 12, "noise", "H100"), (1, 13, "noise", "H100"), (1, 14, "validate", "H200")]
    assert [q.role for q in plan_noise_fill(base, runs, ["H100", "H200"], None)] == ["noise", "noise"]
    assert plan_noise_fill(base, runs, [], TIERS) == []
    seeded = [run(1, 1.0)] + [Run(**{**run(1, 1.0).__dict__, "seed": 40})]
    assert plan_noise_fill(base, seeded, ["H100"], None)[0].seed == 41  # past every seed used, never one again


def test_an_unconfirmed_winner_at_the_end_is_decided_within_the_noise_and_nothing_repeats():
    ended = snap(ended=True)
    unsure = decide(ended, exp(3, seed=7), [run(3, 0.99)], NOISE)  # would repeat before the end
    assert isinstance(unsure, Discard) and unsure.reason == ENDED_WITHIN_NOISE and unsure.metric == 0.99
    assert isinstance(decide(ended, exp(2), [run(2, 0.96)], NOISE), Keep)  # beyond the noise: kept as before
    validated = [run(6, 0.9), run(6, 0.94, "H200", "validate"), run(6, 0.94, "H200", "validate")]
    assert isinstance(decide(snap(TIERS), exp(6), validated, NOISE), Repeat)
    late = decide(snap(TIERS, ended=True), exp(6), validated, NOISE)
    assert isinstance(late, Discard) and late.reason == ENDED_WITHIN_NOISE
    # winners still waiting for the validate class: none promoted or confirmed, all decided
    waiting = [(exp(2), [run(2, 0.995)]), (exp(3), [run(3, 0.97)]), (exp(5), [run(5, 1.01)])]
    promote, discards, confirms = rank_winners(snap(TIERS, ended=True), waiting, 2, NOISE)
    assert promote == [] and confirms == []
    assert [(i, d.reason) for i, d in discards] == [
        (2, ENDED_UNVALIDATED), (3, ENDED_UNVALIDATED), (5, "no longer beats the best")]


def test_the_queue_holds_only_what_can_start_before_the_end():
    # end in 1000 s, runs of 300 s: a free worker starts at 0, 300, 600, 900 (4); a run started
    # at 0 frees its worker at 300 (3 more); one overdue since 100 frees it now (4); one that
    # ends after the end (started at 800) starts nothing more
    assert starts_left(0.0, 1000.0, 300.0, [], 2) == 8
    assert starts_left(0.0, 1000.0, 300.0, [0.0, -200.0, -400.0, 800.0], 0) == 3 + 3 + 4 + 0
    assert starts_left(999.0, 1000.0, 300.0, [900.0], 1) == 1
    assert starts_left(1000.0, 1000.0, 300.0, [], 5) == 0
    assert starts_left(0.0, None, 300.0, [], 5) is None  # no --hours: no cap
    assert starts_left(0.0, 1000.0, 0.0, [], 5) is None  # no run time known


def test_the_last_end_is_where_the_fewest_workers_wait_and_overruns_start_only_when_worth_it():
    # end 1000, runs of 100: three workers free at 950 and one at 990. Last end at 990: the three
    # stop at 950 (40 s idle each); at 1050 (they run once more): only the fourth waits, 60 s;
    # at 1090 the three wait 40 s each again
    assert last_end([950.0, 950.0, 950.0, 990.0], 1000.0, 100.0) == 1050.0
    # one at 950, three at 990: stopping the one (40 s) beats the three waiting (180 s); a tie
    # with running everyone once more (1090: the one waits 40 s) goes to the earlier end
    assert last_end([950.0, 990.0, 990.0, 990.0], 1000.0, 100.0) == 990.0
    assert last_end([], 1000.0, 100.0) == 1000.0
    assert starts_left(900.0, 1000.0, 100.0, [850.0, 850.0, 850.0], 0, last=1050.0) == 3
    assert starts_left(900.0, 1000.0, 100.0, [850.0, 850.0, 850.0], 0, last=1040.0) == 0
    # 16 workers, a last end 200 s away: a run overrunning it by 10 s starts (the worker would idle
    # 200 s, the fleet waits 16 x 10 s), one overrunning it by 20 s does not; no last end: anything
    assert may_start(800.0, 210.0, 1000.0, 16) and not may_start(800.0, 220.0, 1000.0, 16)
    assert may_start(800.0, 1000.0, None, 16)
    assert may_start(800.0, 201.0, 1000.0, 1000)  # within the run times' spread (2%)


def test_the_run_rate_counts_every_end_and_cold_first_runs_only_until_a_warm_one_ended():
    rate = RunRate()
    assert rate.seconds == 0.0
    rate.add("w1", 100.0)  # first runs: cold (setup), all there is
    rate.add("w2", 50.0)
    assert rate.seconds == pytest.approx(75.0)
    rate.add("w1", 30.0)  # a warm end: from now on warm runs alone
    assert rate.seconds == pytest.approx(30.0)
    rate.add("w3", 500.0)  # a later cold start does not count
    rate.add("w2", 10.0)  # a crash ends early: it freed its worker all the same
    assert rate.seconds == pytest.approx(20.0)


# ------------------------------------------------------------------------------- stopping


def test_stop_reasons():
    common = dict(direction="minimize", proposed=3, elapsed_seconds=100.0, champion_metric=0.9,
                  decided_since_keep=0, fleet_usd=0.0, researcher_done=False, active_runs=1)
    assert stop_reason(Limits(), **common) == ""
    assert stop_reason(Limits(max_experiments=3), **common) == "reached --max-experiments 3"
    assert stop_reason(Limits(hours=0.01), **common) == "reached --hours 0.01"
    assert stop_reason(Limits(until=0.95), **common) == "reached --until 0.95"
    assert stop_reason(Limits(until=0.85), **common) == ""
    assert "--patience 2" in stop_reason(Limits(patience=2), **{**common, "decided_since_keep": 2})
    assert stop_reason(Limits(max_usd=1.0), **{**common, "fleet_usd": 1.5}) == "reached --max-usd 1"
    done = {**common, "researcher_done": True, "active_runs": 0}
    assert stop_reason(Limits(), **done) == "the researcher has nothing more to propose"
    assert stop_reason(Limits(serve=True), **done) == ""  # a daemon waits for submissions
    assert stop_reason(Limits(), **{**done, "active_runs": 2}) == ""  # a new result may open new ideas


# ------------------------------------------------------------------------------- proposing


class Counter(Researcher):
    name = "counter"

    def __init__(self, sleep: float = 0.0, fail_first: int = 0) -> None:
        self.sleep, self.fail_first, self.calls, self.seen = sleep, fail_first, 0, []

    def propose(self, state, n):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("provider down")
        time.sleep(self.sleep)
        return [Proposal(f"p{self.calls}.{i}") for i in range(n)]

    def observe(self, state, result):
        self.seen.append((self.calls, result))


STATE = SessionState(1, "m", "minimize", {}, None, None, (), (), 1)


def test_virtual_latency_holds_the_answer_until_the_clock_reaches_it_and_is_seeded():
    now = [100.0]
    p = VirtualProposer(Counter(), lambda: now[0], latency=60.0, sd=30.0, seed=3, tokens=TokenModel())
    p.ask(STATE, 4, now[0])
    assert p.in_flight == 1 and not p.can_ask(now[0]) and p.answers(now[0]) == ([], [])
    due = p.next_event(now[0])
    assert due is not None and due > now[0]
    now[0] = due
    (answer,), _ = p.answers(now[0])
    assert len(answer.proposals) == 4 and answer.usage[-1]["output_tokens"] == 1600
    assert answer.usage[-1]["usd"] == pytest.approx((12_000 * 3 + 1600 * 15) / 1e6)
    again = VirtualProposer(Counter(), lambda: 100.0, latency=60.0, sd=30.0, seed=3)
    again.ask(STATE, 1, 100.0)
    assert again.next_event(100.0) == pytest.approx(due)  # the same seed, the same latency


def test_observes_arriving_during_a_call_go_into_the_next_call_together():
    researcher = Counter()
    p = VirtualProposer(researcher, lambda: 0.0, latency=10.0)
    p.ask(STATE, 1, 0.0)
    p.tell(STATE, "r1")  # type: ignore[arg-type]
    p.tell(STATE, "r2")  # type: ignore[arg-type]
    assert researcher.seen == []
    p.answers(10.0)
    p.ask(STATE, 1, 10.0)
    assert researcher.seen == [(1, "r1"), (1, "r2")]  # both delivered before the second propose


def test_a_raising_researcher_backs_off_and_is_asked_again():
    now = [0.0]
    p = ThreadProposer(Counter(fail_first=2), lambda: now[0], waits=(5.0, 8.0))
    p.ask(STATE, 2, now[0])
    answers = wait_answers(p, now[0])
    assert answers[0].failed and "provider down" in answers[0].error and answers[0].proposals == []
    assert not p.can_ask(now[0]) and p.retry_at == 5.0
    now[0] = 5.0
    p.ask(STATE, 2, now[0])
    assert wait_answers(p, now[0])[0].failed and p.retry_at == 5.0 + 8.0  # doubled, capped at the longest
    now[0] = 13.0
    p.ask(STATE, 2, now[0])
    ok = wait_answers(p, now[0])[0]
    assert not ok.failed and len(ok.proposals) == 2 and p.retry_at is None and p.backoff == 0.0


def test_a_hanging_researcher_is_timed_out_and_its_late_answer_still_counts():
    release = threading.Event()

    class Hangs(Counter):
        def propose(self, state, n):
            release.wait(10)
            return super().propose(state, n)

    p = ThreadProposer(Hangs(), lambda: 0.0, waits=(30.0, 60.0), timeout=0.2)
    p.ask(STATE, 3, 0.0)
    deadline = time.monotonic() + 5
    notes: list[str] = []
    while not notes and time.monotonic() < deadline:
        notes = p.answers(0.0)[1]
        time.sleep(0.05)
    assert notes and "timed out" in notes[0]
    assert p.in_flight == 0 and p.backing_off(0.0)  # the loop goes on; proposing waits
    release.set()
    late = wait_answers(p, 0.0)[0]
    assert late.late and len(late.proposals) == 3  # nothing it proposed is lost


def wait_answers(p, now, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers, _ = p.answers(now)
        if answers:
            return answers
        time.sleep(0.01)
    raise AssertionError("no answer")


def test_latency_parsing_and_pipeline_depth():
    assert parse_latency("90") == (90.0, 0.0) and parse_latency("60:30") == (60.0, 30.0)
    assert parse_latency(None) == (0.0, 0.0) and parse_latency(5) == (5.0, 0.0)
    for bad in ("x", "-1", "1:2:3", "nan"):
        with pytest.raises(ConfigError, match="--researcher-latency"):
            parse_latency(bad)
    assert pipeline_depth(1, 0.0, 16, 300.0) == 1
    assert pipeline_depth(1, 90.0, 16, 300.0) == 1 + 8  # 16 * 90 / 300 = 4.8 runs per call, 1.5x
    assert random.Random(0).random() == random.Random(0).random()
