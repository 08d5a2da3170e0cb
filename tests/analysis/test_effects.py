"""Two-level designs and effect estimates against hand-written tables and hand-computed values."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from labfleet.analysis.effects import (
    design_label,
    estimate_effects,
    generators,
    levels_design,
    session_effects,
    t_quantile,
    two_level_design,
    wave_effects,
)
from labfleet.records import Decision
from labfleet.testing.snapshots import BASE, result
from labfleet.testing.snapshots import experiment as _experiment

_ids = itertools.count(10_000)  # our own ids: test_researchers' counter (and its seeded expectations) stays untouched


def experiment(knobs, decision=Decision.DISCARDED, **kwargs):
    kwargs.setdefault("exp_id", next(_ids))
    return _experiment(knobs, decision, **kwargs)


Z95 = 1.959963984540054

# --------------------------------------------------------------------------- designs


def matrix(design, factors) -> np.ndarray:
    return np.array([[row[f] for f in factors] for row in design])


def resolution_at_least_4(x: np.ndarray) -> bool:
    """No main-effect column equals (+-) a two-factor interaction column."""
    k = x.shape[1]
    products = {tuple(s * x[:, a] * x[:, b]) for a, b in itertools.combinations(range(k), 2) for s in (1, -1)}
    return not any(tuple(x[:, c]) in products for c in range(k))


def test_full_factorial_in_yates_order():
    assert [tuple(row.values()) for row in two_level_design("ABC", 8)] == [
        (-1, -1, -1), (1, -1, -1), (-1, 1, -1), (1, 1, -1),
        (-1, -1, 1), (1, -1, 1), (-1, 1, 1), (1, 1, 1),
    ]
    assert design_label(3, 8) == "2^3" and generators("ABC", 8) == []
    assert len(two_level_design("ABC", 100)) == 8  # never more than the full factorial


def test_half_fraction_d_equals_abc():
    design = two_level_design(["A", "B", "C", "D"], 8)
    x = matrix(design, "ABCD")
    assert x.shape == (8, 4)
    assert (x.sum(axis=0) == 0).all()  # balanced
    assert (x.T @ x == 8 * np.eye(4)).all()  # orthogonal
    assert (x[:, 3] == x[:, 0] * x[:, 1] * x[:, 2]).all()
    assert generators("ABCD", 8) == ["D=ABC"] and design_label(4, 8) == "2^(4-1)"
    assert resolution_at_least_4(x)
    assert len(two_level_design("ABCD", 12)) == 8  # the largest power of two that fits


def test_saturated_2_7_4_in_8_runs():
    a, b, c = [-1, 1] * 4, [-1, -1, 1, 1] * 2, [-1] * 4 + [1] * 4
    expected = [
        (a[i], b[i], c[i], a[i] * b[i], a[i] * c[i], b[i] * c[i], a[i] * b[i] * c[i]) for i in range(8)
    ]
    assert [tuple(row.values()) for row in two_level_design("ABCDEFG", 8)] == expected
    assert generators("ABCDEFG", 8) == ["D=AB", "E=AC", "F=BC", "G=ABC"]
    assert design_label(7, 8) == "2^(7-4)"


def test_textbook_generators_and_resolution():
    assert generators("ABCDE", 8) == ["D=AB", "E=AC"]
    assert generators("ABCDE", 16) == ["E=ABCD"]
    assert generators(["LR", "WD", "WARMUP", "DEPTH"], 8) == ["DEPTH=LR*WD*WARMUP"]
    for k, runs in [(4, 8), (5, 16), (6, 16), (7, 16), (8, 16), (6, 32), (10, 32), (16, 32), (9, 64)]:
        names = [f"X{i}" for i in range(k)]
        x = matrix(two_level_design(names, runs), names)
        assert x.shape == (runs, k)
        assert (x.T @ x == runs * np.eye(k)).all(), (k, runs)
        assert resolution_at_least_4(x), (k, runs)  # k <= runs / 2: main effects clear of two-factor interactions
    assert generators("ABCDEF", 16) == ["E=ABC", "F=ABD"]  # resolution IV, as E=ABC, F=BCD
    big = [f"X{i}" for i in range(31)]
    x = matrix(two_level_design(big, 32), big)
    assert (x.T @ x == 32 * np.eye(31)).all()  # saturated and still orthogonal


@pytest.mark.parametrize("factors, runs, message", [
    ("AB", 1, "at least 2 runs"),
    ("AB", 0, "at least 2 runs"),
    ("ABCDEFGH", 8, "8 factors do not fit a two-level design in 8 runs"),
    ("ABC", 3, "3 factors do not fit"),
    ("", 8, "at least one factor"),
    (["A", "A"], 8, "repeat"),
])
def test_impossible_designs(factors, runs, message):
    with pytest.raises(ValueError, match=message) as info:
        two_level_design(factors, runs)
    assert "\n" not in str(info.value)


def test_levels_design():
    widths = [32, 48, 64, 96, 128, 192]
    assert levels_design({"D_MODEL": widths, "N_LAYER": [2]}, 6) == [{"D_MODEL": w, "N_LAYER": 2} for w in widths]
    grid = levels_design({"A": [1, 2, 3], "B": ["x", "y", "z"]}, 9)
    assert len(grid) == 9
    assert grid[:4] == [{"A": 1, "B": "x"}, {"A": 2, "B": "x"}, {"A": 3, "B": "x"}, {"A": 1, "B": "y"}]
    with pytest.raises(ValueError, match=r"3 x 3 = 9 cells does not fit in 8 runs"):
        levels_design({"A": [1, 2, 3], "B": [1, 2, 3]}, 8)
    with pytest.raises(ValueError, match="no levels"):
        levels_design({"A": []}, 8)


# --------------------------------------------------------------------------- effects


def two_by_two(y, names=("A", "B")):
    return list(zip(two_level_design(list(names), 4), y, strict=True))


def test_effects_of_a_2x2_with_known_noise():
    effects = estimate_effects(two_by_two([10, 14, 12, 20]), ["A", "B"], noise_sd=1.0)
    assert [e.name for e in effects.main] == ["A", "B"] and [e.name for e in effects.interactions] == ["A×B"]
    assert effects["A"].estimate == pytest.approx(6)  # ((14 + 20) - (10 + 12)) / 2
    assert effects["B"].estimate == pytest.approx(4)
    assert effects["A×B"].estimate == pytest.approx(2)  # ((10 + 20) - (14 + 12)) / 2
    for e in (*effects.main, *effects.interactions):
        assert e.se == pytest.approx(1.0)  # 2 * sd / sqrt(4)
        assert (e.low, e.high) == (pytest.approx(e.estimate - Z95), pytest.approx(e.estimate + Z95))
        assert e.significant
    assert effects.n == 4 and effects.df == 0 and effects.sd == 1.0
    wider = estimate_effects(two_by_two([10, 14, 12, 20]), ["A", "B"], noise_sd=1.0, confidence=0.99)
    assert wider["A"].high - wider["A"].estimate == pytest.approx(2.5758293, rel=1e-6)


def test_effects_with_replicates_use_the_residuals_and_t():
    rows = two_by_two([10, 14, 12, 20]) + two_by_two([12, 14, 10, 22])  # cell means 11, 14, 11, 21
    effects = estimate_effects(rows, ["A", "B"])
    assert effects["A"].estimate == pytest.approx(6.5)
    assert effects["B"].estimate == pytest.approx(3.5)
    assert effects["A×B"].estimate == pytest.approx(3.5)
    assert effects.df == 4  # 8 runs - 4 parameters
    assert effects.sd == pytest.approx(math.sqrt(6 / 4))  # residuals +-1, 0, 0, +-1, +-1 -> RSS 6
    se = 2 * math.sqrt(1.5) / math.sqrt(8)
    assert effects["A"].se == pytest.approx(se)
    assert effects["A"].high - effects["A"].estimate == pytest.approx(2.7764451 * se, rel=1e-6)  # t(0.975, 4)


def test_raw_levels_are_coded_around_their_midpoint():
    coded = estimate_effects(two_by_two([10, 14, 12, 20]), ["A", "B"], noise_sd=1.0)
    raw = [({"lr": 1e-3 if row["A"] < 0 else 4e-3, "act": "gelu" if row["B"] < 0 else "relu"}, y)
           for row, y in two_by_two([10, 14, 12, 20])]
    effects = estimate_effects(raw, ["lr", "act"], noise_sd=1.0)
    assert [e.estimate for e in effects.main] == pytest.approx([e.estimate for e in coded.main])
    assert effects["lr×act"].estimate == pytest.approx(2)
    assert effects.levels == {"lr": (1e-3, 4e-3), "act": ("gelu", "relu")}


def test_saturated_without_noise_has_no_interval():
    effects = estimate_effects(two_by_two([10, 14, 12, 20]), ["A", "B"])
    assert effects.df == 0 and effects.sd is None
    assert effects["A"].se is None and effects["A"].low is None and not effects["A"].significant
    assert effects.describe("loss")[0] == "raising A raises loss by 6 (no noise estimate: significance unknown)"


def test_aliased_interactions_are_dropped_and_named():
    design = two_level_design("ABC", 4)  # 2^(3-1): C = AB
    effects = estimate_effects(list(zip(design, [1, 2, 3, 5], strict=True)), "ABC", noise_sd=0.1)
    assert [e.name for e in effects.main] == ["A", "B", "C"] and effects.interactions == ()
    assert effects["C"].aliases == ("A×B",) and effects["A"].aliases == ("B×C",)
    assert set(effects.dropped) == {"A×B", "A×C", "B×C"}
    assert effects["A"].estimate == pytest.approx(1.5)  # ((2 + 5) - (1 + 3)) / 2
    # 2^(4-1) with D = ABC: AB = CD, so A×B stays (naming C×D) and C×D is dropped
    design = two_level_design("ABCD", 8)
    y = [float(i * i % 7) for i in range(8)]
    effects = estimate_effects(list(zip(design, y, strict=True)), "ABCD", noise_sd=0.1)
    assert [e.name for e in effects.interactions] == ["A×B", "A×C", "A×D"]
    assert effects["A×B"].aliases == ("C×D",)


def test_describe_reads_like_a_finding():
    # Yates order (lr, warmup): effects lr -0.031, warmup +0.004, lr×warmup +0.012 around 1.0
    rows = two_by_two([1.0195, 0.9765, 1.0115, 0.9925], ("lr", "warmup"))
    effects = estimate_effects(rows, ["lr", "warmup"], noise_sd=0.008 / Z95)
    assert effects.describe("val_bpb", "minimize") == [
        "raising lr lowers val_bpb by 0.031 ± 0.008 (95% CI): better",
        "raising warmup raises val_bpb by 0.004 ± 0.008 (95% CI): not distinguishable from noise",
        "lr×warmup interaction +0.012 ± 0.008 (95% CI): the effect of lr depends on warmup",
    ]
    assert effects.describe("accuracy", "maximize")[0] == "raising lr lowers accuracy by 0.031 ± 0.008 (95% CI): worse"
    noisy = estimate_effects(rows, ["lr", "warmup"], noise_sd=0.015 / Z95)
    assert noisy.describe("val_bpb")[2] == (
        "lr×warmup interaction +0.012 ± 0.015 (95% CI): not distinguishable from noise"
    )
    raw = [({"LR": 1e-3 if r["lr"] < 0 else 4e-3, "ACT": "gelu" if r["warmup"] < 0 else "relu"}, y) for r, y in rows]
    lines = estimate_effects(raw, ["LR", "ACT"], noise_sd=0.008 / Z95).describe("val_bpb")
    assert lines[0] == "raising LR from 0.001 to 0.004 lowers val_bpb by 0.031 ± 0.008 (95% CI): better"
    assert lines[1].startswith("ACT relu instead of gelu raises val_bpb by 0.004")
    with pytest.raises(ValueError, match="direction"):
        effects.describe("val_bpb", "down")


def test_to_json():
    effects = estimate_effects(two_by_two([10, 14, 12, 20]), ["A", "B"], noise_sd=1.0)
    data = json.loads(json.dumps(effects.to_json()))
    assert data["n"] == 4 and data["df"] == 0 and data["sd"] == 1.0 and data["confidence"] == 0.95
    assert data["main"][0] == {
        "name": "A", "estimate": pytest.approx(6), "se": pytest.approx(1), "low": pytest.approx(6 - Z95),
        "high": pytest.approx(6 + Z95), "significant": True, "aliases": [],
    }
    assert data["interactions"][0]["name"] == "A×B" and data["levels"] == {"A": [-1, 1], "B": [-1, 1]}


@pytest.mark.parametrize("rows, factors, message", [
    ([({"A": 1}, 1.0), ({"A": 1}, 2.0)], ["A"], "single value"),
    ([({"A": 1}, 1.0)], ["A"], "at least 2 results"),
    ([({"A": 1}, 1.0), ({"B": 1}, 2.0)], ["A"], "missing"),
    ([({"A": "x"}, 1.0), ({"A": "y"}, 2.0), ({"A": "z"}, 2.0)], ["A"], "non-numeric"),
    ([({"A": 1}, 1.0), ({"A": -1}, math.nan)], ["A"], "finite"),
    ([({"A": 1}, 1.0), ({"A": -1}, 2.0)], [], "no factors"),
])
def test_bad_input(rows, factors, message):
    with pytest.raises(ValueError, match=message):
        estimate_effects(rows, factors)


def test_t_quantiles():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.3026527, rel=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281389, rel=1e-6)
    assert t_quantile(0.995, 30) == pytest.approx(2.7499957, rel=1e-6)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764451, rel=1e-6)
    assert t_quantile(0.975, None) == pytest.approx(Z95)
    assert t_quantile(0.975, 1e7) == pytest.approx(Z95, rel=1e-5)


# --------------------------------------------------------------------------- waves in a history


def wave_history():
    """Wave 1: a 2^2 over LEARNING_RATE and WARMUP (one crash, one extra replicate); wave 2: two results."""
    history = []
    for (lr, warmup), y in zip(itertools.product([1e-3, 4e-3], [0.05, 0.2]), [2.0, 2.1, 1.8, 1.95], strict=True):
        knobs = {**BASE, "LEARNING_RATE": lr, "WARMUP": warmup}
        history.append(result(experiment(knobs, tags={"wave": "1"}), y))
    history.append(result(experiment({**BASE, "LEARNING_RATE": 4e-3, "WARMUP": 0.2}, tags={"wave": "1"}), 1.97))
    history.append(result(experiment({**BASE, "LEARNING_RATE": 1e-3, "WARMUP": 0.3}, tags={"wave": "1"}), None))
    history.append(result(experiment({**BASE, "BATCH": 4}, tags={"wave": "2"}), 2.0))
    history.append(result(experiment({**BASE, "BATCH": 16}, tags={"wave": "2"}), 2.1))
    history.append(result(experiment(BASE, Decision.BASELINE), 2.0))
    return history


def test_wave_effects_selects_the_wave_and_its_factors():
    history = wave_history()
    effects = wave_effects(history, "1", noise_sd=0.01)
    assert [e.name for e in effects.main] == ["LEARNING_RATE", "WARMUP"]  # BATCH and the crash's WARMUP=0.3 are out
    assert effects.n == 5 and effects.df == 1
    rows = [({name: r.experiment.knobs[name] for name in ("LEARNING_RATE", "WARMUP")}, r.run.metric)
            for r in history if r.ok and r.experiment.tags.get("wave") == "1"]
    direct = estimate_effects(rows, ["LEARNING_RATE", "WARMUP"], noise_sd=0.01)
    assert effects.to_json() == direct.to_json()
    assert effects.levels["LEARNING_RATE"] == (1e-3, 4e-3)
    assert wave_effects(history, 1, noise_sd=0.01).to_json() == direct.to_json()  # the tag as a number
    with pytest.raises(ValueError, match="wave 7: 0 ok result"):
        wave_effects(history, "7")


def test_session_effects_skips_small_waves():
    effects = session_effects(wave_history(), noise_sd=0.01)
    assert list(effects) == ["1"]  # wave 2 has only two results
    alone = wave_effects(wave_history(), "1", noise_sd=0.01)
    assert effects["1"].to_json() == alone.to_json()


# --------------------------------------------------------------------------- idea waves (patch factors)


def idea_wave(metrics: dict[tuple[str, ...], float | None], names=("RMS", "WIDE", "LR"), generators="",
              conflicts="[]", centre_metric: float | None = None):
    """A history: the centre (all off) and one experiment per cell, tagged as an ideas wave."""
    import json as _json

    centre = experiment(BASE, Decision.BASELINE, parent=None, metric=centre_metric)
    out = [result(centre, centre_metric)] if centre_metric is not None else []
    for on, metric in metrics.items():
        tags = {"wave": "i1", "cell": "0", "design": "2^3", "ideas": ",".join(names), "on": ",".join(on),
                "centre": str(centre.id), "generators": generators, "conflicts": conflicts,
                "ideas_json": _json.dumps([{"name": n, "patch": f"+{n}\n"} for n in names])}
        out.append(result(experiment(BASE, tags=tags), metric))
    return out


def test_idea_effects_match_a_hand_computation():
    # y = 2 - 0.1 RMS - 0.05 WIDE - 0.08 RMS*WIDE - 0.03 LR  (1 = on): every cell of a 2^3
    def y(on):
        a, b, c = ("RMS" in on), ("WIDE" in on), ("LR" in on)
        return 2 - 0.1 * a - 0.05 * b - 0.08 * a * b - 0.03 * c

    cells = [on for r in range(1, 4) for on in itertools.combinations(("RMS", "WIDE", "LR"), r)]
    history = idea_wave({on: y(on) for on in cells}, centre_metric=y(()))
    [(tag, eff)] = session_effects(history, noise_sd=0.01).items()
    assert tag == "i1" and eff.n == 8 and eff.levels["RMS"] == ("off", "on")
    # by hand: mean over the cells with RMS on minus with it off = -0.1 - 0.08/2
    assert eff["RMS"].estimate == pytest.approx(-0.14)
    assert eff["WIDE"].estimate == pytest.approx(-0.09)
    assert eff["LR"].estimate == pytest.approx(-0.03)
    assert eff["RMS×WIDE"].estimate == pytest.approx(-0.04)  # (y11 - y10 - y01 + y00) / 2
    assert eff["RMS×LR"].estimate == pytest.approx(0, abs=1e-12)
    half = Z95 * 2 * 0.01 / math.sqrt(8)  # se of a difference of two means of 4
    assert eff["RMS×WIDE"].half_width == pytest.approx(half)
    said = eff.describe("val_bpb")
    assert said[0] == "RMS lowers val_bpb by 0.140 ± 0.014 (95% CI): better"
    inter = next(line for line in said if line.startswith("RMS×WIDE"))
    assert inter == ("RMS×WIDE interaction -0.040 ± 0.014 (95% CI): the effect of RMS depends on WIDE "
                     "(RMS lowers val_bpb by 0.18 together with WIDE, lowers val_bpb by 0.1 without it)")
    assert said[-1] == "best guess (the terms beyond the noise, combined): RMS + WIDE + LR"
    assert eff.best_guess() == {"RMS", "WIDE", "LR"}
    assert eff.to_json()["best_guess"] == ["LR", "RMS", "WIDE"]


def test_idea_effects_state_conflicts_and_a_fraction_s_aliases():
    import json as _json

    # RMS and WIDE never combine: cells with both are missing; LR = RMS x WIDE is not even possible then
    def y(on):
        return 2 - 0.1 * ("RMS" in on) - 0.05 * ("WIDE" in on) - 0.03 * ("LR" in on)

    cells = [("RMS",), ("WIDE",), ("LR",), ("RMS", "LR"), ("WIDE", "LR")]
    conflicts = _json.dumps([{"on": ["RMS", "WIDE"], "clash": ["RMS", "WIDE"], "reason": "WIDE changes the lines RMS changes in train.py"},
                             {"on": ["RMS", "WIDE", "LR"], "clash": ["RMS", "WIDE"], "reason": "WIDE changes the lines RMS changes in train.py"}])
    history = idea_wave({on: y(on) for on in cells}, conflicts=conflicts, centre_metric=y(()))
    eff = session_effects(history, noise_sd=0.01)["i1"]
    assert eff["RMS"].estimate == pytest.approx(-0.1) and eff["WIDE"].estimate == pytest.approx(-0.05)
    assert "RMS×WIDE" in eff.dropped
    said = eff.describe("val_bpb")
    assert any(line.startswith("RMS and WIDE do not combine (WIDE changes the lines RMS changes in train.py); the 2 cells")
               and "each one's effect is measured with the other off" in line for line in said)

    # a half fraction with LR = -RMS x WIDE: the alias is said, in words
    frac = idea_wave({("RMS", "LR"): 1.9, ("WIDE", "LR"): 1.95, ("RMS", "WIDE"): 1.85}, generators="LR=-RMS×WIDE",
                     centre_metric=2.0)
    said = session_effects(frac, noise_sd=0.01)["i1"].describe("val_bpb")
    assert "LR is aliased with minus RMS×WIDE (a fractional design): its effect cannot be told apart from that interaction" in said


def test_an_idea_wave_without_its_centre_says_so():
    history = idea_wave({("RMS",): 1.9, ("WIDE",): 1.95, ("RMS", "WIDE"): 1.8})
    eff = session_effects(history, noise_sd=0.01)["i1"]
    assert eff.n == 3 and any("has no result: it is left out" in line for line in eff.notes)
