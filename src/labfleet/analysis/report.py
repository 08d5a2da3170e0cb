"""`labfleet report`: the dashboard's page for one session as one static HTML file, and PNGs of its charts.

Everything comes from the ledger and the other analysis modules, so a report can
be built while a session runs, after it stopped, or from a copied ledger file.
This module reads: the session's snapshot (``ReportData``), the headline numbers,
the findings as sentences, and what each chart shows as plain numbers. Drawing is
the dashboard's (``labfleet/dashboard/static/app.js`` with the vendored Apache
ECharts): the report is the same page with the data and the library inlined, so it
can be mailed or attached to an issue as one file and makes no external request.
The PNGs (progress, timeline, hardware, effects when there are waves, cost) are
screenshots of that page's panels taken by headless Chromium
(``labfleet.dashboard.browser``), so the files show exactly what the page shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labfleet.analysis.cost import cost_over_time, fleet_usd
from labfleet.analysis.hardware import HardwareReport, hardware_report
from labfleet.analysis.noise import NoiseFloor, noise_floors, samples_from_runs
from labfleet.analysis.phases import Point, Progress, points_from_snapshot, progress
from labfleet.ledger import Ledger, Snapshot
from labfleet.records import Decision, Experiment, Result, Run, RunStatus
from labfleet.views import llm_json

LATEST_WAVES = 3  # waves shown on the effects chart


# --------------------------------------------------------------------------- what the report reads


@dataclass
class ReportData:
    """A snapshot of one session, read once, that every section draws from."""

    session: Mapping[str, Any]
    metric: str
    direction: str
    start: float
    end: float
    experiments: dict[int, Experiment]
    runs: list[Run]
    workers: dict[str, tuple[str, float]]  # worker id -> (hardware class, price per hour)
    points: list[Point]
    progress: Progress
    noise: dict[str, NoiseFloor]
    hardware: HardwareReport
    decided_at: dict[int, float] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # what it was computed from: costs, model calls, events

    @property
    def sid(self) -> int:
        return int(self.session["id"])

    @property
    def span(self) -> float:
        return max(self.end - self.start, 1e-9)

    @property
    def sign(self) -> float:
        """+1 when lower is better: ``sign * (a - b) > 0`` means b beats a."""
        return 1.0 if self.direction == "minimize" else -1.0

    def better(self, a: float, b: float) -> bool:
        return self.sign * (b - a) > 0

    @property
    def baseline(self) -> Experiment | None:
        return next((e for e in self.experiments.values() if e.parent_id is None), None)

    def keeps(self) -> list[Experiment]:
        """The baseline (when decided) and every keep, in decision order: the lineage."""
        order = [self.experiments[p.experiment] for p in self.points if p.kept and p.metric is not None]
        return [e for e in order if e.metric is not None]

    @property
    def best(self) -> Experiment | None:
        keeps = self.keeps()
        return keeps[-1] if keeps else None


def load(ledger: Ledger, session_id: int | None, metric: str, direction: str,
         groups: Mapping[str, str]) -> ReportData:
    """The one read: a ``Snapshot`` of the session (the latest when ``session_id`` is None)."""
    return from_snapshot(ledger.snapshot(session_id), metric, direction, groups)


def from_snapshot(snapshot: Snapshot, metric: str, direction: str, groups: Mapping[str, str]) -> ReportData:
    """The report's data, computed from one frozen ``Snapshot`` of the session."""
    session = snapshot.session
    runs = list(snapshot.runs)
    experiments = {e.id: e for e in snapshot.experiments}
    workers = {w.id: (w.hardware, float(w.price_per_hour or 0.0)) for w in snapshot.workers}
    decided_at = dict(snapshot.decided_at)
    points = points_from_snapshot(snapshot, groups)
    prices = {hw: price for hw, price in workers.values()}
    return ReportData(
        session=dict(session), metric=metric, direction=direction, start=float(session.created_at),
        end=_session_end(snapshot, runs, decided_at.values()), experiments=experiments, runs=runs,
        workers=workers, points=points, progress=progress(points, direction, metric),
        noise=noise_floors(samples_from_runs(runs)), hardware=hardware_report(runs, prices, metric),
        decided_at=decided_at, snapshot=snapshot,
    )


def _session_end(snapshot: Snapshot, runs: Sequence[Run], decided: Iterable[float]) -> float:
    """Now while runs are running; else the last thing that happened (not when the report was built)."""
    if any(r.status == RunStatus.RUNNING for r in runs):
        return snapshot.now
    times = [float(snapshot.session.created_at), *decided]
    times += [t for r in runs for t in (r.started_at, r.ended_at) if t is not None]
    return max(times)


def busy_seconds(data: ReportData) -> float:
    """Time workers spent running, within the session's span."""
    total = 0.0
    for run in data.runs:
        if run.started_at is None:
            continue
        end = data.end if run.ended_at is None else min(run.ended_at, data.end)
        total += max(0.0, end - max(run.started_at, data.start))
    return total


def worker_rows(data: ReportData) -> list[tuple[str, str]]:
    """(worker id, hardware class) for every worker of the session, naturally sorted."""
    rows = {w: hw for w, (hw, _) in data.workers.items()}
    for run in data.runs:
        if run.worker and run.worker not in rows:
            rows[run.worker] = run.hardware or "?"
    return sorted(rows.items(), key=lambda item: _natural(item[0]))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def utilization(data: ReportData) -> float:
    workers = len(worker_rows(data))
    return busy_seconds(data) / (workers * data.span) if workers and data.end > data.start else 0.0


def fmt_metric(value: float | None) -> str:
    """How every metric in the report is written (the tests use it too)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def fmt_duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# --------------------------------------------------------------------------- headline numbers


@dataclass(frozen=True)
class Headline:
    best: float | None
    baseline: float | None
    gain: float | None  # > 0 is better
    gain_se: float | None
    done: int  # decided experiments other than the baseline that produced a metric
    failed: int
    pending: int
    runs: int  # final runs
    hours: float
    per_hour: float
    utilization: float
    usd: float
    priced: bool
    llm: dict[str, Any] = field(default_factory=dict)  # the LLM researcher's calls, tokens, dollars
    unboxed: str = ""  # the warning of the session's first run that was not boxed (sandbox), if any
    surrogate: str | None = None  # a simulated session: the model of training it ran against


def surrogate_source(ledger: Ledger, sid: int) -> str | None:
    """Where a simulated session's surrogate came from (its ``surrogate`` event); None: a real session."""
    said = ledger.events_of(sid, "surrogate")
    return said[-1].get("source") if said else None


def _snapshot(data: ReportData) -> Snapshot:
    assert data.snapshot is not None, "ReportData from from_snapshot() carries its snapshot"
    return data.snapshot


def headline(data: ReportData) -> Headline:
    snap = _snapshot(data)
    surrogate = snap.events_of("surrogate")
    base, best = data.baseline, data.best
    decisions = [e.decision for e in data.experiments.values() if e.parent_id is not None]
    done = sum(d in (Decision.KEPT, Decision.DISCARDED) for d in decisions)
    failed = sum(d == Decision.FAILED for d in decisions)
    hours = data.span / 3600 if data.end > data.start else 0.0
    gain = None
    if best is not None and base is not None and base.metric is not None and best.metric is not None:
        gain = data.sign * (base.metric - best.metric)
    return Headline(
        best=best.metric if best else None, baseline=base.metric if base else None, gain=gain,
        gain_se=_gain_se(data, base, best), done=done, failed=failed,
        pending=sum(d == Decision.PENDING for d in decisions),
        runs=sum(1 for r in data.runs if r.status.final), hours=hours,
        per_hour=(done + failed) / hours if hours > 0 else 0.0, utilization=utilization(data),
        usd=fleet_usd(snap.costs), priced=any(p > 0 for _, p in data.workers.values()),
        llm=llm_json(snap.llm), surrogate=surrogate[-1].get("source") if surrogate else None,
        unboxed=next((e.get("warning", "") for e in snap.events_of("runs_unboxed")), ""),
    )


def _gain_se(data: ReportData, base: Experiment | None, best: Experiment | None) -> float | None:
    """The standard error of best minus baseline, on the class the best ran on, when its noise is known."""
    if base is None or best is None or best.id == base.id:
        return None
    done = [r for r in data.runs if r.status == RunStatus.DONE and r.metric is not None and r.hardware]
    best_runs = [r.hardware for r in done if r.experiment_id == best.id]
    if not best_runs:
        return None
    hw = max(set(best_runs), key=best_runs.count)
    floor = data.noise.get(hw or "")
    n_base = sum(1 for r in done if r.experiment_id == base.id and r.hardware == hw)
    if floor is None or not n_base:
        return None
    return floor.sd * math.sqrt(1 / best_runs.count(hw) + 1 / n_base)


# --------------------------------------------------------------------------- effects and the running best


@dataclass(frozen=True)
class EffectBar:
    """One bar of the effects plot: a wave's main effect or interaction with its interval."""

    wave: str
    name: str
    estimate: float
    low: float | None
    high: float | None
    interaction: bool

    @property
    def significant(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def running_best_steps(data: ReportData, xs: Mapping[int, int]) -> tuple[list[float], list[float]]:
    """The running best as step corners (x in decision order), ending at the plot's right edge."""
    best: float | None = None
    steps_x: list[float] = []
    steps_y: list[float] = []
    for p in data.points:
        if p.kept and p.metric is not None and math.isfinite(p.metric):
            best = p.metric  # a keep is the new champion (the lineage), whatever its class
        if best is not None:
            steps_x.append(xs[p.experiment])
            steps_y.append(best)
    if steps_x:
        steps_x.append(len(data.points) - 0.4)
        steps_y.append(steps_y[-1])
    return steps_x, steps_y


def run_outcome(run: Run, exp: Experiment | None) -> str:
    """The colour key of one run's bar."""
    if run.status == RunStatus.RUNNING:
        return "running"
    if run.status == RunStatus.DONE:
        if exp is None:
            return "discarded"
        if exp.parent_id is None:
            return "baseline"
        return {"kept": "kept", "pending": "pending"}.get(str(exp.decision), "discarded")
    if run.status in (RunStatus.TIMEOUT, RunStatus.LOST, RunStatus.CANCELLED):
        return str(run.status)
    return "crashed"


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def history(data: ReportData) -> list[Result]:
    """One Result per decided experiment: its latest done run, else its latest final run."""
    latest: dict[int, Run] = {}
    for run in data.runs:  # ordered by id: later runs win, a done run over a failed one
        held = latest.get(run.experiment_id)
        if run.status.final and (run.status == RunStatus.DONE or held is None or held.status != RunStatus.DONE):
            latest[run.experiment_id] = run
    order = sorted((e for e in data.experiments.values() if e.decision != Decision.PENDING and e.id in latest),
                   key=lambda e: (data.decided_at.get(e.id) or 0.0, e.id))
    return [Result(e, latest[e.id]) for e in order]


def session_effects(data: ReportData) -> tuple[list[EffectBar], list[str], str]:
    """The latest waves' effects and their sentences, or a note saying why there are none."""
    if not any("wave" in e.tags for e in data.experiments.values()):
        return [], [], "no waves in this session: single changes are in the progress plot"
    try:
        from labfleet.analysis import effects as effects_module

        compute: Callable[..., Any] = effects_module.session_effects
    except (ImportError, AttributeError):
        return [], [], "the effects analysis (labfleet.analysis.effects) is not available in this version"
    reference = data.hardware.reference
    sd = data.noise[reference].sd if reference in data.noise else None
    waves = list(compute(history(data), noise_sd=sd).items())[-LATEST_WAVES:]
    bars: list[EffectBar] = []
    findings: list[str] = []
    for tag, fx in waves:
        for effect in (*fx.main, *fx.interactions):
            bars.append(EffectBar(str(tag), effect.name, effect.estimate, effect.low, effect.high,
                                  effect in fx.interactions))
        findings += [f"wave {tag}: {line}" for line in fx.describe(data.metric, data.direction)]
    return bars, findings, "" if bars else "no wave has enough finished results to estimate effects yet"


# --------------------------------------------------------------------------- what the charts show (numbers only)


def same_code(data: ReportData) -> list[dict[str, Any]]:
    """The baseline's and the champion's metric per class: mean with one sd (the class's noise sd for few runs)."""
    done = [r for r in data.runs if r.status == RunStatus.DONE and r.metric is not None and r.hardware]
    subjects = [("baseline", data.baseline)]
    if data.best is not None and data.baseline is not None and data.best.id != data.baseline.id:
        subjects.append((f"best (e{data.best.id})", data.best))
    out = []
    for label, exp in subjects:
        if exp is None:
            continue
        for hw in sorted({r.hardware for r in done if r.experiment_id == exp.id and r.hardware}):
            values = [float(r.metric or 0.0) for r in done if r.experiment_id == exp.id and r.hardware == hw]
            # few repeats: the class's pooled noise floor says more than their own spread
            sd = _sd(values) if len(values) > 2 or hw not in data.noise else data.noise[hw].sd
            out.append({"subject": label, "experiment": exp.id, "hardware": hw, "runs": len(values),
                        "mean": sum(values) / len(values), "sd": sd or 0.0})
    return out


def spend(data: ReportData, priced: bool) -> list[tuple[float, float]]:
    """(time, cumulative spend) at each finished run's end: dollars, or busy worker-seconds without prices."""
    if priced:
        return cost_over_time(_snapshot(data))
    total, points = 0.0, []
    for run in sorted((r for r in data.runs if r.started_at is not None and r.ended_at is not None),
                      key=lambda r: r.ended_at or 0.0):
        total += max(0.0, (run.ended_at or 0.0) - (run.started_at or 0.0))
        points.append((run.ended_at or 0.0, total))
    return points


def best_per_spend(data: ReportData, spent: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(spend when it was decided, metric) for the baseline and every keep: what each improvement cost."""
    out = []
    for exp in data.keeps():
        at = data.decided_at.get(exp.id) or data.start
        out.append((max((c for t, c in spent if t <= at), default=0.0), float(exp.metric or 0.0)))
    return out


def keeps_rows(data: ReportData) -> list[dict[str, Any]]:
    """The lineage's keeps after the baseline: what each changed and gained over the previous best and the baseline."""
    lineage = data.keeps()
    base = data.baseline.metric if data.baseline else None
    groups = {p.experiment: p.group for p in data.points}
    rows = []
    for previous, exp in zip(lineage, lineage[1:], strict=False):
        rows.append({
            "id": exp.id, "description": exp.description, "group": groups.get(exp.id, ""), "metric": exp.metric,
            "step": data.sign * ((previous.metric or 0.0) - (exp.metric or 0.0)),
            "total": data.sign * (base - (exp.metric or 0.0)) if base is not None else None,
        })
    return rows


# --------------------------------------------------------------------------- the page


PICTURES = ("progress", "timeline", "hardware", "effects", "cost")  # the page's chart panels, one PNG each


def build_report(
    ledger: Ledger, session_id: int | None, out: Path, *, metric: str, direction: str,
    groups: Mapping[str, str] | None = None, title: str = "", holdout: Sequence[str] = (), png: bool = True,
) -> Path:
    """Write ``index.html`` (and, with ``png`` and a Chromium on this machine, the charts' PNGs) into ``out``.

    ``holdout``: lines comparing validation with the holdout metric for the lineage
    (``integrity.holdout_lines``); the report is for people, never for researchers.
    Returns the page's path; ``out`` lists the PNGs that were written.
    """
    from labfleet.dashboard import document

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    views = document.Views(metric=metric, direction=direction, groups=groups or {})
    doc = views.document(ledger, session_id, title=title, holdout=list(holdout))
    page = out / "index.html"
    page.write_text(document.static_page(doc), encoding="utf-8")
    for name in PICTURES:  # a stale one from an earlier report would mislead
        (out / f"{name}.png").unlink(missing_ok=True)
    if png:
        from labfleet.dashboard import browser

        if browser.find_chromium() is not None:
            browser.screenshot_panels(page, out, PICTURES)
    return page


def noise_findings(data: ReportData) -> list[str]:
    if not data.noise:
        return ["noise floor: not measured yet (no experiment has repeated seeds on one class)"]
    return [f"noise floor on {hw}: sd {fmt_metric(f.sd)} of one run's {data.metric} "
            f"({f.df} degrees of freedom from {f.groups} repeated experiment{'s' if f.groups != 1 else ''})"
            for hw, f in sorted(data.noise.items())]


def cost_findings(data: ReportData, head: Headline) -> list[str]:
    if not head.priced:
        return ["no prices set for this fleet's workers: the cost is $0 (give workers a price to track spend)"]
    lines = [f"the fleet cost ${head.usd:,.2f} in {fmt_duration(head.hours * 3600)}"]
    if head.gain is not None and head.gain > 0 and head.usd > 0:
        lines.append(f"{data.metric} improved by {fmt_metric(head.gain)}: {head.gain / head.usd:.2e} per dollar")
    return lines
