"""The fitted surrogate: fit and prediction on a known response, refusal to extrapolate,
and a round trip real session -> `labfleet simulate --from-ledger` -> plan."""

from __future__ import annotations

import json
import math
import sqlite3
import textwrap

import numpy as np
import pytest

from labfleet.errors import ConfigError
from labfleet.executors.simulated import SimulatedExecutor, knob_unit
from labfleet.target import Knob
from tests.conftest import run_cli

pytest.importorskip("sklearn")

from labfleet import planning  # noqa: E402
from labfleet.planning import Observation  # noqa: E402

KNOBS = {
    "LEARNING_RATE": Knob(file="train.py", low=1e-4, high=1e-1, log=True),
    "WEIGHT_DECAY": Knob(file="train.py", low=0.0, high=0.3),
}
NOISE = 0.01
SLOPE = 0.05  # metric gained per e-fold of steps
REPEAT_LR = 10**-2.8  # the repeated config (u = 0.4)


def truth(lr: float, wd: float, steps: float = 100) -> float:
    u = knob_unit(KNOBS["LEARNING_RATE"], lr)
    v = knob_unit(KNOBS["WEIGHT_DECAY"], wd)
    return 1.0 + 0.8 * (u - 0.6) ** 2 + 0.3 * (v - 0.3) ** 2 - SLOPE * math.log(steps / 100)


def synthetic(n: int = 80, lr_units: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> list[Observation]:
    """Random configs, a few repeated, a few at other step counts; 5% crashes."""
    rng = np.random.default_rng(seed)
    out = []

    def add(lr: float, wd: float, s: int, steps: float = 100, crashed: bool = False) -> None:
        metric = None if crashed else truth(lr, wd, steps) + NOISE * float(rng.normal())
        out.append(Observation(knobs={"LEARNING_RATE": lr, "WEIGHT_DECAY": wd}, outcome="crashed" if crashed else "ok",
                               metric=metric, seed=s, steps=steps, budget_seconds=10, training_seconds=10,
                               wall_seconds=13.0))

    for i in range(n):
        lr = 10 ** (-4 + 3 * rng.uniform(*lr_units))
        wd = float(rng.uniform(0, 0.3))
        add(lr, wd, i, crashed=i % 20 == 19)
    for s in range(10):  # repeats: the noise
        add(REPEAT_LR, 0.1, s)
        add(REPEAT_LR, 0.1, s, steps=50)
        add(REPEAT_LR, 0.1, s, steps=200)
    return out


def test_fit_recovers_a_known_response() -> None:
    model = planning.fit(synthetic(), KNOBS, metric_name="val_bpb", source="synthetic")
    # The mean at configs it never saw is close to the truth (well inside the spread of the response).
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(20):
        lr, wd = 10 ** (-4 + 3 * rng.uniform(0.1, 0.9)), float(rng.uniform(0.02, 0.28))
        errors.append(abs(model.expected({"LEARNING_RATE": lr, "WEIGHT_DECAY": wd}) - truth(lr, wd)))
    assert np.mean(errors) < 0.02
    # The optimum is found where it is: u = 0.6 beats both ends.
    best = model.expected({"LEARNING_RATE": 10 ** (-4 + 3 * 0.6), "WEIGHT_DECAY": 0.09})
    assert best < model.expected({"LEARNING_RATE": 1e-4, "WEIGHT_DECAY": 0.09}) - 0.1
    # Noise from repeats, the step term from the same config at three lengths, crashes, overhead.
    assert model.noise_sd == pytest.approx(NOISE, rel=0.5)
    assert model.speed_gain == pytest.approx(SLOPE, abs=0.02)
    assert model.crash_rate == pytest.approx(4 / 110, abs=1e-9)
    assert model.overhead_seconds == pytest.approx(3.0)
    # The held-out check: errors near the noise floor, and the response explained.
    assert model.holdout is not None and model.holdout.runs >= 10
    assert model.holdout.rmse < 3 * NOISE
    assert model.holdout.r2 > 0.8
    assert "held-out check" in model.holdout.line("val_bpb")
    # A simulated run: the model's mean plus seeded noise; the same run twice is the same.
    cpu = model.speeds["cpu"]  # the class the runs were measured on
    a = model.evaluate({"LEARNING_RATE": 1e-2, "WEIGHT_DECAY": 0.1}, cpu, 0, 1, 10)
    b = model.evaluate({"LEARNING_RATE": 1e-2, "WEIGHT_DECAY": 0.1}, cpu, 0, 1, 10)
    assert a == b
    assert model.warnings() == []


def test_more_steps_on_a_faster_class_help_by_the_fitted_slope() -> None:
    model = planning.fit(synthetic(), KNOBS, source="synthetic")
    model.reference_hardware = "H100"
    model.reference_budget_seconds = 10
    config = {"LEARNING_RATE": 1e-2, "WEIGHT_DECAY": 0.1}
    assert model.expected(config, 1.5, 10) == pytest.approx(model.expected(config, 1.0, 10) - model.speed_gain
                                                            * math.log(1.5))


def test_refuses_to_extrapolate_silently() -> None:
    # Measured only at learning rates in the lower half of the range (u in [0, 0.5]).
    model = planning.fit(synthetic(lr_units=(0.0, 0.5)), KNOBS, source="synthetic")
    low, high = model.region["LEARNING_RATE"]
    assert high < 0.55
    edge = {"LEARNING_RATE": 10 ** (-4 + 3 * high), "WEIGHT_DECAY": 0.1}
    far = {"LEARNING_RATE": 10 ** (-4 + 3 * 0.95), "WEIGHT_DECAY": 0.1}
    # Far outside: answered at the region's edge, not by the GP's guess out there ...
    assert model.expected(far) == pytest.approx(model.expected(edge))
    cpu = model.speeds["cpu"]
    model.evaluate(edge, cpu, 0, 1, 10)
    assert model.warnings() == []
    model.evaluate(far, cpu, 0, 2, 10)
    model.evaluate(far, cpu, 0, 3, 10)
    # ... and said: the knob and how often.
    (line,) = model.warnings()
    assert "outside the measured region" in line and "LEARNING_RATE (2)" in line
    # Training far longer than anything measured is outside too.
    model.reference_budget_seconds = 10
    model.evaluate(edge, cpu, 0, 4, 1000)
    assert "steps" in model.warnings()[0]


def test_too_few_runs_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="too few measured runs"):
        planning.fit(synthetic()[:3], KNOBS)


def test_a_code_change_gets_a_per_patch_offset_not_a_knob_effect() -> None:
    runs = synthetic()
    code = [Observation(knobs={"LEARNING_RATE": 1e-2, "WEIGHT_DECAY": 0.1}, outcome="ok",
                        metric=truth(1e-2, 0.1) - 0.2, seed=s, steps=100, patch_key="experiment 9") for s in range(3)]
    model = planning.fit(runs + code, KNOBS, source="synthetic")
    assert model.patch_offsets["experiment 9"] == pytest.approx(-0.2, abs=0.03)
    assert abs(model.expected({"LEARNING_RATE": 1e-2, "WEIGHT_DECAY": 0.1}) - truth(1e-2, 0.1)) < 0.02


def test_knob_only_patches() -> None:
    patch = "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LEARNING_RATE = 1e-3\n+LEARNING_RATE = 2e-3  # x\n"
    assert planning.knob_only(patch, KNOBS)
    assert not planning.knob_only(patch + "+import math\n", KNOBS)
    assert planning.knob_only("", KNOBS)


def test_the_simulated_executor_takes_a_fitted_surrogate(tmp_path) -> None:
    model = planning.fit(synthetic(), KNOBS, source="synthetic")
    executor = SimulatedExecutor("cpu:2", model, speeds=model.speeds)
    assert executor.surrogate is model


# --------------------------------------------------------------------------- the round trip

QUADRATIC_TRAIN = '''\
import hashlib, math, os
import evalkit

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.1
seed = int(os.environ["LABFLEET_SEED"])
u = (math.log10(LEARNING_RATE) + 4) / 3
noise = int(hashlib.sha256(f"{seed}".encode()).hexdigest()[:8], 16) / 2**32 - 0.5
metric = 1.0 + 0.8 * (u - 0.6) ** 2 + 0.3 * (WEIGHT_DECAY / 0.3 - 0.3) ** 2 + 0.02 * noise
evalkit.report(metric, training_seconds=0.5, num_steps=100)
'''
KNOB_TOML = textwrap.dedent('''\
    [knobs]
    LEARNING_RATE = { file = "train.py", low = 1e-4, high = 1e-1, log = true }
    WEIGHT_DECAY = { file = "train.py", low = 0.0, high = 0.3 }
''')


def test_round_trip_real_session_to_a_plan(target_factory, tmp_path) -> None:
    folder = target_factory(QUADRATIC_TRAIN, extra_toml=KNOB_TOML, budget=1, timeout=30)
    real = run_cli("run", "-C", str(folder), "--workers", "2", "--researcher", "random", "--max-experiments", "8",
                   "--seed", "3")
    assert real.returncode == 0, real.stderr
    ledger = folder / ".labfleet" / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        done = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
    assert done >= 8

    saved = tmp_path / "plan"
    proc = run_cli("simulate", "--from-ledger", str(folder), "--fleet", "cpu:4", "--hours", "0.05",
                   "--researcher", "random", "--save", str(saved))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "surrogate: fitted to" in out
    assert "held-out check" in out and "mean abs error" in out
    assert "utilization" in out and "experiments" in out
    # The plan's ledger says which surrogate it ran against, and the report says so.
    with sqlite3.connect(saved / ".labfleet" / "ledger.sqlite") as db:
        (data,) = db.execute("SELECT data FROM events WHERE kind = 'surrogate'").fetchone()
    assert json.loads(data)["source"].startswith("fitted to")
    from labfleet.analysis.report import surrogate_source
    from labfleet.ledger import Ledger

    plan_ledger = Ledger(saved / ".labfleet" / "ledger.sqlite")
    sid = plan_ledger.db.execute("SELECT MAX(id) FROM sessions").fetchone()[0]
    assert surrogate_source(plan_ledger, sid).startswith("fitted to")
    real_ledger = Ledger(folder / ".labfleet" / "ledger.sqlite")
    assert surrogate_source(real_ledger, 1) is None  # a real session

    # A fleet class never measured, far faster: the step term is held at the edge, and said.
    fast = run_cli("simulate", "--from-ledger", str(folder / ".labfleet" / "ledger.sqlite"), "--fleet", "H100:2",
                   "--hours", "0.05", "--researcher", "random", "--json")
    assert fast.returncode == 0, fast.stderr
    result = json.loads(fast.stdout)
    assert result["holdout"]["runs"] >= 1
    assert any("outside the measured region" in w and "steps" in w for w in result["warnings"])


def test_from_ledger_errors_are_one_line(tmp_path) -> None:
    proc = run_cli("simulate", "--from-ledger", str(tmp_path / "nowhere"))
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = run_cli("simulate", "--from-ledger", str(tmp_path), "--surrogate", "measured")
    assert proc.returncode != 0 and "give one" in proc.stderr


def test_simulate_on_the_measured_surrogate() -> None:
    proc = run_cli("simulate", "--surrogate", "measured", "--fleet", "H100:2", "--hours", "0.5", "--budget", "300",
                   "--researcher", "random")
    assert proc.returncode == 0, proc.stderr
    assert "surrogate: measured:" in proc.stdout and "tinygpt_cpu.csv" in proc.stdout
    assert "held-out check" in proc.stdout


def test_a_missing_plan_extra_is_a_one_line_error(tmp_path) -> None:
    blocker = tmp_path / "block" / "sklearn"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('scikit-learn is not installed')\n")
    proc = run_cli("simulate", "--surrogate", "measured", "--hours", "0.1",
                   env={"PYTHONPATH": str(blocker.parent)})
    assert proc.returncode != 0
    assert "pip install 'labfleet[plan]'" in proc.stderr
    assert "Traceback" not in proc.stderr
