"""The waves researcher over hand-made ledger snapshots (the helpers of test_researchers)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest

from labfleet.analysis.effects import two_level_design, wave_effects
from labfleet.errors import ConfigError
from labfleet.records import Decision
from labfleet.researchers import RESEARCHERS, WavesResearcher, make_researcher
from labfleet.researchers.space import key
from labfleet.researchers.waves import level_pair
from labfleet.target import Knob
from labfleet.testing.snapshots import BASE, BASELINE, KNOBS, result, state, well_typed
from labfleet.testing.snapshots import experiment as _experiment

_ids = itertools.count(10_000)  # our own ids: test_researchers' counter (and its seeded expectations) stays untouched


def experiment(knobs, decision=Decision.DISCARDED, **kwargs):
    kwargs.setdefault("exp_id", next(_ids))
    return _experiment(knobs, decision, **kwargs)


# KNOBS in order: LEARNING_RATE, N_LAYER, WARMUP | BATCH, ACTIVATION (+ LEARNING_RATE to fill the group)
FIRST = ("LEARNING_RATE", "N_LAYER", "WARMUP")
SECOND = ("BATCH", "ACTIVATION", "LEARNING_RATE")


def factors(p) -> tuple[str, ...]:
    return tuple(p.tags["factors"].split(","))


def pending_of(proposals) -> list:
    return [experiment(p.knobs, Decision.PENDING, tags=p.tags, parent=p.parent) for p in proposals]


def finish(proposals, metric=lambda knobs: 2.0) -> list:
    return [result(experiment(p.knobs, tags=p.tags, parent=p.parent), metric(p.knobs)) for p in proposals]


def coded_cells(proposals) -> set[tuple[int, ...]]:
    """Each proposal's factor levels as +-1 (above or below the centre's value)."""
    out = set()
    for p in proposals:
        names = factors(p)
        values = {n: {q.knobs[n] for q in proposals} for n in names}
        out.add(tuple(1 if p.knobs[n] == max(values[n], key=_order(n)) else -1 for n in names))
    return out


def _order(name):
    knob = KNOBS[name]
    return (lambda v: knob.choices.index(v)) if knob.choices is not None else (lambda v: v)


def test_registered():
    assert RESEARCHERS["waves"] is WavesResearcher
    r = make_researcher("waves", seed=3, factors=2, step=0.25)
    assert (r.seed, r.factors, r.step) == (3, 2, 0.25)
    with pytest.raises(ConfigError, match="factors must be at least 1"):
        make_researcher("waves", factors=0)
    with pytest.raises(ConfigError, match=r"step must be in \(0, 1\]"):
        make_researcher("waves", step=0)
    with pytest.raises(ConfigError, match="'waves'.*'depth'"):
        make_researcher("waves", depth=2)


def test_a_wave_fills_the_workers_with_the_design():
    proposals = make_researcher("waves").propose(state(), 8)
    assert len(proposals) == 8
    assert len({key(p.knobs) for p in proposals}) == 8
    assert {p.tags["wave"] for p in proposals} == {"1"} and {factors(p) for p in proposals} == {FIRST}
    assert {p.tags["design"] for p in proposals} == {"2^3"} and {p.tags["step"] for p in proposals} == {"0.5"}
    assert sorted(int(p.tags["cell"]) for p in proposals) == list(range(8))
    assert all(p.parent == BASELINE.id for p in proposals)
    assert all(well_typed(p.knobs) for p in proposals)
    # the full 2^3 around the baseline: every other knob stays at the centre
    assert coded_cells(proposals) == {tuple(row.values()) for row in two_level_design(FIRST, 8)}
    assert {p.knobs["LEARNING_RATE"] for p in proposals} == {1e-4, 0.03162}  # 1e-3 x/ (10^3)^0.5, clipped
    assert {p.knobs["WARMUP"] for p in proposals} == {0.0, 0.3}  # 0.1 -+ 0.2, clipped
    assert {p.knobs["N_LAYER"] for p in proposals} == {1, 3}  # the neighbouring choices of 2
    assert all(p.knobs["BATCH"] == 8 and p.knobs["ACTIVATION"] == "relu" for p in proposals)
    cell = next(p for p in proposals if p.tags["cell"] == "0")
    assert cell.description == "wave 1 cell 0: LEARNING_RATE=1e-4 N_LAYER=1 WARMUP=0.0"
    assert all(name in cell.hypothesis for name in FIRST)


def test_the_next_call_continues_the_wave_then_starts_the_next_group():
    researcher = make_researcher("waves", seed=1)
    first = researcher.propose(state(), 3)  # 3 workers: a wave of 4 cells, the fourth comes next
    assert len(first) == 3 and {p.tags["design"] for p in first} == {"2^(3-1)"}
    second = researcher.propose(state(pending=pending_of(first)), 3)
    assert [p.tags["wave"] for p in second] == ["1", "2", "2"]
    cells = first + second[:1]
    assert sorted(int(p.tags["cell"]) for p in cells) == [0, 1, 2, 3]
    design = two_level_design(FIRST, 4)  # C = AB: the half fraction
    assert coded_cells(cells) == {tuple(row.values()) for row in design}
    assert {factors(p) for p in second[1:]} == {SECOND}
    assert not {key(p.knobs) for p in first} & {key(p.knobs) for p in second}


def test_a_new_wave_is_centred_on_the_new_champion_with_the_next_group():
    researcher = make_researcher("waves")
    wave1 = researcher.propose(state(), 4)
    history = finish(wave1, lambda k: 2.0 - k["WARMUP"])  # the warmer the better
    best = min(history, key=lambda r: r.run.metric).experiment
    champion = experiment(best.knobs, Decision.KEPT, tags=best.tags, exp_id=best.id, metric=1.7)
    wave2 = researcher.propose(state(history=history, champion=champion), 4)
    assert {p.tags["wave"] for p in wave2} == {"2"} and {factors(p) for p in wave2} == {SECOND}
    assert all(p.parent == champion.id and p.tags["centre"] == str(champion.id) for p in wave2)
    for p in wave2:  # the knobs outside the group stay at the champion's values
        assert all(p.knobs[k] == champion.knobs[k] for k in ("N_LAYER", "WARMUP"))
    assert {p.knobs["BATCH"] for p in wave2} == {4, 32}  # 8 x/ (64/4)^0.5, clipped to 4
    assert {p.knobs["ACTIVATION"] for p in wave2} == {"relu", "gelu"}


def test_the_step_halves_once_every_group_had_a_wave():
    researcher = make_researcher("waves")
    history: list = []
    steps = []
    for _ in range(3):
        proposals = researcher.propose(state(history=history), 8)
        steps.append((proposals[0].tags["wave"], factors(proposals[0]), proposals[0].tags["step"]))
        history += finish(proposals)
    assert steps == [("1", FIRST, "0.5"), ("2", SECOND, "0.5"), ("3", FIRST, "0.25")]
    lr = {p.experiment.knobs["LEARNING_RATE"] for p in history if p.experiment.tags.get("wave") == "3"}
    assert lr == {1.778e-4, 5.623e-3}  # 1e-3 x/ 10^0.75


def test_values_stay_in_range_near_the_bounds():
    champion = experiment({**BASE, "LEARNING_RATE": 0.1, "WARMUP": 0.0, "N_LAYER": 4, "BATCH": 63}, Decision.KEPT)
    snapshot = state(history=[result(champion, 1.0)], champion=champion)
    proposals = make_researcher("waves").propose(snapshot, 16)
    assert len(proposals) == 16 and all(well_typed(p.knobs) for p in proposals)
    assert {p.knobs["LEARNING_RATE"] for p in proposals} == {3.162e-3, 0.1}  # only down from the top
    assert {p.knobs["N_LAYER"] for p in proposals} == {3, 4}  # the last choice and its neighbour
    assert {p.knobs["BATCH"] for p in proposals if p.tags["wave"] == "2"} == {16, 64}  # 63 x/ 4, clipped
    assert all(type(p.knobs["BATCH"]) is int for p in proposals)


def test_integer_and_choice_levels():
    batch = Knob(file="t.py", low=4, high=64, integer=True, log=True)
    assert level_pair(batch, 8, 0.5) == (4, 32)
    assert level_pair(batch, 8, 0.001) == (7, 9)  # integers move by at least 1
    layers = Knob(file="t.py", choices=[1, 2, 3, 4])
    assert level_pair(layers, 1, 0.5) == (1, 2) and level_pair(layers, 3, 0.5) == (2, 4)
    assert level_pair(Knob(file="t.py", choices=["x"]), "x", 0.5) is None


def test_never_repeats_history_or_pending():
    researcher = make_researcher("waves")
    planned = researcher.propose(state(), 8)
    done = [result(experiment(planned[0].knobs), 2.0)]  # the same settings, run by someone else
    pending = [experiment(planned[1].knobs, Decision.PENDING)]
    proposals = make_researcher("waves").propose(state(history=done, pending=pending), 8)
    keys = {key(p.knobs) for p in proposals}
    assert len(keys) == 8 and not keys & {key(planned[0].knobs), key(planned[1].knobs), key(BASE)}
    assert sum(p.tags["wave"] == "1" for p in proposals) == 6  # the other two cells were tried already


def test_rebuilds_after_a_restart():
    researcher = make_researcher("waves", seed=5)
    first = researcher.propose(state(), 2)  # wave 1 has 4 cells; two are out
    history = finish(first[:1])
    pending = pending_of(first[1:])
    snapshot = state(history=history, pending=pending)
    again = researcher.propose(snapshot, 5)
    fresh = make_researcher("waves", seed=5).propose(snapshot, 5)
    assert [(dict(p.knobs), dict(p.tags), p.description) for p in fresh] == \
           [(dict(p.knobs), dict(p.tags), p.description) for p in again]
    assert [p.tags["wave"] for p in fresh] == ["1", "1", "2", "2", "2"]
    assert {int(p.tags["cell"]) for p in first + fresh[:2]} == {0, 1, 2, 3}


def test_the_same_wave_is_not_run_twice_around_the_same_values():
    """With the champion unchanged and every cell of both groups tried, the next waves move to a finer step."""
    researcher = make_researcher("waves")
    history: list = []
    seen = set()
    for _ in range(6):
        proposals = researcher.propose(state(history=history), 8)
        assert proposals
        for p in proposals:
            assert key(p.knobs) not in seen
            seen.add(key(p.knobs))
        history += finish(proposals)
    waves = [(p.experiment.tags["factors"], p.experiment.tags["step"]) for p in history]
    assert len(set(waves)) == 6


def test_never_runs_dry_around_a_local_optimum():
    """The champion never changes: every group at every step once, then the knobs are grouped afresh."""
    researcher = make_researcher("waves")
    history: list = []
    for _ in range(20):
        proposals = researcher.propose(state(history=history), 8)
        assert proposals, "a waves researcher keeps proposing"
        history += finish(proposals)
    waves = [(r.experiment.tags["factors"], r.experiment.tags["step"]) for r in history]
    first_round = list(dict.fromkeys(waves))[:14]  # 2 groups x 7 steps
    assert {step for _, step in first_round} == {"0.5", "0.25", "0.125", "0.0625", "0.03125", "0.015625", "0.0078125"}
    later = {factors for factors, _ in list(dict.fromkeys(waves))[14:]}
    assert later - {factors for factors, _ in first_round}, "a new round studies new knob groups"
    assert len({key(r.experiment.knobs) for r in history}) == len(history)


def test_a_tiny_space_runs_dry():
    knobs = {"A": Knob(file="t.py", choices=[1, 2]), "B": Knob(file="t.py", choices=[True, False])}
    baseline = experiment({"A": 1, "B": True}, Decision.BASELINE, parent=None, exp_id=1, metric=1.0)
    researcher = make_researcher("waves")
    proposals = researcher.propose(state(knobs=knobs, baseline=baseline), 4)
    assert len(proposals) == 3  # a 2^2 without its centre
    history = finish(proposals)
    assert researcher.propose(state(history, knobs=knobs, baseline=baseline), 4) == []


def test_wave_results_give_effects():
    researcher = make_researcher("waves")
    proposals = researcher.propose(state(), 8)
    history = finish(proposals, lambda k: 2 + 0.1 * math.log10(k["LEARNING_RATE"]) - k["WARMUP"] / 3)
    effects = wave_effects(history, "1")
    assert [e.name for e in effects.main] == list(FIRST)
    assert effects["LEARNING_RATE"].estimate == pytest.approx(0.1 * math.log10(0.03162 / 1e-4))
    assert effects["WARMUP"].estimate == pytest.approx(-0.1)
    assert effects["N_LAYER"].estimate == pytest.approx(0, abs=1e-12)


def test_stays_correct_over_a_long_history():
    history = [result(experiment({**BASE, "WARMUP": i / 4000}), 2.0 + i / 1e5) for i in range(1000)]
    researcher = make_researcher("waves")
    pending: list = []
    for _ in range(20):  # one worker frees at a time, as in a running session
        [p] = researcher.propose(state(history=history, pending=pending), 1)
        pending.append(experiment(p.knobs, Decision.PENDING, tags=p.tags, parent=p.parent))
    keys = {key(e.knobs) for e in pending}
    assert len(keys) == 20 and not keys & {key(r.experiment.knobs) for r in history}
    assert all(well_typed(e.knobs) for e in pending)
    assert [e.tags["wave"] for e in pending][:4] == ["1"] * 4
    fresh = make_researcher("waves").propose(state(history=history, pending=pending), 3)
    assert [dict(p.knobs) for p in fresh] == [dict(p.knobs) for p in researcher.propose(
        state(history=history, pending=pending), 3)]


def test_a_real_session_runs_a_wave_and_its_effects_read_back(tmp_path):
    from tests.conftest import lab, run_session

    ledger, loop = run_session(lab(tmp_path), make_researcher("waves", factors=2), workers=2, max_experiments=4)
    history, pending = ledger.history(loop.session_id)
    assert not pending
    wave = [r for r in history if r.experiment.tags.get("wave") == "1"]
    assert len(wave) == 4 and all(r.ok for r in wave)
    assert {r.experiment.tags["factors"] for r in wave} == {"LEARNING_RATE,N_LAYER"}
    effects = wave_effects(history, "1", noise_sd=0.01)
    # the lab's metric: 1 + (log10 lr + 2)^2 + 0.01 * N_LAYER, with lr 1e-4 or 0.03162 and N_LAYER 1 or 3
    lr_effect = (math.log10(0.03162) + 2) ** 2 - (math.log10(1e-4) + 2) ** 2
    assert effects["LEARNING_RATE"].estimate == pytest.approx(lr_effect, abs=1e-3)
    assert effects["N_LAYER"].estimate == pytest.approx(0.02, abs=1e-3)
    assert effects.describe("val_bpb")[0].startswith("raising LEARNING_RATE from 0.0001 to 0.03162 lowers val_bpb")


def test_a_finished_wave_is_followed_by_its_best_guess():
    """Main effects beyond the noise are combined into one proposal (the centre otherwise)."""
    researcher = make_researcher("waves")
    wave = researcher.propose(state(), 8)
    lr_low = min(p.knobs["LEARNING_RATE"] for p in wave)
    # a higher learning rate helps by 0.05 (noise sd 0.01: effect se 0.007); nothing else matters
    done = finish(wave, metric=lambda knobs: 2.0 - 0.05 * (knobs["LEARNING_RATE"] > lr_low))
    snapshot = replace(state(history=done), noise={"cpu": 0.01})
    [guess, *rest] = researcher.propose(snapshot, 2)
    assert guess.tags == {"best_of_wave": "1", "tier": "validate"} and guess.description.startswith("wave 1 best guess: LEARNING_RATE=")
    assert guess.knobs["LEARNING_RATE"] == max(p.knobs["LEARNING_RATE"] for p in wave)
    assert guess.knobs["N_LAYER"] == BASE["N_LAYER"] and guess.knobs["WARMUP"] == BASE["WARMUP"]
    assert all("wave" in p.tags for p in rest)  # then the next wave
    # proposed once, also when the snapshot lists it as pending
    pending = pending_of([guess])
    again = researcher.propose(replace(state(history=done, pending=pending), noise={"cpu": 0.01}), 4)
    assert not any("best_of_wave" in p.tags for p in again)
    # without a noise estimate there is no "beyond the noise": no guess
    fresh = make_researcher("waves")
    fresh.propose(state(), 8)
    assert not any("best_of_wave" in p.tags for p in fresh.propose(state(history=done), 2))


def test_a_wave_whose_winners_still_wait_for_validation_counts_as_done_on_their_screen_results():
    """With tiers the best cells stay pending while the fast class validates them: their
    screening runs (state.screened) finish the wave, so its best guess does not wait."""
    researcher = make_researcher("waves")
    wave = researcher.propose(state(), 8)
    lr_low = min(p.knobs["LEARNING_RATE"] for p in wave)
    done = finish(wave, metric=lambda knobs: 2.0 - 0.05 * (knobs["LEARNING_RATE"] > lr_low))
    decided = [r for r in done if r.run.metric == 2.0]  # the losers were discarded at once
    waiting = [replace(r, experiment=replace(r.experiment, decision=Decision.PENDING)) for r in done
               if r.run.metric != 2.0]
    assert len(decided) == len(waiting) == 4
    partial = replace(state(history=decided, pending=[r.experiment for r in waiting]), noise={"cpu": 0.01})
    assert not any("best_of_wave" in p.tags for p in researcher.propose(partial, 2))  # half a wave: no guess
    fresh = make_researcher("waves")
    fresh.propose(state(), 8)
    screened = replace(partial, screened=tuple(waiting))
    [guess, *_] = fresh.propose(screened, 2)
    assert guess.tags == {"best_of_wave": "1", "tier": "validate"}
    assert guess.knobs["LEARNING_RATE"] == max(p.knobs["LEARNING_RATE"] for p in wave)
    # once they are decided they come from the history: the guess is not proposed twice
    later = replace(state(history=done, pending=pending_of([guess])), noise={"cpu": 0.01})
    assert not any("best_of_wave" in p.tags for p in fresh.propose(later, 4))


def test_concurrent_waves_around_one_centre_are_combined_from_their_best_winners():
    """Two waves around the baseline over disjoint knobs each find a winner: their levels
    together are one proposal (validated at once with tiers), proposed once; losers never count."""
    researcher = make_researcher("waves", factors=2)  # groups (LR, N_LAYER), (WARMUP, BATCH), ...
    first = researcher.propose(state(), 8)
    assert {factors(p) for p in first} == {("LEARNING_RATE", "N_LAYER"), ("WARMUP", "BATCH")}
    lr_high = max(p.knobs["LEARNING_RATE"] for p in first)
    batch_high = max(p.knobs["BATCH"] for p in first)

    def metric(knobs):
        return 2.0 - 0.05 * (knobs["LEARNING_RATE"] == lr_high) - 0.03 * (knobs["BATCH"] == batch_high)

    done = finish(first, metric)
    waiting = [replace(r, experiment=replace(r.experiment, decision=Decision.PENDING)) for r in done
               if r.run.metric < 2.0]
    decided = [r for r in done if r.run.metric == 2.0]
    snapshot = replace(state(history=decided, pending=[r.experiment for r in waiting]), screened=tuple(waiting))
    combos = [p for p in researcher.propose(snapshot, 4) if "combines" in p.tags]
    assert len(combos) == 1
    [combo] = combos
    assert combo.tags == {"combines": "1+2", "tier": "validate"} and combo.parent == BASELINE.id
    best1 = min((r for r in waiting if "LEARNING_RATE" in r.experiment.tags["factors"]), key=lambda r: r.run.metric)
    best2 = min((r for r in waiting if "BATCH" in r.experiment.tags["factors"]), key=lambda r: r.run.metric)
    for name in ("LEARNING_RATE", "N_LAYER"):
        assert combo.knobs[name] == best1.experiment.knobs[name]
    for name in ("WARMUP", "BATCH"):
        assert combo.knobs[name] == best2.experiment.knobs[name]
    assert combo.knobs["ACTIVATION"] == BASE["ACTIVATION"]
    again = researcher.propose(replace(snapshot, pending=(*snapshot.pending, *pending_of([combo]))), 4)
    assert not any("combines" in p.tags for p in again)
    # when every cell lost (discarded), nothing is combined
    fresh = make_researcher("waves", factors=2)
    fresh.propose(state(), 8)
    assert not any("combines" in p.tags for p in fresh.propose(state(history=finish(first)), 4))


# --------------------------------------------------------------------------- ideas as factors: composing cells

from labfleet.researchers import ideas as ideas_mod  # noqa: E402
from labfleet.target import unified_diff  # noqa: E402

SOURCE = """\
LR = 1e-3  # learning rate
DEPTH = 2
WIDTH = 64
def block(x):
    x = norm(x)
    return act(x)
"""


def idea(name: str, old: str, new: str, source: str = SOURCE) -> ideas_mod.Idea:
    assert source.count(old) == 1
    return ideas_mod.Idea(name, unified_diff("train.py", source, source.replace(old, new)))


A = idea("LR_UP", "LR = 1e-3", "LR = 1e-2")
B = idea("WIDE", "WIDTH = 64", "WIDTH = 128")
C = idea("RMS", "x = norm(x)", "x = rms(x)")
C2 = idea("LAYERNORM", "x = norm(x)", "x = layer_norm(x)")  # the same line as RMS: they cannot combine
BROKEN = idea("BROKEN", "return act(x)", "return act(x")


def test_a_full_factorial_over_ideas_composes_every_combination_in_order():
    wave = ideas_mod.compose({"train.py": SOURCE}, [A, B, C], 8)
    assert wave.design == "2^3" and wave.generators == () and not wave.conflicts
    assert [c.on for c in wave.cells] == [
        (), ("LR_UP",), ("WIDE",), ("LR_UP", "WIDE"), ("RMS",), ("LR_UP", "RMS"), ("WIDE", "RMS"),
        ("LR_UP", "WIDE", "RMS")]
    assert wave.cells[0].patch == ""  # the centre itself: already measured
    everything = wave.cells[7].patch
    assert "+LR = 1e-2" in everything and "+WIDTH = 128" in everything and "+    x = rms(x)" in everything
    assert "+WIDTH" not in wave.cells[5].patch and "+LR = 1e-2" in wave.cells[5].patch
    # each cell's patch is its ideas' changes and nothing else: the signatures add up
    assert ideas_mod.changed_lines(wave.cells[3].patch) == sorted(
        ideas_mod.changed_lines(A.patch) + ideas_mod.changed_lines(B.patch))


def test_a_fraction_keeps_the_centre_and_states_its_aliases():
    wave = ideas_mod.compose({"train.py": SOURCE}, [A, B, C], 4)
    assert wave.design == "2^(3-1)"
    assert wave.cells[0].on == ()  # the all-off cell is in the fraction (generator sign chosen so)
    assert wave.generators == ("RMS=-LR_UP×WIDE",)
    rows = [tuple(name in c.on for name in wave.names) for c in wave.cells]
    # a regular half fraction: every pair of ideas takes all four combinations once
    for i, j in itertools.combinations(range(3), 2):
        assert sorted((r[i], r[j]) for r in rows) == sorted(itertools.product((False, True), repeat=2))
    said = ideas_mod.describe_aliasing(wave.names, wave.generators, [])
    assert said == ["RMS is aliased with minus LR_UP×WIDE (a fractional design): its effect cannot be told apart "
                    "from that interaction"]
    half = ideas_mod.compose({"train.py": SOURCE}, [A, B, C, idea("GELU", "return act(x)", "return gelu(x)")], 8)
    assert half.design == "2^(4-1)" and len(half.cells) == 8 and half.cells[0].on == ()


def test_ideas_that_touch_the_same_lines_are_recorded_as_conflicts_with_their_aliasing():
    wave = ideas_mod.compose({"train.py": SOURCE}, [A, C, C2], 8)
    broken = wave.conflicts
    assert [c.on for c in broken] == [("RMS", "LAYERNORM"), ("LR_UP", "RMS", "LAYERNORM")]
    assert all(c.clash == ("RMS", "LAYERNORM") and c.patch == "" for c in broken)
    assert broken[0].error == "LAYERNORM changes the lines RMS changes in train.py"
    assert all(c.patch for c in wave.cells if c.on and not c.error)
    conflicts = json.loads(wave.conflicts_json())
    [said] = ideas_mod.describe_aliasing(wave.names, wave.generators, conflicts)
    assert said.startswith("RMS and LAYERNORM do not combine (") and "the 2 cells with all of them on did not run" in said
    assert "their interaction cannot be estimated and each one's effect is measured with the other off" in said
    # the cells that do run are proposals from the centre, tagged so a restart (or `effects`) rebuilds the wave
    centre = experiment(BASE, Decision.BASELINE, exp_id=1)
    props = ideas_mod.cell_proposals(wave, 4, centre, "val_bpb")
    assert [p.tags["cell"] for p in props] == ["1", "2", "3", "4", "5"]
    assert {p.tags["wave"] for p in props} == {"i4"} and all(p.parent == 1 for p in props)
    assert json.loads(props[0].tags[ideas_mod.CONFLICTS_TAG]) == conflicts
    assert [i.name for i in ideas_mod.ideas_of(experiment(BASE, tags=props[0].tags))] == ["LR_UP", "RMS", "LAYERNORM"]


def test_a_combination_that_does_not_compile_is_a_conflict_and_a_broken_idea_an_error():
    source = "def f():\n    y = 0\n\n    return y\n"
    uses = idea("USES_X", "    y = 0\n", "    y = x\n", source)
    declares = idea("GLOBAL_X", "    return y\n", "    global x\n    return y\n", source)
    wave = ideas_mod.compose({"train.py": source}, [uses, declares], 4)  # each compiles alone, not together
    [cell] = wave.conflicts
    assert cell.on == ("USES_X", "GLOBAL_X") and cell.clash == ("USES_X", "GLOBAL_X")
    assert cell.error.startswith("USES_X + GLOBAL_X: train.py does not compile (name 'x' is used prior to global")
    with pytest.raises(ideas_mod.IdeaError, match="idea BROKEN: train.py does not compile"):
        ideas_mod.compose({"train.py": SOURCE}, [A, BROKEN], 4)
    with pytest.raises(ideas_mod.IdeaError, match="idea names repeat: LR_UP"):
        ideas_mod.compose({"train.py": SOURCE}, [A, A], 4)
    with pytest.raises(ideas_mod.IdeaError, match="idea name 'no spaces'"):
        ideas_mod.compose({"train.py": SOURCE}, [A, ideas_mod.Idea("no spaces", B.patch)], 4)
    left = idea("LEFT", "    return act(x)\n", "    return act(x) + 1\n")
    right = idea("RIGHT", "    return act(x)\n", "    return act(x) * 2\n")  # same line: no cell has both
    clash = ideas_mod.compose({"train.py": SOURCE}, [left, right], 4)
    assert [c.on for c in clash.conflicts] == [("LEFT", "RIGHT")]


def test_wave_sizes_fill_the_fleet_counting_the_free_centre():
    assert ideas_mod.runs_for(3, 2) == 8 and ideas_mod.runs_for(3, 16) == 8 and ideas_mod.runs_for(2, 1) == 4
    assert ideas_mod.runs_for(4, 2) == 8 and ideas_mod.runs_for(4, 12) == 16 and ideas_mod.runs_for(6, 2) == 8


def test_signatures_ignore_presentation_not_content():
    sig = ideas_mod.signature(A.patch)
    respaced = A.patch.replace("+LR = 1e-2", "+LR   =   0.01    # a bigger step")
    assert ideas_mod.signature(respaced) == sig
    moved = unified_diff("train.py", "# header\n\n" + SOURCE, "# header\n\n" + SOURCE.replace("LR = 1e-3", "LR = 1e-2"))
    assert ideas_mod.signature(moved) == sig  # other context lines, other line numbers
    assert ideas_mod.signature(A.patch.replace("1e-2", "2e-2")) != sig
    assert ideas_mod.signature(B.patch + A.patch) == ideas_mod.signature(A.patch + B.patch)
    assert ideas_mod.signature("") == ""
