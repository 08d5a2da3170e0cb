"""Noise-aware keeps, calibration on two hardware classes, and screen -> validate tiers.

Real sessions on real processes: the train scripts below make the seed noise and
the hardware speed explicit, so every expected decision can be worked out by hand.
"""

from __future__ import annotations

import math

import pytest

from labfleet.analysis.hardware import hardware_report
from labfleet.analysis.noise import judge, noise_floors, standard_error
from labfleet.executors.base import Worker
from labfleet.executors.local import LocalExecutor
from labfleet.ledger import Ledger
from labfleet.records import Decision, Proposal
from labfleet.session import SessionConfig, SessionLoop, start_session
from labfleet.target import load_target
from labfleet.testing.targets import KNOBS_TOML
from tests.conftest import Scripted, make_target

# The metric: 1.0 + (log10(lr) + 2)^2, plus seed noise of +-0.01 (seed 0: 0, seed 1: +0.01,
# seed 2: -0.01, ...), minus 0.01 per thread (a worker with more threads "runs more steps").
NOISY_TRAIN = """\
import math, os
import evalkit

LEARNING_RATE = 1e-3
N_LAYER = 2
SLEEP = 0.0
seed = int(os.environ["LABFLEET_SEED"])
threads = int(os.environ["LABFLEET_THREADS"])
noise = [0.0, 0.01, -0.01, 0.005, -0.005][seed % 5]
evalkit.report(1.0 + (math.log10(LEARNING_RATE) + 2) ** 2 + noise - 0.01 * threads,
               num_steps=100 * threads, training_seconds=1.0)
"""


def lab(tmp_path, extra: str = ""):
    return make_target(tmp_path / "lab", NOISY_TRAIN, extra_toml=KNOBS_TOML + extra, budget=1, timeout=8)


def session(folder, researcher, executor, **config):
    target = load_target(folder)
    ledger = Ledger.for_target(folder / ".labfleet")
    cfg = SessionConfig(workers=len(executor.workers()), **config)
    sid = start_session(target, ledger, cfg)
    loop = SessionLoop(target, ledger, executor, researcher, sid, cfg, folder / ".labfleet")
    loop.run()
    return ledger, loop


def test_pooled_noise_floor_and_verdicts_by_hand():
    samples = {(1, "cpu", 1.0): [1.0, 1.2], (2, "cpu", 1.0): [2.0, 2.2, 2.4], (3, "cpu", 1.0): [5.0],
               (1, "H100", 1.0): [1.0, 1.1]}
    floors = noise_floors(samples)
    # (0.02 + 0.08) / (1 + 2) pooled over the two repeated cpu experiments
    assert floors["cpu"].sd == pytest.approx(math.sqrt(0.10 / 3)) and floors["cpu"].df == 3
    assert "H100" not in floors  # one degree of freedom is not a noise estimate yet
    sd = 0.01
    se = sd * math.sqrt(1 / 1 + 1 / 3)  # one candidate run against three champion runs
    assert judge([0.97], [1.0, 1.0, 1.0], sd, "minimize").outcome == "better"  # 0.03 > 2 se = 0.023
    assert judge([0.99], [1.0, 1.0, 1.0], sd, "minimize").outcome == "unsure"  # better by 0.01 < 0.023
    assert judge([1.01], [1.0, 1.0, 1.0], sd, "minimize").outcome == "worse"
    verdict = judge([0.99], [1.0, 1.0, 1.0], sd, "minimize")
    assert verdict.threshold == pytest.approx(2 * se) and verdict.improvement == pytest.approx(0.01)
    assert judge([1.03], [1.0], sd, "maximize").outcome == "better"
    # without a noise estimate the fixed margin decides, with no "unsure"
    assert judge([0.995], [1.0], None, "minimize", margin=0.01).outcome == "worse"
    assert judge([0.98], [1.0], None, "minimize", margin=0.01).outcome == "better"
    assert standard_error(0.02, 4) == pytest.approx(0.01) and standard_error(None, 4) is None


def test_keeps_beyond_noise_confirms_within_noise(tmp_path):
    folder = lab(tmp_path)
    researcher = Scripted([
        Proposal("lr closer", knobs={"LEARNING_RATE": 5e-3}),  # 1.0806 against 1.99: far beyond the noise
        Proposal("lr a hair better", knobs={"LEARNING_RATE": 5.2e-3}),  # 1.0706 (seed 0): within the noise
    ])
    ledger, loop = session(folder, researcher, LocalExecutor(1), noise_repeats=2)
    sid = loop.session_id
    exps = {e.description: e for e in ledger.experiments(sid)}
    # the baseline's three seeds (noise 0, +0.01, -0.01) measured the noise floor
    assert len(ledger.runs_of(exps["baseline"].id)) == 3
    assert loop.judge([1.0], "cpu", 1.0).se is not None
    assert exps["lr closer"].decision == Decision.KEPT
    # kept at once; then one fresh seed of the new champion, which later candidates are compared with
    assert [r.role for r in ledger.runs_of(exps["lr closer"].id)] == ["screen", "calibrate"]
    hair = exps["lr a hair better"]
    runs = ledger.runs_of(hair.id)
    # seed 0 beat 1.0806 by 0.01, under 2 se (0.028): a confirmation repeat on seed 1 (+0.01) lost it
    assert [r.role for r in runs] == ["screen", "confirm"] and runs[1].seed == 1
    assert hair.decision == Decision.DISCARDED
    kinds = [r["kind"] for r in ledger.db.execute("SELECT kind FROM events WHERE session_id = ?", (sid,))]
    assert "confirming" in kinds


def test_margin_rule_keeps_what_noise_rule_would_question(tmp_path):
    folder = lab(tmp_path)
    researcher = Scripted([Proposal("lr a hair better", knobs={"LEARNING_RATE": 1.001e-3})])
    ledger, loop = session(folder, researcher, LocalExecutor(1), keep="margin", noise_repeats=2)
    exps = {e.description: e for e in ledger.experiments(loop.session_id)}
    assert len(ledger.runs_of(exps["baseline"].id)) == 1  # no noise repeats under the margin rule
    # baseline seed 0 is 1.99; the variant 0.0009 lower (seed 0 too): kept on the margin rule
    assert exps["lr a hair better"].decision == Decision.KEPT


def test_calibration_on_two_local_classes_of_different_speed(tmp_path):
    folder = lab(tmp_path)
    fleet = [Worker("slow-0", "slow", threads=1, price_per_hour=1.0),
             Worker("fast-0", "fast", threads=2, price_per_hour=3.0)]
    ledger, loop = session(folder, Scripted([]), LocalExecutor(fleet), noise_repeats=1)
    sid = loop.session_id
    base = ledger.baseline(sid)
    assert base is not None
    assert sorted((r.hardware, r.seed or 0) for r in ledger.runs_of(base.id)) == [
        ("fast", 2), ("fast", 3), ("slow", 0), ("slow", 1)]
    report = hardware_report(ledger.runs(sid), {"slow": 1.0, "fast": 3.0}, "val_bpb")
    fast = report.classes["fast"] if report.reference == "slow" else report.classes["slow"]
    assert fast.pairs == 1
    ratio = 2.0 if report.reference == "slow" else 0.5
    assert fast.speed_ratio == pytest.approx(ratio)
    text = " ".join(report.findings)
    assert "100% more steps than slow" in text or "50% fewer steps than fast" in text
    # the same code measured 0.01 lower on the class with twice the threads (seed noise averaged
    # over seeds 0,1 on slow: +0.005; seeds 2,3 on fast: -0.0025)
    assert report.offset("fast", "slow") == pytest.approx(-0.01 - 0.0025 - 0.005)
    assert loop.hardware_offset("fast", "slow", 1.0) == pytest.approx(-0.0175)


def test_tiers_screen_on_one_class_validate_on_the_other(tmp_path):
    tiers = """
[tiers.screen]
classes = ["slow"]
[tiers.validate]
classes = ["fast"]
repeats = 2
promote = 1
"""
    folder = lab(tmp_path, tiers)
    fleet = [Worker("slow-0", "slow", threads=1), Worker("fast-0", "fast", threads=2)]
    researcher = Scripted([
        Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
        Proposal("lr worse", knobs={"LEARNING_RATE": 1e-4}),
    ])
    # backfill off: the fast worker never screens (with it, an idle fast worker takes screens)
    ledger, loop = session(folder, researcher, LocalExecutor(fleet), noise_repeats=1, backfill=False)
    sid = loop.session_id
    exps = {e.description: e for e in ledger.experiments(sid)}
    best = ledger.runs_of(exps["lr best"].id)
    roles = [(r.role, r.hardware) for r in best]
    # one validation seed first; more (up to repeats + 1) only while it is within the noise
    validations = [x for x in roles if x == ("validate", "fast")]
    assert roles[0] == ("screen", "slow") and roles[1] == ("validate", "fast") and 1 <= len(validations) <= 3
    # beside each validation round a cheap seed on the screening class, judged pooled with it
    # through the class offset; then the new champion's fresh seed there
    confirms = [x for x in roles if x == ("confirm", "slow")]
    assert len(confirms) <= len(validations)
    assert set(roles[1:-1]) <= {("validate", "fast"), ("confirm", "slow")}
    assert roles[-1] == ("calibrate", "slow")
    assert exps["lr best"].decision == Decision.KEPT
    worse = ledger.runs_of(exps["lr worse"].id)
    assert [(r.role, r.hardware) for r in worse] == [("screen", "slow")]  # screened out, never validated
    assert exps["lr worse"].decision == Decision.DISCARDED
    # the screened winner was promoted to validation; the loser never took a validate worker
    kinds = [r["kind"] for r in ledger.db.execute("SELECT kind FROM events WHERE session_id = ?", (sid,))]
    assert "promoted" in kinds and "screen_winner" in kinds
