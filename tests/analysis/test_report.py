"""`labfleet report`: the dashboard's page as one self-contained HTML file, and PNGs of its charts.

The page is drawn by its own script (the vendored chart library), so what it says is
read from the page as headless Chromium renders it: the DOM without its scripts, the
charts' own state, and any script error.
"""

from __future__ import annotations

import math
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from labfleet.analysis.report import build_report, fmt_metric
from labfleet.dashboard import browser
from labfleet.executors.base import Worker
from labfleet.ledger import Ledger
from labfleet.records import Decision, Proposal, RunStatus
from tests.conftest import Scripted, lab, run_session

T0 = 1_750_000_000.0
GROUPS = {"LEARNING_RATE": "optimizer", "WEIGHT_DECAY": "optimizer", "WARMUP": "schedule",
          "DEPTH": "architecture", "WIDTH": "architecture"}
BASE_KNOBS = {"LEARNING_RATE": 1e-3, "WEIGHT_DECAY": 0.0, "WARMUP": 0, "DEPTH": 4, "WIDTH": 256}
FLEET = [Worker("h100-0", "H100", price_per_hour=2.5), Worker("h100-1", "H100", price_per_hour=2.5),
         Worker("h100-2", "H100", price_per_hour=2.5), Worker("h200-0", "H200", price_per_hour=3.8)]


# --------------------------------------------------------------------------- helpers


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk (after checking the PNG signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_pictures(out: Path, names: list[str]) -> None:
    for name in names:
        width, height = png_size(out / name)
        assert width > 300 and height > 300, (name, width, height)


CHARTS = {"progress": "progress", "timeline": "timeline", "hardware": "hardware-chart", "effects": "effects-chart",
          "cost": "cost-chart"}


def assert_self_contained(page: str, charts: int) -> None:
    """One file: the data, the chart library and the script inlined; no external request."""
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no external requests
    assert "<script src" not in page and "<link" not in page
    assert page.count('<script id="labfleet-data" type="application/json">') == 1
    assert "Apache" in page and "echarts" in page  # the library itself, inlined
    assert page.count('class="chart"') >= charts


def rendered(page: Path) -> str:
    """The page as Chromium draws it (its DOM less the scripts); fails on any script error or undrawn chart."""
    if browser.find_chromium() is None:
        pytest.skip("no headless Chromium (install Debian's `chromium` package)")
    with browser.browser() as tab:
        browser.open_page(tab, page)
        assert tab.js("window.__errors") == []
        drawn = tab.js("Object.fromEntries(Object.entries(window.labfleet.charts).map(([k, c]) => [k, "
                       "c.getOption().series.reduce((n, s) => n + (s.data ? s.data.length : 0), 0)]))")
        canvases = tab.js("[...document.querySelectorAll('.chart')].filter(d => d.querySelector('canvas')).map(d => d.id)")
        assert set(canvases) == set(drawn) and all(n > 0 for n in drawn.values()), drawn
        return tab.js("(() => { const d = document.documentElement.cloneNode(true);"
                      " d.querySelectorAll('script').forEach(s => s.remove()); return d.outerHTML; })()")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Fleet:
    """Places synthetic runs on the earliest free worker, writing them through the Ledger API."""

    def __init__(self, ledger: Ledger, clock: Clock, sid: int, workers: list[Worker], rng: random.Random,
                 score: Callable[[float], float] = lambda v: v) -> None:
        self.ledger, self.clock, self.sid, self.rng, self.score = ledger, clock, sid, rng, score
        self.workers = workers
        self.free = {w.id: T0 + 20 for w in workers}

    def run(self, run_id: int, status: RunStatus, metric: float | None, *, hardware: str | None = None,
            seconds: float = 930.0) -> float:
        """Start and finish one queued run; returns when it ended. A lost run is retried on the spot."""
        allowed = [w for w in self.workers if hardware in (None, w.hardware)]
        worker = min(allowed, key=lambda w: self.free[w.id])
        start = self.free[worker.id] + self.rng.uniform(5, 90)
        self.clock.t = start
        self.ledger.mark_running(run_id, worker=worker.id, hardware=worker.hardware, run_dir="d", log_path="l",
                                 budget_seconds=900)
        end = start + (seconds if status != RunStatus.CRASHED else self.rng.uniform(20, 80))
        steps = 2700 if worker.hardware == "H100" else 3480
        offset = -0.012 if worker.hardware == "H200" and metric is not None else 0.0
        figures = {"num_steps": steps, "training_seconds": 900.0} if status == RunStatus.DONE else {}
        retry = self.ledger.finish_run(
            run_id, status, metric=None if metric is None else self.score(metric + offset), figures=figures,
            ended_at=end, retry=status == RunStatus.LOST, reason=str(status),
        )
        self.free[worker.id] = end
        if retry is not None:
            return self.run(retry, RunStatus.DONE, metric, hardware=hardware, seconds=seconds)
        return end


def true_metric(knobs: dict[str, float]) -> float:
    return (0.96 + 0.05 * (math.log10(knobs["LEARNING_RATE"]) + 2.4) ** 2 - (0.012 if knobs["WARMUP"] else 0.0)
            - 0.004 * min(knobs["DEPTH"] - 4, 6) + (0.006 if knobs["WEIGHT_DECAY"] > 0.05 else 0))


def synthetic_ledger(path: Path, *, workers: list[Worker] = FLEET, running: bool = True,
                     direction: str = "minimize") -> tuple[Ledger, int]:
    """A five-hour session on two hardware classes: waves, keeps, validations, crashes, a lost run, a tail.

    Maximize records 2 - loss (an accuracy-like score) with the same decisions.
    """

    def score(value: float) -> float:
        return value if direction == "minimize" else 2.0 - value

    rng = random.Random(7)
    clock = Clock()
    ledger = Ledger(path, clock=clock)
    sid = ledger.create_session("tinygpt", "waves", {"workers": len(workers), "budget_seconds": 900},
                                "labfleet/s", "abc1234", {"prepare.py": "0" * 64})
    ledger.set_workers(sid, workers)
    fleet = Fleet(ledger, clock, sid, workers, rng, score)
    noise = 0.003

    base, first = ledger.add_experiment(sid, parent_id=None, commit="abc1234", patch="", description="baseline",
                                        hypothesis="", knobs=BASE_KNOBS, tags={"role": "baseline"}, seed=0,
                                        budget_seconds=900)
    ends = [fleet.run(first or 0, RunStatus.DONE, true_metric(BASE_KNOBS) + rng.gauss(0, noise), hardware="H100")]
    for k, hw in enumerate(["H100", "H100", "H200", "H200"]):
        rid = ledger.queue_run(sid, base, seed=k + 1, role="noise" if hw == "H100" else "calibrate", place_on=hw)
        ends.append(fleet.run(rid, RunStatus.DONE, true_metric(BASE_KNOBS) + rng.gauss(0, noise), hardware=hw))
    clock.t = max(ends)
    ledger.decide(base, Decision.BASELINE, score(true_metric(BASE_KNOBS)))
    champion, champion_id = dict(BASE_KNOBS), base
    best = true_metric(BASE_KNOBS)
    decided = clock.t

    def experiment(desc: str, knobs: dict[str, float], tags: dict[str, str] | None = None,
                   outcome: RunStatus = RunStatus.DONE) -> None:
        nonlocal champion, champion_id, best, decided
        exp, rid = ledger.add_experiment(sid, parent_id=champion_id, commit="c" * 40, patch="", description=desc,
                                         hypothesis="", knobs=knobs, tags=tags or {}, seed=0, budget_seconds=900)
        value = true_metric(knobs) + rng.gauss(0, noise)
        end = fleet.run(rid or 0, outcome, value if outcome in (RunStatus.DONE, RunStatus.LOST) else None)
        if outcome not in (RunStatus.DONE, RunStatus.LOST):
            clock.t = decided = max(end, decided)
            ledger.decide(exp, Decision.FAILED, None)
            return
        if true_metric(knobs) < true_metric(champion) - 0.003:  # validated on two more seeds before the keep
            for k in range(2):
                rid = ledger.queue_run(sid, exp, seed=100 + k, role="validate")
                end = max(end, fleet.run(rid, RunStatus.DONE, true_metric(knobs) + rng.gauss(0, noise)))
            clock.t = decided = max(end, decided)
            ledger.decide(exp, Decision.KEPT, score(value))
            champion, champion_id, best = dict(knobs), exp, value
        else:
            clock.t = decided = max(end, decided)
            ledger.decide(exp, Decision.DISCARDED, score(value))

    for lr in (2e-3, 3e-3, 5e-3, 8e-3):
        experiment(f"learning rate {lr:g} (from {champion['LEARNING_RATE']:g})", {**champion, "LEARNING_RATE": lr})
    experiment("fused AdamW with a bigger epsilon and gradient clipping at 0.5 <script>", dict(champion),
               outcome=RunStatus.CRASHED)
    experiment("weight decay 0.1", {**champion, "WEIGHT_DECAY": 0.1}, outcome=RunStatus.LOST)
    for wave, factors in (("1", ("WARMUP", "DEPTH", "WEIGHT_DECAY")), ("2", ("LEARNING_RATE", "WARMUP", "WIDTH"))):
        lows = {"WARMUP": 0, "DEPTH": 4, "WEIGHT_DECAY": 0.0, "LEARNING_RATE": champion["LEARNING_RATE"], "WIDTH": 256}
        highs = {"WARMUP": 200, "DEPTH": 6, "WEIGHT_DECAY": 0.1, "LEARNING_RATE": champion["LEARNING_RATE"] * 1.5,
                 "WIDTH": 384}
        start = dict(champion)
        for cell in range(8):
            knobs = dict(start)
            for j, f in enumerate(factors):
                knobs[f] = highs[f] if cell >> j & 1 else lows[f]
            label = ", ".join(f"{f.lower()}={knobs[f]:g}" for f in factors)
            experiment(f"wave {wave}: {label}", knobs, {"wave": wave})
    for depth in (8, 10, 12):
        experiment(f"depth {depth} (deeper, same width)", {**champion, "DEPTH": depth})
    experiment("rotary embeddings instead of learned positions", dict(champion), outcome=RunStatus.TIMEOUT)
    experiment("swap GELU for squared ReLU", dict(champion), outcome=RunStatus.NAN)
    for i in range(24):  # the tail: nothing helps any more
        knobs = {**champion, "LEARNING_RATE": champion["LEARNING_RATE"] * rng.choice([0.7, 0.8, 1.25, 1.4])}
        experiment(f"lr nudge {i}", knobs)
    experiment("width 512", {**champion, "WIDTH": 512}, outcome=RunStatus.CRASHED)
    if running:  # one run still going when the report is built
        exp, rid = ledger.add_experiment(sid, parent_id=champion_id, commit="d" * 40, patch="",
                                         description="still running", hypothesis="", knobs=champion, tags={},
                                         seed=0, budget_seconds=900)
        worker = min(workers, key=lambda w: fleet.free[w.id])
        clock.t = fleet.free[worker.id] + 30
        ledger.mark_running(rid or 0, worker=worker.id, hardware=worker.hardware, run_dir="d", log_path="l",
                            budget_seconds=900)
        clock.t = max(decided, clock.t) + 200
    ledger.set_session_status(sid, "running" if running else "stopped")
    return ledger, sid


# --------------------------------------------------------------------------- tests


def test_report_of_a_real_session(tmp_path):
    folder = lab(tmp_path)
    researcher = Scripted([
        Proposal("lr up", knobs={"LEARNING_RATE": 3e-3}),
        Proposal("lr way down", knobs={"LEARNING_RATE": 1e-4}),
        Proposal("lr best", knobs={"LEARNING_RATE": 1e-2}),
        Proposal("fewer layers", knobs={"N_LAYER": 1}),
    ])
    ledger, loop = run_session(folder, researcher, workers=2, max_experiments=10)
    out = tmp_path / "report"
    page = build_report(ledger, None, out, metric="val_bpb", direction="minimize", title="fixture <lab>")
    assert page == out / "index.html"
    assert_pictures(out, ["progress.png", "timeline.png", "hardware.png", "cost.png"])
    assert not (out / "effects.png").exists()  # no waves
    assert_self_contained(page.read_text(), 4)
    text = rendered(page)
    best = min(e.metric for e in ledger.experiments(loop.session_id) if e.decision == Decision.KEPT)
    assert fmt_metric(best) in text and fmt_metric(best) == "1.0200"
    assert "4 done / 0 failed" in text
    assert "fixture &lt;lab&gt;" in text and "fixture <lab>" not in text
    assert "no prices set" in text and "$0" in text
    assert "lr best" in text  # the kept experiments' table


def test_report_of_a_synthetic_fleet_session(tmp_path):
    ledger, sid = synthetic_ledger(tmp_path / "ledger.sqlite")
    out = tmp_path / "report"
    page = build_report(ledger, sid, out, metric="val_bpb", direction="minimize", groups=GROUPS)
    assert_pictures(out, ["progress.png", "timeline.png", "hardware.png", "effects.png", "cost.png"])
    assert_self_contained(page.read_text(), 5)
    text = rendered(page)
    exps = ledger.experiments(sid)
    kept = [e for e in exps if e.decision == Decision.KEPT]
    decided = [e for e in exps if e.parent_id is not None and e.decision in (Decision.KEPT, Decision.DISCARDED)]
    failed = [e for e in exps if e.decision == Decision.FAILED]
    assert kept and len(failed) == 4
    assert fmt_metric(kept[-1].metric) in text
    assert f"{len(decided)} done / {len(failed)} failed" in text
    assert "H200" in text and "noise floor on H100" in text
    assert "wave 2:" in text  # effects sentences
    assert "$" in text and "no prices set" not in text
    assert "diminishing returns" in text
    assert " ± " in text  # the gain's uncertainty: the noise is known


@pytest.mark.parametrize("case", ["queued baseline", "baseline only", "crashes only", "one free worker"])
def test_edge_case_ledgers_render(tmp_path, case):
    clock = Clock()
    ledger = Ledger(tmp_path / "ledger.sqlite", clock=clock)
    sid = ledger.create_session("tiny", "greedy", {}, "labfleet/s", "abc", {})
    workers = [Worker("local-0", "cpu")] if case == "one free worker" else FLEET[:2]
    ledger.set_workers(sid, workers)
    fleet = Fleet(ledger, clock, sid, workers, random.Random(1))
    base, rid = ledger.add_experiment(sid, parent_id=None, commit="abc", patch="", description="baseline",
                                      hypothesis="", knobs={"LR": 1}, tags={"role": "baseline"}, seed=0,
                                      budget_seconds=60)
    if case == "baseline only":
        fleet.run(rid or 0, RunStatus.DONE, 2.0)
        ledger.decide(base, Decision.BASELINE, 2.0)
    elif case == "crashes only":
        fleet.run(rid or 0, RunStatus.CRASHED, None)
        ledger.decide(base, Decision.FAILED, None)
        for i in range(3):
            exp, r = ledger.add_experiment(sid, parent_id=base, commit="x", patch="", description=f"crash {i}",
                                           hypothesis="", knobs={"LR": i}, tags={"wave": "1"}, seed=0,
                                           budget_seconds=60)
            fleet.run(r or 0, RunStatus.CRASHED, None)
            ledger.decide(exp, Decision.FAILED, None)
    elif case == "one free worker":
        fleet.run(rid or 0, RunStatus.DONE, 2.0)
        ledger.decide(base, Decision.BASELINE, 2.0)
        for i, value in enumerate([2.1, 1.9, float("nan"), 1.8]):
            exp, r = ledger.add_experiment(sid, parent_id=base, commit="x", patch="", description=f"try {i}",
                                           hypothesis="", knobs={"LR": i + 2}, tags={}, seed=0, budget_seconds=60)
            ok = math.isfinite(value)
            fleet.run(r or 0, RunStatus.DONE if ok else RunStatus.NAN, value if ok else None, seconds=60)
            ledger.decide(exp, Decision.FAILED if not ok else Decision.KEPT if value < 2 else Decision.DISCARDED,
                          value if ok else None)
    out = tmp_path / "report"
    page = build_report(ledger, sid, out, metric="loss", direction="minimize")
    assert_pictures(out, ["progress.png", "timeline.png", "hardware.png", "cost.png"])
    assert_self_contained(page.read_text(), 4)
    text = rendered(page)
    if case == "one free worker":
        assert "no prices set" in text and fmt_metric(1.8) in text
    if case == "crashes only":
        assert "0 done / 3 failed" in text


def test_maximize_and_a_stopped_session_render(tmp_path):
    ledger, sid = synthetic_ledger(tmp_path / "ledger.sqlite", running=False, direction="maximize")
    out = tmp_path / "report"
    page = build_report(ledger, sid, out, metric="accuracy", direction="maximize", groups=GROUPS)
    assert_pictures(out, ["progress.png", "timeline.png", "hardware.png", "effects.png", "cost.png"])
    text = rendered(page)
    best = max(e.metric for e in ledger.experiments(sid) if e.decision == Decision.KEPT)
    assert f'<b id="card-best">{fmt_metric(best)}</b>' in text and ">best accuracy · e" in text
    assert '<span id="state" class="pill stopped">stopped</span>' in text


def test_report_without_a_session_is_a_clear_error(tmp_path):
    from labfleet.errors import LabfleetError

    with pytest.raises(LabfleetError, match="no session"):
        build_report(Ledger(tmp_path / "l.sqlite"), None, tmp_path / "r", metric="m", direction="minimize")
